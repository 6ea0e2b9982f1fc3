"""ToyCity on disk: writing a world in a real dataset's kind of layout, and recognising one.

Two domains share one 12-class protocol (:data:`sfseg.data.classes.TOYCITY`, Cityscapes names and colours):

* ``source`` ("sim"): flat game-engine materials, saturated object colours, no noise.
* ``target`` ("photo"): class-conditional material changes, textures, exposure and colour cast, cast
  shadows, vignetting, blur and sensor noise, and different layout statistics (lower horizon, more and
  bigger cars, more but smaller pedestrians, more trees, more fences).

Files are written in the same kind of layout as a real dataset, so the file pipeline is exercised::

    <root>/toycity.json                            generator version, seed, sizes, classes
    <root>/{source,target}_{train,val}.txt         "<image path> <label path>" per line, relative to root
    <root>/<domain>/images/<split>/<index:05d>.png  RGB
    <root>/<domain>/labels/<split>/<index:05d>.png  uint8 trainIds (palette PNG, 255 = ignore)

Every image has its own random stream seeded by (seed, domain, split, index): output does not depend on
generation order, and the same seed gives byte-identical files.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from sfseg.data.classes import TOYCITY
from sfseg.data.toycity.worlds import (
    DOMAINS,
    GENERATOR_VERSION,
    SPLITS,
    VARIANTS,
    ToyCitySpec,
    generate_sample,
)
from sfseg.fileio import atomic_write_text


def list_path(root: Path, domain: str, split: str) -> Path:
    return Path(root) / f"{domain}_{split}.txt"


def _write_sample(root: Path, spec: ToyCitySpec, domain: str, split: str, i: int) -> str:
    image, label = generate_sample(spec, domain, split, i)
    img_rel = f"{domain}/images/{split}/{i:05d}.png"
    lbl_rel = f"{domain}/labels/{split}/{i:05d}.png"
    Image.fromarray(image).save(root / img_rel)
    lbl = Image.fromarray(label, mode="L").convert("P")
    lbl.putpalette(TOYCITY.palette())
    lbl.save(root / lbl_rel)
    return f"{img_rel} {lbl_rel}\n"


def generate(
    root: str | Path, spec: ToyCitySpec | None = None, progress: bool = True, workers: int | None = None
) -> Path:
    """Write the benchmark under ``root`` (created if needed) and return the path of its metadata file.

    Images are independent (each has its own random stream), so ``workers`` processes (default: one per
    core, at most 4) write them in parallel; the files are the same for any number of workers.
    """
    root = Path(root)
    spec = spec or ToyCitySpec()
    workers = workers or min(4, len(os.sched_getaffinity(0)))
    tasks = []
    for domain in DOMAINS:
        for split in SPLITS:
            (root / domain / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / domain / "labels" / split).mkdir(parents=True, exist_ok=True)
            tasks += [(domain, split, i) for i in range(spec.count(domain, split))]
    columns = [[root] * len(tasks), [spec] * len(tasks), *zip(*tasks)]
    lines: dict[tuple[str, str], list[str]] = {(d, sp): [] for d in DOMAINS for sp in SPLITS}
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")))
            written = pool.map(_write_sample, *columns, chunksize=16)
        else:
            written = map(_write_sample, *columns)
        bar = tqdm(written, total=len(tasks), desc="ToyCity", disable=not progress, leave=False)
        for (domain, split, _), line in zip(tasks, bar):
            lines[domain, split].append(line)
    for (domain, split), mine in lines.items():
        atomic_write_text(list_path(root, domain, split), "".join(mine))
    meta = {
        "name": "toycity",
        "generator_version": GENERATOR_VERSION,
        "spec": spec.to_dict(),
        "protocol": TOYCITY.name,
        "classes": list(TOYCITY.names),
    }
    meta_path = root / "toycity.json"
    # Written last: its presence means the tree is complete.
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    return meta_path


def is_generated(root: str | Path, spec: ToyCitySpec | None = None) -> bool:
    """True when ``root`` holds a complete ToyCity tree (generated with ``spec`` if given)."""
    meta_path = Path(root) / "toycity.json"
    if not meta_path.is_file():
        return False
    meta = json.loads(meta_path.read_text())
    if meta.get("generator_version") != GENERATOR_VERSION:
        return False
    return spec is None or meta.get("spec") == spec.to_dict()


SPLIT_NAMES = {"train": ("target", "train"), "val": ("target", "val")} | {
    f"{d}_{s}": (d, s) for d in DOMAINS for s in SPLITS
}
"""The split names of the ``toycity`` dataset: ``train``/``val`` are the target domain's,
``source_train``/``source_val`` the source domain's."""


def toycity_domain(split: str) -> str:
    """The ToyCity domain of a split name (``source_train`` -> source, ``train`` -> target)."""
    return SPLIT_NAMES.get(split, ("source",))[0]


def data_spec(root: str | Path, domain: str = "source") -> dict | None:
    """What identifies the data a model was trained on, beyond its path (None for datasets other than
    ToyCity): for a ToyCity tree, the generator version, the world seed, the image size and split sizes of
    ``domain``, and a digest of that domain's layout and appearance styles. The variants of the suite share
    one source domain, so a source model serves every variant of its world."""
    meta = Path(root) / "toycity.json"
    if not meta.is_file():
        return None
    d = json.loads(meta.read_text())
    return toycity_signature(ToyCitySpec(**d["spec"]), domain, d.get("generator_version"))


def toycity_signature(spec: ToyCitySpec, domain: str, generator_version: int | None = None) -> dict:
    """The identity of one domain of a ToyCity world (see :func:`data_spec`)."""
    style = repr(VARIANTS[spec.variant].style(domain))
    return {
        "generator_version": GENERATOR_VERSION if generator_version is None else generator_version,
        "domain": domain,
        "seed": spec.seed,
        "size": [spec.height, spec.width],
        "counts": [spec.count(domain, "train"), spec.count(domain, "val")],
        "style": hashlib.sha1(style.encode()).hexdigest(),
    }
