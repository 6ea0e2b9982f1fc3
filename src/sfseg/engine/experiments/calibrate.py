"""``sfseg toycity calibrate``: measure how hard each ToyCity variant's shift is.

The contract every variant must meet (over every seed): source model on source val >= 85 mIoU; oracle
(same network and recipe trained on target labels) >= 75; source-only on target val in [25, 55]; AdaBN
closes at most 40 % of the gap between source-only and oracle (a shift that only moves normalisation
statistics would be too easy). Each variant also has its own property, measured here: for
``small_objects`` (the majority-biased variant), on every seed at least three minority classes receive at
most half their true share of the source model's target predictions.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from sfseg.adapt.norm import adabn
from sfseg.data.classes import TOYCITY
from sfseg.data.toycity import ToyCitySpec
from sfseg.data.toycity.dataset import toycity
from sfseg.engine.evaluation.evaluate import evaluate
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.experiments.bench import ensure_world, source_config, train_or_reuse_source, world_root
from sfseg.engine.experiments.jobs import Job, run_jobs
from sfseg.engine.reporting.studies import format_mean_std
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.engine.training.labelling import class_shares
from sfseg.engine.training.recipe import config_dir
from sfseg.fileio import Place, atomic_write_text, check_outputs
from sfseg.models import load_checkpoint

BIASED = {"small_objects": 3}  # variant -> minority classes that must get at most half their share


def class_frequencies(root: Path, split: str) -> np.ndarray:
    """(C,) share of the labelled pixels of a ToyCity split per class (fractions)."""
    data = toycity(root, split, TOYCITY)
    counts = np.zeros(TOYCITY.num_classes, np.int64)
    for i in range(len(data)):
        counts += np.bincount(data.label(i).numpy().ravel(), minlength=256)[: TOYCITY.num_classes]
    return counts / counts.sum()


@torch.no_grad()
def measure_source(root: Path, checkpoint: Path) -> dict:
    """The source model on the target: source-only and AdaBN target-val scores, and each class's share of
    its target-train predictions (BN statistics of the source, as deployed) against the true share."""
    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build()
    inf = Inference(model, ckpt.normalization)
    val, train = toycity(root, "val", TOYCITY), toycity(root, "train", TOYCITY, labels=False)
    so = evaluate(inf, val, TOYCITY)
    model.eval()
    shares = class_shares(inf, train, TOYCITY, 16)["pred_share"]
    true = class_frequencies(root, "train")
    adabn(model, (inf.network_input(b["image"]) for b in sharded_loader(inf.view(train), 16)))
    ab = evaluate(inf, val, TOYCITY)
    ratio = {n: shares[n] / true[i] for i, n in enumerate(TOYCITY.names)}
    minority = [TOYCITY.names[i] for i in TOYCITY.minority]
    return {
        "source_only": so,
        "adabn": ab,
        "pred_share": shares,
        "true_share": dict(zip(TOYCITY.names, true.tolist())),
        "pred_over_true": ratio,
        "minority_at_most_half": [n for n in minority if ratio[n] <= 0.5],
    }


def calibrate(
    variants: list[str],
    worlds: list[int],
    seeds: list[int],
    out: str | Path,
    data_dir: str | Path = "data",
    report: str | Path | None = None,
    source_overrides: list[str] | None = None,
    jobs: int = 1,
    base: ToyCitySpec | None = None,
) -> dict:
    """Train source and oracle models per (variant, world, seed), measure them, write
    ``<out>/calibration.json`` and ``<out>/toycity.md`` (and ``report`` too when given).

    Source models land where ``sfseg bench --variants`` expects them (``<out>/sources-w<world>/``: the
    variants share one source domain), so a bench with the same ``out`` reuses them; oracles go to
    ``<out>/<variant>-w<world>/``.
    """
    t0 = time.time()
    out = Path(out)
    configs = config_dir(None)
    check_outputs(
        [Place("--out", out), Place("--report", report)],
        [Place(f"world {v}-w{w}", world_root(data_dir, v, w), tree=True) for v in variants for w in worlds],
    )
    if source_overrides:
        source_config(".", out, 0, configs, source_overrides)  # a bad override, before any training
    job_list, roots, source_keys = [], {}, {}
    for v in variants:
        for w in worlds:
            name = f"{v}-w{w}"
            roots[name] = ensure_world(data_dir, v, w, base)
            for s in seeds:
                # The variants share one source domain: one source model per (world, seed).
                src = source_config(roots[name], out / f"sources-w{w}", s, configs, source_overrides)
                ora = source_config(roots[name], out / name, s, configs, source_overrides, oracle=True)
                skey = f"source:{src.out}"
                if skey not in source_keys.values():
                    job_list.append(Job(skey, train_or_reuse_source, (src,)))
                source_keys[name, s] = skey
                job_list += [
                    Job(f"{name}/oracle/seed{s}", train_or_reuse_source, (ora,)),
                    Job(f"{name}/measure/seed{s}", measure_source, (roots[name], Path(src.out)), [skey]),
                ]
    done = run_jobs(job_list, jobs, log=lambda x: print(x, flush=True))
    numbers = {"seeds": seeds, "seconds": None, "worlds": {}}
    for name in roots:
        w = {
            "source_on_source_val": [done[source_keys[name, s]]["val_miou"] for s in seeds],
            "oracle_on_target_val": [done[f"{name}/oracle/seed{s}"]["val_miou"] for s in seeds],
            "measure": [done[f"{name}/measure/seed{s}"] for s in seeds],
        }
        so = [m["source_only"]["miou"] for m in w["measure"]]
        ab = [m["adabn"]["miou"] for m in w["measure"]]
        w["source_only_on_target_val"], w["adabn_on_target_val"] = so, ab
        w["adabn_gap_closed_pct"] = [
            (a - s) / (o - s) * 100 for a, s, o in zip(ab, so, w["oracle_on_target_val"])
        ]
        w["class_share_pct"] = {
            d: dict(zip(TOYCITY.names, (100 * class_frequencies(roots[name], split)).round(3).tolist()))
            for d, split in (("source", "source_train"), ("target", "train"))
        }
        numbers["worlds"][name] = w
    numbers["seconds"] = round(time.time() - t0)
    atomic_write_text(out / "calibration.json", json.dumps(numbers, indent=1))
    table = calibration_tables(numbers)
    print(table)
    command = (
        f"sfseg toycity calibrate --variants {' '.join(variants)} --worlds {' '.join(map(str, worlds))} "
        f"--seeds {' '.join(map(str, seeds))} --out {out}"
    )
    _write_report(out / "toycity.md", table, command, numbers)
    if report:
        _write_report(Path(report), table, command, numbers)
    return numbers


def contract(w: dict, variant: str) -> list[tuple[str, str, str, bool | None]]:
    """(measure, value, target, met) rows of one world."""
    rows = [
        (
            "source model on source val",
            format_mean_std(w["source_on_source_val"]),
            ">= 85",
            min(w["source_on_source_val"]) >= 85,
        ),
        (
            "oracle on target val",
            format_mean_std(w["oracle_on_target_val"]),
            ">= 75",
            min(w["oracle_on_target_val"]) >= 75,
        ),
        (
            "source-only on target val",
            format_mean_std(w["source_only_on_target_val"]),
            "25 .. 55",
            all(25 <= s <= 55 for s in w["source_only_on_target_val"]),
        ),
        ("AdaBN on target val", format_mean_std(w["adabn_on_target_val"]), "", None),
        (
            "gap closed by AdaBN (%)",
            format_mean_std(w["adabn_gap_closed_pct"]),
            "<= 40",
            max(w["adabn_gap_closed_pct"]) <= 40,
        ),
    ]
    counts = [len(m["minority_at_most_half"]) for m in w["measure"]]
    need = BIASED.get(variant)
    rows.append(
        (
            "minority classes at <= 1/2 their true share of the source model's predictions (per seed)",
            ", ".join(map(str, counts)),
            f">= {need} on every seed" if need else "",
            (min(counts) >= need) if need else None,
        )
    )
    return rows


def calibration_tables(numbers: dict) -> str:
    lines = []
    for name, w in numbers["worlds"].items():
        variant = name.rsplit("-w", 1)[0]
        lines += [f"#### {name}", "", "| measure | value | target | met |", "|---|---:|---|---|"]
        lines += [
            f"| {a} | {b} | {c} | {'' if d is None else ('yes' if d else '**no**')} |"
            for a, b, c, d in contract(w, variant)
        ]
        ratios = {n: np.mean([m["pred_over_true"][n] for m in w["measure"]]) for n in TOYCITY.names}
        lines += [
            "",
            "| class | source share (%) | target share (%) | source model's predictions / true share |",
            "|---|---:|---:|---:|",
        ]
        lines += [
            f"| {n} | {w['class_share_pct']['source'][n]:.2f} | {w['class_share_pct']['target'][n]:.2f} | "
            f"{ratios[n]:.2f} |"
            for n in TOYCITY.names
        ]
        lines.append("")
    return "\n".join(lines)


def _write_report(path: Path, table: str, command: str, numbers: dict) -> None:
    marker = "<!-- calibration -->"
    block = (
        f"{marker}\nMeasured with `{command}` ({numbers['seconds']} s). Per-seed numbers: "
        f"`calibration.json` in that directory.\n\n{table}\n{marker}"
    )
    text = path.read_text() if path.is_file() else ""
    if text.count(marker) == 2:
        head, _, rest = text.partition(marker)
        _, _, tail = rest.partition(marker)
        text = head + block + tail
    else:
        text = (text + "\n\n" if text else "# ToyCity calibration\n\n") + block + "\n"
    atomic_write_text(path, text)
