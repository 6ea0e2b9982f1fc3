"""``sfseg bench --executor ray`` on a local Ray cluster (loopback only, started here and stopped after):
the same summaries as the local executor, and a worker killed mid-run costs a resume, not a restart."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sfseg.engine.experiments.bench import run_bench
from tests.conftest import SMALL_MODEL, sfseg_cli

ray = pytest.importorskip("ray", reason="the ray extra: pip install 'sfseg[ray]'")

pytestmark = pytest.mark.slow

METHODS, SEEDS = ["naive_st", "ld"], ["0", "1"]
ADAPT = ["rounds=1", "epochs_per_round=1", "batch_size=4", "save_every=2"]
SOURCE = ["epochs=1", SMALL_MODEL]
RAY = Path(sys.executable).parent / "ray"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; its address. Token authentication is off for this
    loopback-only cluster, explicitly: Ray turns it on when it finds a token in ~/.ray (left by any earlier
    local ray.init), and the test must not depend on what an earlier session left there."""
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # for the driver in this process and the sfseg children
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2",
             "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}",
             "--object-store-memory=100000000"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, env=env, timeout=180)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], capture_output=True, env=env, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved


def _bench(*extra: str, data, out) -> subprocess.CompletedProcess:
    return sfseg_cli(
        "bench", "toycity", "--data", str(data), "--out", str(out), "--methods", *METHODS, "--seeds", *SEEDS,
        "--set", *ADAPT, "--source-set", *SOURCE, *extra, timeout=900,
    )  # fmt: skip


def _miou(out: Path, method: str, seed: str) -> float:
    return json.loads((out / method / f"seed{seed}" / "summary.json").read_text())["final"]["miou"]


def test_ray_executor_equals_the_local_one_and_survives_a_killed_worker(cluster, tiny_toycity, tmp_path):
    local = _bench("--jobs", "2", data=tiny_toycity, out=tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    t0 = time.time()
    # The source models of the local bench are reused (the same recipe): only the adaptations run on Ray.
    on_ray = _bench("--executor", "ray", "--address", cluster, "--source-dir", str(tmp_path / "local"),
                    data=tiny_toycity, out=tmp_path / "ray")  # fmt: skip
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    print(f"ray bench: {time.time() - t0:.0f} s")
    for m in METHODS:
        for s in SEEDS:
            assert _miou(tmp_path / "ray", m, s) == pytest.approx(_miou(tmp_path / "local", m, s), abs=1e-9)
    assert (tmp_path / "ray" / "results.md").is_file()

    # One worker is SIGKILLed after its round's pseudo-labels: the bench retries it once, and the retry
    # resumes from the state file (no second labelling pass), with the uninterrupted run's result.
    once = tmp_path / "killed-once"
    ray.init(address=cluster, runtime_env={"env_vars": {"SFSEG_FAULT_KILL": "ld:labelled:0",
                                                        "SFSEG_FAULT_ONCE": str(once)}})  # fmt: skip
    try:
        run_bench(tiny_toycity, tmp_path / "killed", methods=["ld"], seeds=[0, 1], overrides=ADAPT,
                  source_overrides=SOURCE, source_dir=tmp_path / "local", progress=False,
                  executor="ray")  # fmt: skip
    finally:
        ray.shutdown()
    assert once.exists()  # a worker did die
    resumed = []
    for s in SEEDS:
        records = [
            json.loads(x)
            for x in (tmp_path / "killed/ld" / f"seed{s}" / "metrics.jsonl").read_text().splitlines()
        ]
        phases = [r["phase"] for r in records]
        if "resume" in phases:
            resumed.append(s)
            assert phases.count("pseudo_labels") == 1, phases  # labelled once: resumed, not restarted
        assert _miou(tmp_path / "killed", "ld", s) == pytest.approx(
            _miou(tmp_path / "local", "ld", s), abs=1e-9
        )
    assert len(resumed) == 1, resumed


def test_a_node_that_does_not_see_the_storage_is_one_error_before_any_task(cluster, tmp_path, monkeypatch):
    from sfseg.engine.experiments.ray_executor import RayExecutor
    from sfseg.errors import SfsegError

    ray.init(address=cluster)
    try:
        with pytest.raises(SfsegError, match="does not see .*shared by every node"):
            RayExecutor(shared=[tmp_path / "no-such-data", tmp_path / "out"])
    finally:
        ray.shutdown()


def test_ray_missing_or_unreachable_is_one_clear_error(tiny_toycity, tmp_path):
    res = _bench("--executor", "local", "--address", "127.0.0.1:1", data=tiny_toycity, out=tmp_path / "x")
    assert res.returncode == 2 and "--address names a Ray cluster" in res.stderr
