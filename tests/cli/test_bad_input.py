"""Bad input never costs work: each case exits 2 with the file or key named, no traceback, nothing lost."""

import shutil
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.cli.main import main
from sfseg.data.classes import CITYSCAPES19
from sfseg.data.fake_trees import write_cityscapes
from sfseg.models import Checkpoint, create_model
from sfseg.models.checkpoint import Normalization
from tests.conftest import SMALL_MODEL, source_args

UNWRITABLE = "/proc/sfseg-cannot-write-here"  # not creatable, even by root


def run_cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


@pytest.fixture
def toy(tiny_toycity, tmp_path):
    """A private copy of the tiny tree, free to damage."""
    root = tmp_path / "toy"
    shutil.copytree(tiny_toycity, root)
    return root


def adapt(root, src, out, *extra):
    return [
        "adapt",
        "--config",
        "configs/toycity/ld.yaml",
        f"data.root={root}",
        f"checkpoint={src}",
        f"out={out}",
        *extra,
    ]


@pytest.mark.parametrize(
    "damage, expect",
    [
        (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "cannot be read as an image"),
        (lambda p: p.write_bytes(np.random.default_rng(0).bytes(500)), "not an image file"),
    ],
    ids=["truncated", "random-bytes"],
)
def test_broken_target_images_name_the_file(toy, tiny_source, tmp_path, capsys, damage, expect):
    bad = toy / "target/images/train/00003.png"
    damage(bad)
    code, err = run_cli(capsys, *adapt(toy, tiny_source, tmp_path / "run"))
    assert code == 2 and str(bad) in err and expect in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_image_and_label_of_different_sizes(toy, tiny_source, tmp_path, capsys):
    lab = toy / "target/labels/val/00001.png"
    Image.open(lab).resize((40, 20), Image.NEAREST).save(lab)
    code, err = run_cli(capsys, *adapt(toy, tiny_source, tmp_path / "run"))
    assert code == 2 and str(lab) in err and "40x20" in err
    assert not (tmp_path / "run").exists()
    # Evaluation one image at a time: an error, never a wrong score.
    code, err = run_cli(
        capsys, "eval", "--checkpoint", str(tiny_source), "--data", str(toy), "--batch-size", "1"
    )
    assert code == 2 and str(lab) in err


def test_lazy_datasets_name_a_truncated_file_at_first_read_and_check_data_lists_all(tmp_path, capsys):
    root = tmp_path / "cs"
    write_cityscapes(root, per_split=3, size=(64, 32))
    images = sorted((root / "leftImg8bit" / "val").rglob("*.png"))
    for p in images[:2]:
        p.write_bytes(p.read_bytes()[:-60])  # header intact, pixel data cut
    ckpt = tmp_path / "m.pt"
    model = create_model("deeplab_small", 19, width=8, output_stride=4)
    Checkpoint.of(model, CITYSCAPES19.names, Normalization()).save(ckpt)
    code, err = run_cli(
        capsys, "eval", "--checkpoint", str(ckpt), "--dataset", "cityscapes", "--data", str(root)
    )
    assert code == 2 and str(images[0]) in err
    code = main(["check-data", "--dataset", "cityscapes", "--data", str(root)])
    out = capsys.readouterr().out
    assert (
        code == 2
        and str(images[0]) in out
        and str(images[1]) in out
        and "val: 3 sample(s), 2 problem(s)" in out
    )


def test_check_data_lists_every_bad_file(toy, capsys):
    a, b = toy / "target/images/train/00001.png", toy / "target/labels/val/00002.png"
    a.write_bytes(b"not a png")
    Image.open(b).resize((10, 10)).save(b)
    code = main(["check-data", "--data", str(toy)])
    captured = capsys.readouterr()
    assert code == 2 and str(a) in captured.out and str(b) in captured.out
    assert "Traceback" not in captured.err
    shutil.copy(toy / "target/images/train/00000.png", a)
    Image.open(toy / "target/labels/val/00000.png").save(b)
    assert main(["check-data", "--data", str(toy)]) == 0


@pytest.mark.parametrize(
    "override, key",
    [
        ("rounds=-1", "schedule.rounds"),
        ("pseudo_labels.alpha=1.5", "method.pseudo_labels.alpha"),
        ("pseudo_labels.alpha=0", "method.pseudo_labels.alpha"),
        ("batch_size=0", "schedule.batch_size"),
        ("optim.lr=-1", "schedule.optim.lr"),
        ("out=", "out"),
        ("eval_batch_size=0", "runtime.eval_batch_size"),
    ],
)
def test_recipe_values_are_checked_before_any_work(
    tiny_toycity, tiny_source, tmp_path, capsys, override, key
):
    out = tmp_path / "run"
    code, err = run_cli(capsys, *adapt(tiny_toycity, tiny_source, out), override)
    assert code == 2 and key in err and f"command-line override '{override}'" in err
    assert not out.exists() and not any(tmp_path.iterdir())


def test_batch_size_larger_than_the_split(tiny_toycity, tiny_source, tmp_path, capsys):
    out = tmp_path / "run"
    code, err = run_cli(capsys, *adapt(tiny_toycity, tiny_source, out), "batch_size=9")  # 8 train images
    assert code == 2 and "schedule.batch_size" in err and "8 images" in err and not out.exists()
    code, err = run_cli(capsys, *source_args(tiny_toycity, tmp_path / "s.pt", "batch_size=9", SMALL_MODEL))
    assert code == 2 and "schedule.batch_size" in err and not (tmp_path / "s.pt").exists()


@pytest.mark.parametrize("out_kind", ["directory", "unwritable"])
def test_train_source_checks_its_output_before_training(tiny_toycity, tmp_path, capsys, out_kind):
    out = tmp_path if out_kind == "directory" else f"{UNWRITABLE}/source.pt"
    t0 = time.time()
    code, err = run_cli(capsys, *source_args(tiny_toycity, out, "epochs=50", SMALL_MODEL))
    assert code == 2 and str(out) in err and time.time() - t0 < 20
    assert "directory" in err if out_kind == "directory" else "not writable" in err


def test_unwritable_outputs_of_every_command(tiny_toycity, tiny_source, capsys):
    for args in (
        adapt(tiny_toycity, tiny_source, UNWRITABLE),
        ["predict", "--checkpoint", str(tiny_source), "--data", str(tiny_toycity), "--out", UNWRITABLE],
        ["toycity", "generate", "--out", UNWRITABLE],
        [
            "eval",
            "--checkpoint",
            str(tiny_source),
            "--data",
            str(tiny_toycity),
            "--json",
            f"{UNWRITABLE}/m.json",
        ],
    ):
        code, err = run_cli(capsys, *args)
        assert code == 2 and UNWRITABLE in err, args


def test_checkpoint_errors_say_what_is_wrong(tiny_toycity, tiny_source, tmp_path, capsys):
    cases = {
        "text.pt": (b"hello, I am a text file\n", "text file"),
        "empty.pt": (b"", "empty"),
        "truncated.pt": (tiny_source.read_bytes()[:5000], "truncated or corrupt"),
    }
    for name, (data, expect) in cases.items():
        (tmp_path / name).write_bytes(data)
        code, err = run_cli(capsys, "eval", "--checkpoint", str(tmp_path / name), "--data", str(tiny_toycity))
        assert code == 2 and expect in err and name in err, (name, err)
        assert "trust" not in err
    # A head that disagrees with the declared class list.
    payload = torch.load(tiny_source, weights_only=True)
    payload["class_names"] = payload["class_names"][:5]
    torch.save(payload, tmp_path / "head.pt")
    code, err = run_cli(
        capsys, "eval", "--checkpoint", str(tmp_path / "head.pt"), "--data", str(tiny_toycity)
    )
    assert code == 2 and "head predicts 12 classes but it declares 5" in err
    # A bare state dict of an sfseg model.
    torch.save(payload["state_dict"], tmp_path / "bare.pt")
    code, err = run_cli(
        capsys, "eval", "--checkpoint", str(tmp_path / "bare.pt"), "--data", str(tiny_toycity)
    )
    assert code == 2 and "bare state dict" in err and "Checkpoint.of" in err


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("name: caf\xe9\n".encode("latin-1"))
    code, err = run_cli(capsys, "adapt", "--config", str(bad))
    assert code == 2 and str(bad) in err and "UTF-8" in err
    code, err = run_cli(capsys, "adapt", "--config", "configs/toycity/ld.yaml", "rounds=x")
    assert code == 2 and "command-line override 'rounds=x'" in err and "ld.yaml" not in err


def test_interrupt_exits_130_with_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    import sfseg.api as run  # the command line adapts through the API

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "run_adaptation", interrupted)
    assert main(["adapt", "--config", "configs/toycity/ld.yaml"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "sfseg: interrupted"

    def bug(*a, **k):
        raise RuntimeError("a genuine bug")

    monkeypatch.setattr(run, "run_adaptation", bug)
    with pytest.raises(RuntimeError, match="genuine bug"):
        main(["adapt", "--config", "configs/toycity/ld.yaml"])


def test_calibrate_does_not_write_tracked_docs_by_default():
    from sfseg.cli.main import build_parser

    args = build_parser().parse_args(["toycity", "calibrate"])
    assert not args.report
    args = build_parser().parse_args(
        ["bench", "toycity", "--seeds", "0", "1", "--set", "rounds=1", "batch_size=4"]
    )
    assert args.seeds == [0, 1] and args.overrides == ["rounds=1", "batch_size=4"]


def test_writability_checks_of_concurrent_processes_do_not_collide(tmp_path):
    # Ranks of a torchrun job check the same output directory at the same moment: each needs its own
    # probe file (a shared name let one rank delete the other's, which then reported "not writable").
    from concurrent.futures import ThreadPoolExecutor

    from sfseg.fileio import check_writable_dir

    def check_many(_):
        for _ in range(200):
            check_writable_dir(tmp_path, "out")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(check_many, range(8)))
    assert list(tmp_path.iterdir()) == []


def test_writability_checks_create_nothing(tmp_path):
    # A check runs before a command may still refuse its input: it must not leave an empty folder behind.
    from sfseg.errors import RunDirError
    from sfseg.fileio import atomic_write_text, check_writable_dir, check_writable_file

    check_writable_dir(tmp_path / "a" / "b", "--out")
    check_writable_file(tmp_path / "c" / "r.html", "--out")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("x")
    with pytest.raises(RunDirError, match=r"its part .*f\) exists and is not a directory"):
        check_writable_dir(tmp_path / "f" / "g", "--out")
    atomic_write_text(tmp_path / "c" / "d" / "r.json", "{}")  # the folders are made when a file is written
    assert (tmp_path / "c" / "d" / "r.json").read_text() == "{}"
