"""The job runner: dependencies, results, the critical path first, errors; the bench's reuse of runs."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfseg.engine.experiments.jobs import Job, _dependents, run_jobs


def add(a, b):
    return a + b


def fail():
    raise RuntimeError("job failed")


def test_jobs_run_after_their_dependencies_and_return_results():
    order = []
    jobs = [
        Job("c", lambda: order.append("c") or 3, after=["a", "b"]),
        Job("a", lambda: order.append("a") or 1),
        Job("b", lambda: order.append("b") or 2, after=["a"]),
    ]
    assert run_jobs(jobs, 1, log=lambda s: None) == {"a": 1, "b": 2, "c": 3}
    assert order == ["a", "b", "c"]


def test_parallel_jobs_in_processes():
    jobs = [Job("x", add, (1, 2)), Job("y", add, (3, 4)), Job("z", add, (5, 6), ["x", "y"])]
    assert run_jobs(jobs, 2, log=lambda s: None) == {"x": 3, "y": 7, "z": 11}


def test_the_critical_path_is_counted_and_errors_surface():
    jobs = [Job("ld", add, (0, 0)), Job("naive", add, (0, 0)), Job("ldbe", add, (0, 0), ["ld"])]
    assert _dependents(jobs) == {"ld": 1, "naive": 0, "ldbe": 0}
    with pytest.raises(RuntimeError, match="job failed"):
        run_jobs([Job("bad", fail)], 2, log=lambda s: None)
    with pytest.raises(ValueError, match="unknown jobs"):
        run_jobs([Job("a", add, (1, 1), ["nope"])], 1)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_workers_die_with_a_killed_bench():
    # A bench killed with SIGKILL must not leave workers training on (and holding run locks).
    code = (
        "import time\n"
        "from sfseg.engine.experiments.jobs import Job, run_jobs\n"
        "run_jobs([Job('a', time.sleep, (120,)), Job('b', time.sleep, (120,))], workers=2)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.time() + 60
        while len(workers := [c for c in _children(parent.pid) if _alive(c)]) < 3 and time.time() < deadline:
            time.sleep(0.2)  # two workers and the resource tracker
        assert len(workers) >= 2
        time.sleep(2)  # the workers' initialiser has run
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 20
    while any(_alive(w) for w in workers) and time.time() < deadline:
        time.sleep(0.2)
    survivors = [w for w in workers if _alive(w)]
    for w in survivors:
        os.kill(w, signal.SIGKILL)
    assert not survivors


def test_bench_resume_reuses_only_runs_of_the_same_recipe(tmp_path, monkeypatch):
    """``bench --resume``: a finished run of the same recipe is reused (also after its folder moved), an
    unfinished one resumed, and one of another recipe run again with a line naming the keys that differ."""
    import json

    import torch

    from sfseg.config import load_config, to_dict
    from sfseg.engine.experiments import bench
    from sfseg.engine.runtime.rundir import RunDir
    from sfseg.engine.training.recipe import AdaptConfig
    from sfseg.engine.training.resume import STATE_FORMAT

    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(AdaptConfig, repo / "configs/toycity/ld.yaml", [f"out={tmp_path / 'run'}"])
    calls, lines = [], []
    monkeypatch.setattr(
        bench, "run_adaptation", lambda c, progress, mode: calls.append(mode) or {"ran": mode}
    )

    def saved(phase, **changes):
        run = RunDir(cfg.out)
        run.path.mkdir(exist_ok=True)
        recipe = to_dict(cfg) | changes
        torch.save({"format": STATE_FORMAT, "phase": phase, "config": recipe}, run.state)
        run.summary.write_text(json.dumps({"reused": True}))
        return bench.adapt_or_reuse(cfg, resume=True, log=lines.append)

    assert saved("done") == {"reused": True}
    assert saved("done", out=str(tmp_path / "before-the-move")) == {"reused": True}
    # the same data and checkpoint spelled relative to the working directory: the same recipe, reused
    data, source = tmp_path / "world", tmp_path / "source.pt"
    data.mkdir()
    source.write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    cfg.data.root, cfg.checkpoint = str(data), str(source)
    assert saved("done", data=to_dict(cfg)["data"] | {"root": "world"}, checkpoint="source.pt") == {
        "reused": True
    }
    assert calls == [] and lines == []
    other = tmp_path / "other.pt"
    other.write_bytes(b"weights")
    assert saved("done", checkpoint=str(other)) == {"ran": "overwrite"}
    assert "differs in checkpoint" in lines.pop()
    calls.clear()
    assert saved("round") == {"ran": "resume"}
    assert saved("done", seed=cfg.seed + 1) == {"ran": "overwrite"}
    assert len(lines) == 1 and "differs in seed" in lines[0] and str(cfg.out) in lines[0]
    assert bench.adapt_or_reuse(cfg, resume=False, log=lines.append) == {"ran": "overwrite"}
    assert calls == ["resume", "overwrite", "overwrite"]
