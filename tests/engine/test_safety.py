"""sfseg never loses a user's files: run-directory ownership, validation before clearing, paths that stay
inside their roots, and one process per run directory."""

import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from sfseg.cli.main import main
from sfseg.engine.runtime.rundir import RunDir
from tests.conftest import REPO, adapt_args, sfseg_cli


def tree_digest(root):
    """Every file under ``root`` with its bytes' hash (a byte-for-byte picture of a folder)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != RunDir.LOCK:
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def adapt(root, src, out, recipe="ld", *extra):
    tiny = ["rounds=1", "epochs_per_round=1", "batch_size=4", "eval_batch_size=4", "amp=false"]
    return adapt_args(root, src, out, recipe, *tiny, *extra)


@pytest.fixture
def toy(tiny_toycity, tmp_path):
    root = tmp_path / "toy"
    shutil.copytree(tiny_toycity, root)
    return root


def test_overwrite_never_deletes_a_folder_sfseg_did_not_create(tiny_toycity, tiny_source, tmp_path, capsys):
    project = tmp_path / "project"
    (project / "notes").mkdir(parents=True)
    (project / "config.yaml").write_text("my: own config\n")
    (project / "metrics.jsonl").write_text('{"mine": 1}\n')
    (project / "state.pt").write_bytes(b"my state")
    (project / "notes" / "todo.txt").write_text("keep me")
    before = tree_digest(project)
    code = main(adapt(tiny_toycity, tiny_source, project, "ld", "--overwrite"))
    err = capsys.readouterr().err
    assert code == 2 and "run marker" in err and str(project) in err
    assert tree_digest(project) == before


def test_overwrite_clears_only_sfseg_entries_of_its_own_run(tiny_toycity, tiny_source, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(adapt(tiny_toycity, tiny_source, run)) == 0
    assert RunDir(run).marker()["format"] == "sfseg-run-dir-v1"
    (run / "my_notes.txt").write_text("keep me")
    assert main(adapt(tiny_toycity, tiny_source, run, "ld", "--overwrite")) == 0
    assert (run / "my_notes.txt").read_text() == "keep me"
    assert "kept 1 entries sfseg did not write: my_notes.txt" in capsys.readouterr().out
    assert (run / "final.pt").is_file()


def test_two_stage_overwrite_checks_its_inputs_before_clearing(tiny_toycity, tiny_source, tmp_path, capsys):
    run = tmp_path / "ldbe"
    assert main(adapt(tiny_toycity, tiny_source, run, "ldbe")) == 0
    before = tree_digest(run)
    assert "final.pt" in before and "ld/final.pt" in before
    code = main(adapt(tiny_toycity, tmp_path / "missing.pt", run, "ldbe", "--overwrite"))
    err = capsys.readouterr().err
    assert code == 2 and "missing.pt" in err
    assert tree_digest(run) == before


def write_list(root, split, lines):
    (root / f"target_{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("escape", ["../outside.png", "ABSOLUTE"])
def test_list_entries_that_leave_the_root_are_refused_everywhere(toy, tiny_source, tmp_path, capsys, escape):
    outside = tmp_path / "outside.png"
    shutil.copy(toy / "target/images/val/00000.png", outside)
    entry = str(outside) if escape == "ABSOLUTE" else "../outside.png"
    lines = (toy / "target_val.txt").read_text().splitlines()
    lines[2] = f"{entry} {lines[2].split()[1]}"
    write_list(toy, "val", lines)
    preds = tmp_path / "preds"
    commands = [
        ["eval", "--checkpoint", str(tiny_source), "--data", str(toy)],
        ["predict", "--checkpoint", str(tiny_source), "--data", str(toy), "--out", str(preds)],
        adapt(toy, tiny_source, tmp_path / "run"),
        ["check-data", "--data", str(toy)],
    ]
    for args in commands:
        code = main(args)
        captured = capsys.readouterr()
        text = captured.err + captured.out
        assert code == 2, args
        assert "target_val.txt, line 3" in text and "leaves the dataset root" in text, (args, text)
        assert "Traceback" not in captured.err
    assert not (tmp_path / "run").exists()
    assert not list(tmp_path.glob("outside_pred*")) and not list(preds.rglob("*.png"))


def test_list_files_of_real_datasets_stay_inside_the_root(tmp_path):
    from sfseg.data.fake_trees import write_gta5
    from sfseg.data.registry import build_dataset
    from sfseg.errors import DatasetError

    root = tmp_path / "gta5"
    write_gta5(root, n=3)
    for entry in ("../../etc/passwd", "/etc/passwd", "images/../../x.png"):
        lst = tmp_path / "split.txt"
        lst.write_text(f"00001.png\n{entry}\n")
        with pytest.raises(DatasetError, match=r"split.txt, line 2: .* leaves the dataset root"):
            build_dataset("gta5", root, str(lst), labels=True)
    # A name with spaces is one name (and a missing one is named whole).
    lst.write_text("my frame 1.png\n")
    with pytest.raises(DatasetError, match=r"my frame 1\.png"):
        build_dataset("gta5", root, str(lst), labels=True)


HOLD = """
import sys, time
from sfseg.engine.runtime.rundir import RunDir
RunDir(sys.argv[1]).lock()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_process_on_a_locked_run_exits_2_naming_the_first(tiny_toycity, tiny_source, tmp_path):
    run = tmp_path / "run"
    assert main(adapt(tiny_toycity, tiny_source, run, "ld", "rounds=2")) == 0
    (run / "state.pt").unlink()  # make it look unfinished, so resume gets as far as the lock
    before = tree_digest(run)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        for extra in (["--resume", str(run)], []):
            args = ["adapt", *extra] if extra else [*adapt(tiny_toycity, tiny_source, run), "--overwrite"]
            res = sfseg_cli(*args)
            assert res.returncode == 2, res.stderr
            assert f"pid {holder.pid}" in res.stderr and "in use" in res.stderr, res.stderr
            assert "Traceback" not in res.stderr
        assert tree_digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    # The operating system released the lock with the process: the directory is usable again.
    t0 = time.time()
    res = sfseg_cli(*adapt(tiny_toycity, tiny_source, run), "--overwrite")
    assert res.returncode == 0, res.stderr
    assert time.time() - t0 < 120


def test_lock_is_released_by_the_os_when_the_holder_dies(tmp_path):
    run = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.path)], cwd=REPO, stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    from sfseg.errors import RunDirError

    with pytest.raises(RunDirError, match=f"pid {holder.pid} on host"):
        run.lock()
    os.kill(holder.pid, 9)
    holder.wait()
    run.lock()
    run.unlock()


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_state(
    tiny_toycity, tiny_source, tmp_path, capsys
):
    from sfseg.engine.training.resume import read_state
    from sfseg.models.checkpoint import first_non_finite

    run = tmp_path / "run"
    code = main(adapt(tiny_toycity, tiny_source, run, "ld", "optim.lr=1000", "rounds=2", "save_every=1"))
    err = capsys.readouterr().err
    assert code == 2 and "training diverged at step" in err and "schedule.optim.lr is 1000" in err
    assert "Traceback" not in err
    state = read_state(run)  # the last good state: readable, finite, unfinished
    assert state["phase"] == "run" and first_non_finite(state["model"]) is None
    assert (
        not list(run.glob("round_*.pt"))
        or first_non_finite(torch.load(run / "round_0.pt")["state_dict"]) is None
    )
    assert not list(run.rglob("*.tmp"))
    records = [r for r in (run / "metrics.jsonl").read_text().splitlines() if '"diverged"' in r]
    assert len(records) == 1
    # It resumes (and, with the same learning rate, diverges again at the same point, refusing to save).
    before = tree_digest(run)
    assert main(["adapt", "--resume", str(run)]) == 2
    assert "training diverged" in capsys.readouterr().err
    after = tree_digest(run)
    logs = ("metrics.jsonl", "tensorboard/")  # the attempt is logged; nothing else changes
    assert {k: v for k, v in after.items() if not k.startswith(logs)} == {
        k: v for k, v in before.items() if not k.startswith(logs)
    }
    # A huge loss weight: the weighted total (or the next step's loss) is not finite: stopped there.
    code = main(adapt(tiny_toycity, tiny_source, tmp_path / "w", "ld", "loss_weights={negative: 1e308}"))
    err = capsys.readouterr().err
    assert code == 2 and "training diverged at step" in err and "weighted total loss is" in err


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from sfseg.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_full_disk_gives_one_line_no_temporary_files_and_keeps_the_previous_state(
    tiny_toycity, tiny_source, tmp_path
):
    run = tmp_path / "run"
    killed = sfseg_cli(
        *adapt(tiny_toycity, tiny_source, run, "ld", "rounds=2"), env={"SFSEG_FAULT_KILL": "ld:labelled:0"}
    )
    assert killed.returncode == -9
    state = (run / "state.pt").read_bytes()
    # Resume where no file may grow beyond 64 kB: the next state (a few hundred kB) cannot be written.
    res = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(64 * 1024), "adapt", "--resume", str(run)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("sfseg: error:") and "could not be written" in last and "Traceback" not in res.stderr
    )
    assert (run / "state.pt").read_bytes() == state  # the previous state is intact
    assert not list(run.rglob("*.tmp")) and not list(run.rglob(".*.tmp"))
    # With room again, the run resumes from it and finishes.
    assert sfseg_cli("adapt", "--resume", str(run)).returncode == 0


def test_resume_on_a_read_only_directory_is_one_clear_error(
    tiny_toycity, tiny_source, tmp_path, monkeypatch, capsys
):
    import errno
    import tempfile

    run = tmp_path / "run"
    killed = sfseg_cli(
        *adapt(tiny_toycity, tiny_source, run, "ld", "rounds=2"), env={"SFSEG_FAULT_KILL": "ld:labelled:0"}
    )
    assert killed.returncode == -9
    before = tree_digest(run)

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", read_only)  # what a read-only mount does to the probe
    assert main(["adapt", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "not writable" in err and str(run) in err and "Traceback" not in err
    assert tree_digest(run) == before


def test_run_dir_names_rounds_strictly(tmp_path):
    run = RunDir(tmp_path)
    for name in ("round_0.pt", "round_10.pt", "round_2.pt", "round_best.pt", "round_-1.pt", "round_3.pt.tmp"):
        (tmp_path / name).write_bytes(b"x")
    assert run.round_checkpoints() == [(0, run.round_checkpoint(0)), (2, run.round_checkpoint(2)),
                                       (10, run.round_checkpoint(10))]  # fmt: skip
    assert run.stage("ld").final == tmp_path / "ld" / "final.pt"
