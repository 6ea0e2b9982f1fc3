"""No link is followed inside a run directory: for every file a run writes or reads back (lock, state,
metrics, summary, config, checkpoints, pseudo-labels, figures, TensorBoard, the logit cache, stage
directories, report embeds), a symbolic link planted in its place is refused with one error naming it,
and the file it points to is never written, truncated, appended to or embedded."""

from __future__ import annotations

import shutil

import pytest

from .probe import PRECIOUS, refused, run


def victim_dir(env):
    d = env.tmp / "victim_dir"
    d.mkdir(exist_ok=True)
    (d / "keep.txt").write_text(PRECIOUS)
    return d


# (id, the run-dir entry to replace by a link, "file" or "dir" target)
KILLED = [
    ("state", "state.pt", "file"),
    ("metrics", "metrics.jsonl", "file"),
    ("lock", ".sfseg-lock", "file"),
    ("config", "config.yaml", "file"),
    ("marker", ".sfseg-run", "file"),
    ("pseudo-label", "pseudo_labels/round_0/00003.png", "file"),
    ("pseudo-label-round", "pseudo_labels/round_0", "dir"),
    ("pseudo-labels", "pseudo_labels", "dir"),
    ("figures", "figures", "dir"),
    ("figure", "figures/source_model.png", "file"),
    ("tensorboard", "tensorboard", "dir"),
    ("cache", ".cache", "dir"),
]


@pytest.mark.parametrize("entry, kind", [c[1:] for c in KILLED], ids=[c[0] for c in KILLED])
def test_resume_refuses_a_link_in_place_of_a_run_file(env, killed, capsys, entry, kind):
    target = victim_dir(env) if kind == "dir" else env.victim
    if entry == "config.yaml":  # a link to a perfectly good copy is still refused
        target = env.scratch / "config.yaml"
        shutil.copyfile(killed / "config.yaml", target)
    env.link(killed / entry, target)
    line = refused(
        capsys, env, ["adapt", "--resume", killed], f"{entry.rsplit('/', 1)[-1]} is a symbolic link"
    )
    assert str(killed) in line


FINISHED = [
    ("report-metrics", "metrics.jsonl", ["report", "{run}", "--out", "{out}"]),
    ("report-summary", "summary.json", ["report", "{run}", "--out", "{out}"]),
    ("report-embeds-a-figure", "figures/round_0.png", ["report", "{run}", "--out", "{out}"]),
    ("select-checkpoint", "round_0.pt", ["select", "{run}"]),
    ("select-config", "config.yaml", ["select", "{run}"]),
    ("overwrite-final", "final.pt", "adapt"),
    ("overwrite-selected", "selected.pt", "adapt"),
    ("overwrite-summary", "summary.json", "adapt"),
]


@pytest.mark.parametrize("entry, command", [c[1:] for c in FINISHED], ids=[c[0] for c in FINISHED])
def test_commands_reading_a_run_refuse_its_links(env, finished, capsys, entry, command):
    env.link(finished / entry)
    if command == "adapt":
        args = env.adapt("select.validator=bnm", "--overwrite", out=finished)
    else:
        args = [a.format(run=finished, out=env.scratch / "r.html") for a in command]
    refused(capsys, env, args, f"{entry.rsplit('/', 1)[-1]} is a symbolic link")


def test_a_stage_directory_that_is_a_link_is_refused(env, tiny_toycity, capsys):
    """LDBE keeps its LD stage in ``<out>/ld``: a link there (to another marked run) is not followed."""
    other = env.tmp / "elsewhere"
    other.mkdir()
    (other / ".sfseg-run").write_text('{"format": "sfseg-run-dir-v1"}\n')
    run_dir = env.scratch / "ldbe"
    run_dir.mkdir()
    (run_dir / ".sfseg-run").write_text('{"format": "sfseg-run-dir-v1"}\n')
    (run_dir / "ld").symlink_to(other)
    refused(
        capsys,
        env,
        env.adapt("--overwrite", out=run_dir, config="configs/toycity/ldbe.yaml"),
        "ld is a symbolic link",
    )


@pytest.mark.parametrize(
    "args",
    [
        lambda e: e.eval("--json", e.scratch / "m.json"),
        lambda e: ["import-checkpoint", e.src, e.scratch / "m.json"],
        lambda e: ["report", "{finished}", "--out", e.scratch / "m.json"],
    ],
    ids=["eval-json", "import-output", "report-out"],
)
def test_an_output_file_that_is_a_link_is_never_written_through(env, finished, capsys, args):
    link = env.link(env.scratch / "m.json")
    argv = [str(a).replace("{finished}", str(finished)) for a in args(env)]
    refused(capsys, env, argv, f"{link} is a symbolic link")


def test_the_run_directory_itself_may_be_a_link(env, capsys):
    """The user's own choice (runs/ on another disk) is followed; only what is inside is guarded."""
    real = env.tmp / "disk" / "run"
    real.mkdir(parents=True)
    out = env.scratch / "run"
    out.symlink_to(real)
    assert run(env.adapt(out=out)) == 0
    assert (real / "final.pt").is_file() and (real / "metrics.jsonl").is_file()
    assert env.victim.read_text() == PRECIOUS


def test_predict_never_writes_through_a_link_at_a_prediction_name(env, capsys):
    out = env.scratch / "preds"
    env.link(out / "target/images/val/00000_pred_labelIds.png")
    args = ["predict", "--checkpoint", env.src, "--data", env.toy, "--out", out]
    refused(capsys, env, args, "00000_pred_labelIds.png is a symbolic link", allow=("scratch/preds/target",))
