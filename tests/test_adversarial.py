"""An adversarial probe: bad inputs and faults across every command, as a new user or an attacker would try
them. Each case must end with exit status 2, one readable message naming the key or the file (no
traceback), within seconds, and without writing or losing anything."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.cli.main import main

LD = "configs/toycity/ld.yaml"
SRC = "configs/toycity/source.yaml"


@dataclass
class Env:
    """What a case may use: a private copy of the tiny ToyCity tree, the tiny source checkpoint, a scratch
    directory (``out`` must stay absent)."""

    toy: Path
    src: Path
    tmp: Path

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def adapt(self, *extra: str, config: str = LD) -> list[str]:
        return ["adapt", "--config", config, f"data.root={self.toy}", f"checkpoint={self.src}",
                f"out={self.out}", "rounds=1", "epochs_per_round=1", "batch_size=4", *extra]  # fmt: skip

    def source(self, *extra: str) -> list[str]:
        return ["train-source", "--config", SRC, f"data.root={self.toy}", f"out={self.out / 's.pt'}",
                "epochs=1", "arch_kwargs={width: 8, output_stride: 4}", *extra]  # fmt: skip

    def eval(self, *extra: str, checkpoint: Path | None = None) -> list[str]:
        return ["eval", "--checkpoint", str(checkpoint or self.src), "--data", str(self.toy), *extra]

    def file(self, name: str, data: str | bytes) -> Path:
        p = self.tmp / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        return p

    def checkpoint(self, edit) -> Path:
        payload = torch.load(self.src, weights_only=True)
        edit(payload)
        path = self.tmp / "edited.pt"
        torch.save(payload, path)
        return path


def bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]")
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def spoiled(env: Env, value: float) -> Path:
    """The tiny source checkpoint with one weight tensor filled with ``value`` (NaN, inf)."""

    def fill(payload):
        next(v for v in payload["state_dict"].values() if v.is_floating_point()).fill_(value)

    return env.checkpoint(fill)


def replace_image(env: Env, rel: str, array: np.ndarray) -> None:
    Image.fromarray(array).save(env.toy / rel)


def sixteen_bit(env: Env) -> None:
    h, w = np.asarray(Image.open(env.toy / "target/images/train/00001.png")).shape[:2]
    replace_image(
        env, "target/images/train/00001.png", (np.arange(h * w).reshape(h, w) * 37 % 65536).astype(np.uint16)
    )


def rewrite_list(env: Env, name: str, edit) -> None:
    path = env.toy / name
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def prediction_folder(env: Env, write) -> Path:
    """A folder of trainId predictions for the target val split, one of which ``write`` spoils."""
    folder = env.tmp / "preds"
    assert main(["predict", "--checkpoint", str(env.src), "--data", str(env.toy), "--out", str(folder),
                 "--format", "trainid"]) == 0  # fmt: skip
    write(sorted(folder.rglob("*.png"))[0])
    return folder


def folder_tree(env: Env) -> Path:
    """A user's own folder dataset (images/ and labels/) with one pair."""
    root = env.tmp / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    shutil.copy(env.toy / "target/images/val/00000.png", root / "images/a.png")
    shutil.copy(env.toy / "target/labels/val/00000.png", root / "labels/a.png")
    return root


def run_dir(env: Env, *files: str) -> Path:
    run = env.tmp / "run"
    run.mkdir()
    for f in files:
        (run / f).write_text("{}\n" if f.endswith(".jsonl") else "x: 1\n")
    return run


# (id, build args from the env, text expected in the message)
CASES = [
    # ---- recipes and overrides
    ("unknown-key", lambda e: e.adapt("roundz=2"), "unknown key 'roundz'"),
    ("wrong-type", lambda e: e.adapt("rounds=x"), "expected an integer"),
    ("negative-rounds", lambda e: e.adapt("rounds=-1"), "schedule.rounds"),
    ("huge-rounds", lambda e: e.adapt("rounds=1000000"), "schedule.rounds: must be in [0, 100]"),
    ("huge-epochs", lambda e: e.adapt("epochs_per_round=100000"), "epochs_per_round: must be in"),
    ("huge-bins", lambda e: e.adapt("pseudo_labels.bins=1000000000"), "bins: must be in"),
    ("zero-batch", lambda e: e.adapt("batch_size=0"), "schedule.batch_size"),
    ("alpha-above-one", lambda e: e.adapt("pseudo_labels.alpha=1.5"), "alpha"),
    ("lr-inf", lambda e: e.adapt("optim.lr=.inf"), "not a finite number"),
    ("lr-nan", lambda e: e.adapt("optim.lr=.nan"), "not a finite number"),
    ("lr-inf-string", lambda e: e.adapt("optim.lr=inf"), "not a finite number"),
    ("lr-overflow", lambda e: e.adapt("optim.lr=1e999"), "not a finite number"),
    ("loss-weight-inf", lambda e: e.adapt("loss_weights={negative: .inf}"), "not a finite number"),
    ("negative-seed", lambda e: e.adapt("seed=-1"), "seed: must be in"),
    ("huge-seed", lambda e: e.adapt(f"seed={2**40}"), "seed: must be in"),
    ("cuda-on-a-cpu-build", lambda e: e.adapt("device=cuda"), "CUDA is not available"),
    ("unknown-device", lambda e: e.adapt("device=tpu"), "runtime.device"),
    ("empty-out", lambda e: e.adapt("out="), "out"),
    ("huge-negative-width", lambda e: e.adapt("negative_width=1000"), "negative_width: must be in"),
    ("zero-input-size", lambda e: e.adapt("input_size=[0, 0]"), "input_size"),
    ("huge-crop", lambda e: e.adapt("augment={kind: scale_crop, crop: 1000000}"), "crop: must be in"),
    ("huge-workers", lambda e: e.adapt("num_workers=100000"), "num_workers: must be in"),
    ("huge-cache", lambda e: e.adapt("logit_cache_gib=1e9"), "logit_cache_gib: must be in"),
    ("override-without-equals", lambda e: e.adapt("rounds"), "must look like key=value"),
    ("override-without-key", lambda e: e.adapt("=3"), "has no key"),
    (
        "override-alias-bomb",
        lambda e: e.adapt("losses=" + bomb(8).split("\n", 1)[0].split(": ", 1)[1]),
        "losses",
    ),
    (
        "base-not-a-string",
        lambda e: ["adapt", "--config", str(e.file("c.yaml", "_base_: 5\n"))],
        "_base_ must be",
    ),
    ("base-loop", lambda e: ["adapt", "--config", str(e.file("c.yaml", "_base_: c.yaml\n"))], "loops back"),
    ("non-string-key", lambda e: ["adapt", "--config", str(e.file("c.yaml", "1: x\n"))], "is not a name"),
    ("alias-bomb", lambda e: ["adapt", "--config", str(e.file("c.yaml", bomb()))], "c.yaml"),
    ("recursive-alias", lambda e: ["adapt", "--config", str(e.file("c.yaml", "name: &a [*a]\n"))], "c.yaml"),
    ("config-not-utf8", lambda e: ["adapt", "--config", str(e.file("c.yaml", b"name: caf\xe9\n"))], "UTF-8"),
    ("config-is-a-directory", lambda e: ["adapt", "--config", str(e.tmp)], "is not a file"),
    ("config-missing", lambda e: ["adapt", "--config", str(e.tmp / "none.yaml")], "not found"),
    ("config-bad-yaml", lambda e: ["adapt", "--config", str(e.file("c.yaml", "a: [1,\n"))], "not valid YAML"),
    ("config-a-list", lambda e: ["adapt", "--config", str(e.file("c.yaml", "- 1\n"))], "must be a mapping"),
    (
        "config-python-tag",
        lambda e: [
            "adapt",
            "--config",
            str(e.file("c.yaml", "name: !!python/object/apply:os.system [ls]\n")),
        ],
        "c.yaml",
    ),
    ("arch-kwargs-not-a-mapping", lambda e: e.source("arch_kwargs=5"), "arch_kwargs"),
    ("arch-kwargs-huge", lambda e: e.source("arch_kwargs={width: 1000000}"), "more than sfseg builds"),
    ("source-seed", lambda e: e.source("seed=-5"), "seed: must be in"),
    ("source-epochs", lambda e: e.source("epochs=100000000"), "epochs: must be in"),
    # ---- data
    ("data-root-missing", lambda e: e.adapt(f"data.root={e.tmp / 'nowhere'}"), "not found"),
    ("data-root-a-file", lambda e: e.adapt(f"data.root={e.file('f.txt', 'x')}"), "f.txt"),
    (
        "list-not-utf8",
        lambda e: (e.toy / "target_val.txt").write_bytes(b"\xff\xfe\x00bad\n") and e.adapt(),
        "not UTF-8",
    ),
    (
        "list-three-fields",
        lambda e: rewrite_list(e, "target_val.txt", lambda ls: [ls[0] + " extra"] + ls[1:]) or e.adapt(),
        "line 1: 3 paths",
    ),
    ("list-empty", lambda e: (e.toy / "target_val.txt").write_text("\n") and e.adapt(), "is empty"),
    (
        "list-absolute-check-data",
        lambda e: (
            rewrite_list(e, "target_train.txt", lambda ls: ["/etc/hostname x.png"] + ls)
            or ["check-data", "--data", str(e.toy)]
        ),
        "leaves the dataset root",
    ),
    (
        "sixteen-bit-image-check-data",
        lambda e: sixteen_bit(e) or ["check-data", "--data", str(e.toy)],
        "16 bits per channel",
    ),
    (
        "sixteen-bit-image-adapt",
        lambda e: sixteen_bit(e) or e.adapt(),
        "00001.png: image has 16 bits per channel",
    ),
    (
        "rgb-label",
        lambda e: (
            replace_image(e, "target/labels/val/00001.png", np.zeros((32, 64, 3), np.uint8)) or e.adapt()
        ),
        "label PNG has mode 'RGB'",
    ),
    (
        "label-unremapped",
        lambda e: (
            replace_image(e, "target/labels/val/00001.png", np.full((32, 64), 26, np.uint8)) or e.adapt()
        ),
        "Un-remapped",
    ),
    (
        "mis-sized-train-image",
        lambda e: (
            [
                replace_image(
                    e,
                    f"target/{k}/train/00002.png",
                    np.zeros((16, 32, 3) if k == "images" else (16, 32), np.uint8),
                )
                for k in ("images", "labels")
            ]
            and e.adapt()
        ),
        "images of different sizes",
    ),
    (
        "unknown-dataset",
        lambda e: ["check-data", "--dataset", "kitti", "--data", str(e.toy)],
        "unknown dataset 'kitti'",
    ),
    (
        "mapping-alias-bomb",
        lambda e: [
            "check-data",
            "--dataset",
            "folder",
            "--protocol",
            "cityscapes19",
            "--data",
            str(folder_tree(e)),
            "--split",
            "all",
            "--mapping",
            str(e.file("m.yaml", bomb())),
        ],
        "m.yaml",
    ),
    (
        "mapping-not-a-mapping",
        lambda e: [
            "check-data",
            "--dataset",
            "folder",
            "--protocol",
            "cityscapes19",
            "--data",
            str(folder_tree(e)),
            "--split",
            "all",
            "--mapping",
            str(e.file("m.yaml", "- road\n")),
        ],
        "expected a mapping",
    ),
    # ---- checkpoints
    (
        "nan-checkpoint-eval",
        lambda e: e.eval(checkpoint=spoiled(e, float("nan"))),
        "NaN or infinite",
    ),
    (
        "nan-checkpoint-adapt",
        lambda e: e.adapt(f"checkpoint={spoiled(e, float('inf'))}"),
        "edited.pt",
    ),
    (
        "zero-std-normalisation",
        lambda e: e.eval(checkpoint=e.checkpoint(lambda p: p["normalization"].update(std=[0.0, 1.0, 1.0]))),
        "std must be 3 positive",
    ),
    (
        "arch-kwargs-in-checkpoint",
        lambda e: e.eval(checkpoint=e.checkpoint(lambda p: p.update(arch_kwargs=[1, 2]))),
        "damaged metadata",
    ),
    ("checkpoint-text", lambda e: e.eval(checkpoint=e.file("t.pt", "hello\n")), "text file"),
    ("checkpoint-empty", lambda e: e.eval(checkpoint=e.file("t.pt", b"")), "empty"),
    (
        "checkpoint-pickled-object",
        lambda e: torch.save({"x": Path("/")}, e.tmp / "o.pt") or e.eval(checkpoint=e.tmp / "o.pt"),
        "other than tensors",
    ),
    (
        "nan-init-train-source",
        lambda e: e.source(f"init={spoiled(e, float('nan'))}"),
        "NaN or infinite",
    ),
    # ---- run directories
    ("resume-missing-dir", lambda e: ["adapt", "--resume", str(e.tmp / "nothing")], "no run to resume"),
    ("resume-not-a-run", lambda e: ["adapt", "--resume", str(run_dir(e))], "no run to resume"),
    (
        "new-run-into-other-files",
        lambda e: e.adapt(f"out={run_dir(e, 'notes.txt')}"),
        "already holds other files",
    ),
    ("out-is-a-file", lambda e: e.adapt(f"out={e.file('plain', 'x')}"), "not a directory"),
    (
        "overwrite-unmarked",
        lambda e: e.adapt(f"out={run_dir(e, 'config.yaml', 'metrics.jsonl')}", "--overwrite"),
        "run marker",
    ),
    (
        "resume-and-overwrite",
        lambda e: ["adapt", "--resume", str(e.tmp), "--overwrite"],
        "exclude each other",
    ),
    # ---- prediction files
    (
        "prediction-rgb",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: Image.new("RGB", Image.open(p).size).save(p))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "mode 'RGB'",
    ),
    (
        "prediction-empty",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: p.write_bytes(b""))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "is empty",
    ),
    (
        "prediction-16-bit",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: Image.fromarray(np.zeros((32, 64), np.uint16)).save(p))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "not 8-bit ids",
    ),
    (
        "prediction-garbage",
        lambda e: [
            "eval",
            "--predictions",
            str(prediction_folder(e, lambda p: p.write_bytes(b"\x89PNG garbage"))),
            "--data",
            str(e.toy),
            "--format",
            "trainid",
        ],
        "cannot be read as a prediction",
    ),
    (
        "predictions-missing",
        lambda e: ["eval", "--predictions", str(e.tmp), "--data", str(e.toy)],
        "prediction file(s) missing",
    ),
    # ---- select and report
    ("select-not-a-run", lambda e: ["select", str(e.tmp)], "not a run directory"),
    (
        "select-unknown-validator",
        lambda e: ["select", str(e.tmp), "--validator", "vibes"],
        "unknown validator",
    ),
    (
        "report-not-a-run",
        lambda e: ["report", str(e.tmp), "--out", str(e.out / "r.html")],
        "not an sfseg run directory",
    ),
    (
        "report-damaged-metrics",
        lambda e: ["report", str(run_dir(e, "metrics.jsonl").parent / "run"), "--out", str(e.out / "r.html")],
        "not an sfseg metrics record",
    ),
    # ---- the command line's own flags
    ("flag-batch-size-0", lambda e: e.eval("--batch-size", "0"), "--batch-size: must be in"),
    ("flag-workers-negative", lambda e: e.eval("--workers", "-1"), "--workers: must be in"),
    ("flag-input-size-0", lambda e: e.eval("--input-size", "0", "0"), "--input-size: must be in"),
    (
        "flag-max-images-negative",
        lambda e: ["select", str(e.tmp), "--max-images", "-5"],
        "--max-images: must be in",
    ),
    ("flag-jobs-0", lambda e: ["bench", "toycity", "--jobs", "0"], "--jobs: must be in"),
    (
        "flag-seed-negative",
        lambda e: ["toycity", "generate", "--seed", "-1", "--out", str(e.out)],
        "--seed: must be in",
    ),
    ("flag-seeds-text", lambda e: ["bench", "toycity", "--seeds", "one"], "is not an integer"),
]


@pytest.fixture
def env(tiny_toycity, tiny_source, tmp_path):
    toy = tmp_path / "toy"
    shutil.copytree(tiny_toycity, toy)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    return Env(toy, tiny_source, scratch)


def test_the_probe_is_large_enough():
    assert len(CASES) >= 60


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(env, capsys, build, expect):
    args = [str(a) for a in build(env)]
    t0 = time.time()
    try:
        code = main(args)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    elapsed = time.time() - t0
    captured = capsys.readouterr()
    text = captured.err + captured.out
    assert code == 2, text
    assert expect in text, text
    assert "Traceback" not in captured.err
    assert elapsed < 30
    assert not env.out.exists() or not any(env.out.rglob("*")), "something was written"


def test_a_500_byte_alias_bomb_is_refused_in_under_a_second(tmp_path, capsys):
    text = bomb()
    assert len(text) < 500
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    t0 = time.time()
    assert main(["adapt", "--config", str(path)]) == 2
    assert time.time() - t0 < 1.0
    err = capsys.readouterr().err
    assert "bomb.yaml" in err and "YAML aliases" in err and len(err) < 1000


def test_on_off_switches_accept_what_yaml_reads_as_booleans(tmp_path):
    from sfseg.config import load_config
    from sfseg.engine.training.recipe import AdaptConfig

    cfg = load_config(AdaptConfig, LD, ["runtime.channels_last=off"])
    assert cfg.runtime.channels_last == "off"
    assert load_config(AdaptConfig, LD, ["channels_last=on"]).runtime.channels_last == "on"
