"""What sfseg reads is checked before it is trusted: sizes before memory is allocated, non-regular files
before they are opened, the recipe language strictly, weights by kind; and ``--overwrite`` deletes only the
files sfseg wrote. Each case goes through the public command line (see :mod:`.probe` for what "refused
cleanly" checks)."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.config import load_config
from sfseg.engine.training.recipe import AdaptConfig

from .probe import LD, refused, run


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width x height`` RGB pixels, with almost no data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def edited(env, edit) -> str:
    payload = torch.load(env.src, weights_only=True)
    edit(payload)
    path = env.scratch / "edited.pt"
    torch.save(payload, path)
    return str(path)


def with_weight(env, make) -> str:
    """The source checkpoint with its first float weight replaced by ``make(weight)``."""

    def edit(payload):
        sd = payload["state_dict"]
        key = next(k for k, v in sd.items() if v.is_floating_point() and v.ndim > 1)
        sd[key] = make(sd[key])

    return edited(env, edit)


def sparse(path, size: int):
    """A file of ``size`` bytes that costs no disk (a hole)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def folder(env, *names: str):
    """A plain folder of images (a user's own domain) made of tiny ToyCity images."""
    root = env.scratch / "mine"
    (root / "images").mkdir(parents=True)
    for i, n in enumerate(names):
        Image.open(env.toy / f"target/images/val/{i:05d}.png").save(root / "images" / n)
    return root


def fifo(path):
    if os.path.lexists(path):
        path.unlink()
    os.mkfifo(path)
    return path


def predict_folder(env, root) -> list:
    return ["predict", "--checkpoint", env.src, "--dataset", "folder", "--protocol", "toycity12",
            "--data", root, "--split", "all", "--out", env.scratch / "preds"]  # fmt: skip


def bench(env, *extra) -> list:
    return ["bench", "toycity", "--data", env.toy, "--out", env.out, *extra]


def mapping_check(env, text: str) -> list:
    root = folder(env, "a.png")
    (root / "labels").mkdir()
    Image.fromarray(np.zeros((32, 64), np.uint8)).save(root / "labels" / "a.png")
    return ["check-data", "--dataset", "folder", "--protocol", "toycity12", "--data", root,
            "--split", "all", "--mapping", env.file("map.yaml", text)]  # fmt: skip


def image_claiming_40000_squared(e):
    (e.toy / "target/images/train/00002.png").write_bytes(png_claiming(40000, 40000))
    return e.adapt()


def folder_image_claiming_40000_squared(e):
    root = folder(e, "a.png")
    (root / "images" / "b.png").write_bytes(png_claiming(40000, 40000))
    return predict_folder(e, root)


def fifo_in_an_image_folder(e):
    root = folder(e, "a.png")
    fifo(root / "images" / "b.png")
    return predict_folder(e, root)


def recipe_repeating_a_group(e):
    text = f"_base_: {os.path.abspath(LD)}\nruntime: {{device: cpu}}\nmethod: {{}}\n"
    text += "runtime: {num_workers: 0}\n"
    return ["adapt", "--config", e.file("r.yaml", text)]


def forced_family(e):
    torch.save({"foo": torch.zeros(3)}, e.scratch / "foo.pt")
    return ["import-checkpoint", e.scratch / "foo.pt", e.scratch / "out.pt", "--family", "crst",
            "--classes", "cityscapes19"]  # fmt: skip


CASES = [
    # ---- sizes, before memory is allocated
    (
        "checkpoint-zero-strides",
        lambda e: e.eval(
            checkpoint=with_weight(e, lambda w: torch.zeros(1).as_strided((10**5, 10**5), (0, 0)))
        ),
        "claims shape (100000, 100000)",
    ),
    (
        "checkpoint-overlapping-view",
        lambda e: e.eval(checkpoint=with_weight(e, lambda w: torch.zeros(64).as_strided((60, 5), (1, 1)))),
        "claims shape (60, 5) (300 elements) over 64 stored elements",
    ),
    (
        "inference-size-zero",
        lambda e: e.eval(checkpoint=edited(e, lambda p: p["inference"].update(input_size=[0, 0]))),
        "input_size",
    ),
    (
        "inference-size-huge",
        lambda e: e.eval(checkpoint=edited(e, lambda p: p["inference"].update(input_size=[10**5, 10**5]))),
        "input_size",
    ),
    ("image-claims-40000-squared", image_claiming_40000_squared, "00002.png: its header claims 40000x40000"),
    ("folder-image-claims-40000-squared", folder_image_claiming_40000_squared, "b.png: its header claims"),
    (
        "recipe-of-30-mb",
        lambda e: ["adapt", "--config", sparse(e.scratch / "big.yaml", 30 * 2**20)],
        "big.yaml: the recipe is 31,457,280 bytes, more than sfseg reads",
    ),
    (
        "list-file-of-100-mb",
        lambda e: sparse(e.toy / "target_val.txt", 100 * 2**20) and e.adapt(),
        "target_val.txt: the list file is 104,857,600 bytes",
    ),
    (
        "fifo-as-image",
        lambda e: fifo(e.toy / "target/images/train/00001.png") and e.adapt(),
        "00001.png is a FIFO",
    ),
    ("fifo-in-an-image-folder", fifo_in_an_image_folder, "b.png is a FIFO"),
    ("fifo-as-checkpoint", lambda e: e.eval(checkpoint=fifo(e.scratch / "c.pt")), "c.pt is a FIFO"),
    ("fifo-as-recipe", lambda e: ["adapt", "--config", fifo(e.scratch / "r.yaml")], "r.yaml"),
    # ---- the recipe language
    (
        "recipe-repeats-a-group",
        recipe_repeating_a_group,
        "key 'runtime' is given twice in one mapping (lines 2 and 4)",
    ),
    (
        "configs-directory-missing",
        lambda e: bench(e, "--configs", e.scratch / "nowhere", "--methods", "ld"),
        "recipe directory not found",
    ),
    (
        "bench-method-twice",
        lambda e: bench(e, "--methods", "ld", "adabn", "ld"),
        "--methods names ['ld'] more than once",
    ),
    (
        "bench-seed-twice",
        lambda e: bench(e, "--methods", "ld", "--seeds", "0", "0"),
        "--seeds names [0] more than once",
    ),
    (
        "bench-override-breaks-a-method",
        lambda e: bench(e, "--methods", "source_only", "ld", "--set", "losses=[teacher_ce]"),
        "method source_only: loss part 'teacher_ce' needs a teacher",
    ),
    (
        "mapping-repeats-a-key",
        lambda e: mapping_check(e, "1: road\n2: car\n1: sky\n"),
        "key 1 is given twice",
    ),
    # ---- weights of the wrong kind
    (
        "integer-weights",
        lambda e: e.eval(checkpoint=with_weight(e, lambda w: w.long())),
        "is int64, but the network holds floating-point values there",
    ),
    ("forced-family-that-does-not-fit", forced_family, "read as family 'crst' (CRST), but key"),
    (
        "import-an-sfseg-checkpoint",
        lambda e: ["import-checkpoint", e.src, e.scratch / "again.pt"],
        "is already an sfseg checkpoint",
    ),
    ("mapping-value-a-list", lambda e: mapping_check(e, "1: [road, car]\n"), "is not a class of toycity12"),
    ("mapping-value-a-number", lambda e: mapping_check(e, "1: 3\n"), "1: 3 is not a class of toycity12"),
    ("mapping-key-a-word", lambda e: mapping_check(e, "road: road\n"), "key 'road' is not a label value"),
    ("mapping-key-out-of-range", lambda e: mapping_check(e, "300: road\n"), "key 300 is not a label value"),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_refused_before_it_is_trusted(env, capsys, build, expect):
    refused(capsys, env, build(env), expect)


def test_a_string_key_keeps_its_text(tmp_path):
    """``out=010`` is the folder "010" (YAML alone would read the octal number 8 and write to ./8), on
    the command line and in a file; numbers stay numbers where the schema wants them."""
    cfg = load_config(AdaptConfig, LD, ["out=010", "name=1e3", "rounds=2", "seed=010"])
    assert (cfg.out, cfg.name, cfg.schedule.rounds, cfg.seed) == ("010", "1e3", 2, 8)
    f = tmp_path / "r.yaml"
    f.write_text(f"_base_: {os.path.abspath(LD)}\nout: 010\nname: 12:30\n")
    cfg = load_config(AdaptConfig, f)
    assert (cfg.out, cfg.name) == ("010", "12:30")


def test_a_nested_init_from_runs_the_whole_chain(env, capsys):
    """``init_from: ldbe`` runs LD, then LDBE's BE from it, then this recipe from BE's model (it used to
    skip LD silently)."""
    recipe = env.file(
        "after_ldbe.yaml", f"_base_: {os.path.abspath(LD)}\nname: after_ldbe\ninit_from: ldbe\n"
    )
    assert run(env.adapt(config=str(recipe))) == 0
    for stage in (env.out / "ldbe" / "ld", env.out / "ldbe", env.out):
        assert (stage / "final.pt").is_file(), stage
    from sfseg.models import load_checkpoint

    assert load_checkpoint(env.out / "ldbe" / "final.pt").provenance["method"] == "ldbe"
    assert str(env.out / "ldbe" / "ld" / "final.pt") in str(
        load_checkpoint(env.out / "ldbe" / "final.pt").provenance["recipe"]["checkpoint"]
    )


def test_overwrite_deletes_only_what_sfseg_wrote(env, finished, capsys):
    """A user's files inside sfseg's own folders (figures/, pseudo_labels/round_0/, tensorboard/) are
    kept and listed; everything sfseg wrote is replaced."""
    mine = {
        "figures/notes.txt": "mine\n",
        "pseudo_labels/round_0/my_fix.png": "mine\n",
        "tensorboard/keep.me": "mine\n",
        "my_round.pt": "mine\n",
    }
    for rel, text in mine.items():
        (finished / rel).write_text(text)
    old_final = (finished / "final.pt").stat().st_mtime_ns
    assert run(env.adapt("--overwrite", out=finished)) == 0
    out = capsys.readouterr().out
    for rel, text in mine.items():
        assert (finished / rel).read_text() == text, rel
        assert rel in out
    assert (finished / "final.pt").stat().st_mtime_ns != old_final
    assert not (finished / "selected.pt").exists()  # this run had no validator: the old choice is gone
