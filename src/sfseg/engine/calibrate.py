"""``sfseg toycity calibrate``: measure how hard ToyCity's shift is and write ``docs/toycity.md``.

Targets (the benchmark's contract): source model on source val >= 85 mIoU; oracle (same network trained
on target labels) >= 75; source-only on target val in [25, 55]; AdaBN closes at most 40 % of the gap
between source-only and oracle (a shift that only moves normalisation statistics would be too easy).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sfseg.config import load_config
from sfseg.data.classes import TOYCITY
from sfseg.data.datasets import check_toycity_root
from sfseg.engine.bench import run_bench
from sfseg.engine.recipes import config_dir
from sfseg.engine.train_source import SourceConfig, train_source
from sfseg.models import load_checkpoint


def class_frequencies(root: Path, domain: str, split: str) -> np.ndarray:
    """Share of labelled pixels per class, in %."""
    counts = np.zeros(256, np.int64)
    for line in (root / f"{domain}_{split}.txt").read_text().splitlines():
        counts += np.bincount(np.asarray(Image.open(root / line.split()[1])).ravel(), minlength=256)
    c = counts[: TOYCITY.num_classes]
    return 100 * c / c.sum()


def calibrate(
    data_root: str | Path,
    out: str | Path,
    seeds: list[int],
    report: str | Path | None,
    source_overrides: list[str] | None = None,
) -> dict:
    """Train source and oracle models per seed, measure source-only and AdaBN, write the report to
    ``<out>/toycity.md`` (and to ``report`` too when given, e.g. docs/toycity.md).

    ``out`` is shared with ``sfseg bench`` by default, so the source models are trained once.
    """
    t0 = time.time()
    root = check_toycity_root(data_root)
    out = Path(out)
    configs = config_dir(None)
    bench = run_bench(
        root, out, methods=["source_only", "adabn"], seeds=seeds, source_overrides=source_overrides
    )
    source_val, oracle = [], []
    for seed in seeds:
        prov = load_checkpoint(out / f"source_seed{seed}.pt").provenance
        source_val.append(prov["source_val_miou"])
        cfg = load_config(
            SourceConfig,
            configs / "oracle.yaml",
            [
                f"data.root={root}",
                f"seed={seed}",
                f"out={out / f'oracle_seed{seed}.pt'}",
                *(source_overrides or []),
            ],
        )
        oracle.append(train_source(cfg)["val_miou"])
    so = [r["miou"] for r in bench["results"]["source_only"]]
    ab = [r["miou"] for r in bench["results"]["adabn"]]
    gap_closed = [(a - s) / (o - s) * 100 for a, s, o in zip(ab, so, oracle)]
    numbers = {
        "seeds": seeds,
        "source_on_source_val": source_val,
        "oracle_on_target_val": oracle,
        "source_only_on_target_val": so,
        "adabn_on_target_val": ab,
        "adabn_gap_closed_pct": gap_closed,
        "seconds": round(time.time() - t0),
    }
    freq = {d: class_frequencies(root, d, "train") for d in ("source", "target")}
    numbers["class_share_pct"] = {d: dict(zip(TOYCITY.names, f.round(3).tolist())) for d, f in freq.items()}
    (out / "calibration.json").write_text(json.dumps(numbers, indent=1))

    def ms(v: list[float]) -> str:
        return f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

    checks = [
        ("source model on source val", ms(source_val), ">= 85", min(source_val) >= 85),
        ("oracle on target val", ms(oracle), ">= 75", min(oracle) >= 75),
        ("source-only on target val", ms(so), "25 .. 55", all(25 <= s <= 55 for s in so)),
        ("AdaBN on target val", ms(ab), "", None),
        ("gap closed by AdaBN (%)", ms(gap_closed), "<= 40", max(gap_closed) <= 40),
    ]
    numbers["checks"] = {a: d for a, _, _, d in checks if d is not None}
    lines = ["| measure | mIoU | target | met |", "|---|---:|---|---|"]
    lines += [
        f"| {a} | {b} | {c} | {'' if d is None else ('yes' if d else '**no**')} |" for a, b, c, d in checks
    ]
    lines += [
        "",
        "Class shares of the train labels (% of pixels):",
        "",
        "| class | source | target |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {n} | {freq['source'][i]:.2f} | {freq['target'][i]:.2f} |" for i, n in enumerate(TOYCITY.names)
    ]
    table = "\n".join(lines)
    print(table)
    _write_report(out / "toycity.md", table, seeds, root, numbers)
    if report:
        _write_report(Path(report), table, seeds, root, numbers)
    return numbers


def _write_report(path: Path, table: str, seeds: list[int], root: Path, numbers: dict) -> None:
    marker = "<!-- calibration -->"
    block = (
        f"{marker}\nMeasured with "
        f"`sfseg toycity calibrate --data {root} --seeds {' '.join(map(str, seeds))}` "
        f"({numbers['seconds']} s on a 2-core CPU). Per-seed numbers: `calibration.json` in the run "
        f"directory.\n\n{table}\n{marker}"
    )
    text = path.read_text() if path.is_file() else ""
    if text.count(marker) == 2:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + block + tail
    else:
        text = (text + "\n\n" if text else "# ToyCity calibration\n\n") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
