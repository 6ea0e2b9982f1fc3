"""The run as an object: final.pt is the reported model, exact resume after SIGKILL, bad resume inputs."""

import json
import signal

import pytest
import torch

from sfseg.cli.main import main
from sfseg.models import load_checkpoint
from tests.conftest import adapt_args as tiny_adapt
from tests.conftest import sfseg_cli

pytestmark = pytest.mark.slow

VOLATILE = {"seconds", "train_seconds", "time", "peak_rss_gib", "peak_cuda_gib", "config", "checkpoint"}


def adapt_args(root, src, out, recipe="ld", *extra):
    return tiny_adapt(
        root,
        src,
        out,
        recipe,
        "rounds=2",
        "epochs_per_round=2",
        "batch_size=2",
        "eval_batch_size=4",
        "save_every=3",
        "amp=false",
        *extra,
    )


def stable_records(run_dir):
    """metrics.jsonl without timing fields and resume markers: what must match an uninterrupted run."""
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["phase"] == "resume":
            continue
        out.append({k: v for k, v in r.items() if k not in VOLATILE})
    return out


def assert_same_weights(a, b):
    sa, sb = load_checkpoint(a).state_dict, load_checkpoint(b).state_dict
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_final_checkpoint_is_the_reported_model(tiny_toycity, tiny_source, tmp_path, capsys):
    run = tmp_path / "ld"
    assert main(adapt_args(tiny_toycity, tiny_source, run)) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert_same_weights(run / "final.pt", run / "round_1.pt")
    # sfseg eval of final.pt reproduces the run's final score.
    js = tmp_path / "eval.json"
    assert (
        main(["eval", "--checkpoint", str(run / "final.pt"), "--data", str(tiny_toycity), "--json", str(js)])
        == 0
    )
    assert json.loads(js.read_text())["miou"] == pytest.approx(summary["final"]["miou"], abs=1e-6)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in records].count("final_shares") == 1  # the probe ran, after final.pt


@pytest.mark.parametrize(
    "recipe, fault, moved",
    [
        ("ld", "ld:step:5", False),  # mid-round, between two saved states (saved at step 3)
        ("ld", "ld:round:0", True),  # between rounds; the folder moved elsewhere before resuming
        ("ldbe", "ldbe:step:6", False),  # LDBE: mid-round in BE (the teacher's state must be restored)
    ],
)
def test_resume_after_sigkill_equals_an_uninterrupted_run(
    tiny_toycity, tiny_source, tmp_path, recipe, fault, moved
):
    ref, run = tmp_path / "ref", tmp_path / "run"
    done = sfseg_cli(*adapt_args(tiny_toycity, tiny_source, ref, recipe))
    assert done.returncode == 0, done.stderr
    killed = sfseg_cli(*adapt_args(tiny_toycity, tiny_source, run, recipe), env={"SFSEG_FAULT_KILL": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not (run / "final.pt").exists()
    if moved:  # where a run lives is not part of its recipe: a moved run resumes in its new place
        (tmp_path / "moved").mkdir()
        run = run.rename(tmp_path / "moved" / "run")
    resumed = sfseg_cli("adapt", "--resume", str(run))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(ref / "final.pt", run / "final.pt")
    assert stable_records(ref) == stable_records(run)
    ref_summary = json.loads((ref / "summary.json").read_text())
    run_summary = json.loads((run / "summary.json").read_text())
    assert ref_summary["val_miou_per_round"] == run_summary["val_miou_per_round"]
    if recipe == "ldbe":
        assert_same_weights(ref / "ld" / "final.pt", run / "ld" / "final.pt")


def test_bad_resume_inputs_give_one_clear_error_and_keep_the_files(tiny_toycity, tiny_source, tmp_path):
    run = tmp_path / "run"
    killed = sfseg_cli(*adapt_args(tiny_toycity, tiny_source, run), env={"SFSEG_FAULT_KILL": "ld:step:5"})
    assert killed.returncode == -signal.SIGKILL

    def files():
        # The lock file records the pid of the last process that locked the directory: not run data.
        return {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name != ".sfseg-lock"}

    before = files()

    def refused(*args, expect):
        res = sfseg_cli(*args)
        assert res.returncode == 2, res.stderr
        assert expect in res.stderr and "Traceback" not in res.stderr
        assert files() == before  # nothing overwritten

    # Another recipe (a different method) into the same run directory.
    refused(
        "adapt",
        "--resume",
        str(run),
        "--config",
        "configs/toycity/ld_pl.yaml",
        *adapt_args(tiny_toycity, tiny_source, run)[3:],
        expect="another recipe",
    )
    # A new run into a used directory.
    refused(*adapt_args(tiny_toycity, tiny_source, run), expect="--resume")
    # A truncated state file.
    state = run / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    before = files()
    refused("adapt", "--resume", str(run), expect="truncated or corrupt")
    # A missing state file.
    state.unlink()
    before = files()
    refused("adapt", "--resume", str(run), expect="state.pt not found")
    # A directory that holds no run.
    empty = tmp_path / "empty"
    empty.mkdir()
    res = sfseg_cli("adapt", "--resume", str(empty))
    assert res.returncode == 2 and "no run to resume" in res.stderr


def test_a_finished_run_refuses_to_resume(tiny_toycity, tiny_source, tmp_path):
    run = tmp_path / "run"
    args = adapt_args(tiny_toycity, tiny_source, run)
    args[args.index("rounds=2")] = "rounds=1"
    assert main(args) == 0
    final = (run / "final.pt").stat().st_mtime_ns
    res = sfseg_cli("adapt", "--resume", str(run))
    assert res.returncode == 2 and "has finished" in res.stderr
    assert (run / "final.pt").stat().st_mtime_ns == final


@pytest.mark.parametrize("fault", ["train_source:step:7", "train_source:round:1"])
def test_train_source_resumes_exactly_after_sigkill(tiny_toycity, tmp_path, fault):
    """Source training runs on the same loop: killed mid-epoch (between two saved states) or between
    epochs, ``sfseg train-source --resume`` gives the same weights and records as an uninterrupted run."""

    def args(out):
        return ["train-source", "--config", "configs/toycity/source.yaml", f"data.root={tiny_toycity}",
                f"out={out}", "epochs=3", "batch_size=2", "save_every=3", "amp=false",
                "arch_kwargs={width: 8, output_stride: 4}"]  # fmt: skip

    ref, out = tmp_path / "ref" / "src.pt", tmp_path / "run" / "src.pt"
    done = sfseg_cli(*args(ref))
    assert done.returncode == 0, done.stderr[-2000:]
    killed = sfseg_cli(*args(out), env={"SFSEG_FAULT_KILL": fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not out.exists()
    resumed = sfseg_cli("train-source", "--resume", str(out.with_suffix("")))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_same_weights(ref, out)
    assert stable_records(ref.with_suffix("")) == stable_records(out.with_suffix(""))
    # A finished source run refuses to resume; a new run into it is refused without --overwrite.
    again = sfseg_cli("train-source", "--resume", str(out.with_suffix("")))
    assert again.returncode == 2 and "has finished" in again.stderr
    res = sfseg_cli(*args(out))
    assert res.returncode == 2 and "--overwrite" in res.stderr
