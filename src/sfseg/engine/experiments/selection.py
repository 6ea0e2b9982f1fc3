"""Choosing without target labels, over finished runs: every checkpoint of a run scored by the label-free
validators (``sfseg select``), and the study of how well each validator tracks target mIoU.

The validators themselves are in :mod:`sfseg.engine.evaluation.validators`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sfseg.config import load_config
from sfseg.data.registry import build_dataset
from sfseg.engine.evaluation.inference import inference_settings
from sfseg.engine.evaluation.validators import score_model
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import read_records
from sfseg.engine.training.recipe import AdaptConfig
from sfseg.errors import RunDirError
from sfseg.models import load_checkpoint, load_for_data


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(round, path) of a run directory's models: the run's starting checkpoint as round -1, then every
    ``round_<r>.pt`` the run wrote.

    Raises:
        SfsegError: a round the run logged as finished has no checkpoint any more (deleted?): scoring the
            rest would let the starting model win by default, so sfseg says which are missing instead.
    """
    run = RunDir(run_dir)
    cfg = load_config(AdaptConfig, run.check(run.config))
    start = Path(cfg.checkpoint)
    if cfg.init_from:
        start = run.stage(cfg.init_from.rsplit("/", 1)[-1]).final
    rounds = run.round_checkpoints()
    finished = sorted({r["round"] for r in read_records(run.metrics, run.path) if r["phase"] == "round"})
    missing = [r for r in finished if r not in dict(rounds)]
    if missing:
        names = ", ".join(run.round_checkpoint(r).name for r in missing)
        have = ", ".join(p.name for _, p in rounds) or "none"
        raise RunDirError(
            f"{run_dir}: the run finished round(s) {missing} but their checkpoints are missing ({names}; "
            f"present: {have}); without them the choice would be among the rest only. Restore them, or "
            "run the recipe again"
        )
    return [(-1, start), *rounds]


def score_run(
    run_dir: str | Path,
    validators: list[str],
    max_images: int = 100,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Score every checkpoint of a finished run (its starting model and every round) on its target train
    split, without reading labels. Returns one record per checkpoint (with the run's logged target-val
    mIoU for it, where the run scored one, for studies of the validators)."""
    run_dir = Path(run_dir)
    cfg = load_config(AdaptConfig, RunDir(run_dir).check(RunDir(run_dir).config))
    ckpts = run_checkpoints(run_dir)
    source, protocol = load_for_data(ckpts[0][1], cfg.data.dataset, cfg.data.protocol, cfg.checkpoint_family)
    data = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, protocol, labels=False)
    miou = _logged_miou(run_dir)
    out = []
    source_preds = previous_preds = None
    # Every checkpoint is seen the way the run saw it (its data pipeline and memory layout).
    settings = inference_settings(cfg.data, cfg.runtime, torch.device("cpu"))
    for r, path in ckpts:
        ck = source if r == -1 else load_checkpoint(path, root=run_dir)
        # Each checkpoint runs once: the source model's and the previous round's predictions are kept.
        scores, preds = score_model(
            ck.build(),
            ck.normalization,
            data,
            protocol,
            validators,
            {"previous": previous_preds, "source": source_preds},
            settings,
            batch_size=cfg.runtime.eval_batch_size,
            max_images=max_images,
            progress=progress,
            keep_predictions=True,
        )
        if r == -1:
            source_preds = preds
            if "share_stability" in scores:
                scores["share_stability"] = 0.0  # the source model against itself
        out.append(
            {
                "run": str(run_dir),
                "method": cfg.name,
                "seed": cfg.seed,
                "round": r,
                "checkpoint": str(path),
                "scores": scores,
                "target_val_miou": miou.get(r),
            }  # fmt: skip
        )
        if log:
            log(f"{run_dir} round {r}: " + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
        previous_preds = preds
    return out


def _logged_miou(run_dir: Path) -> dict[int, float]:
    """The target-val mIoU the run logged after each round (round -1: its starting model)."""
    out = {}
    run = RunDir(run_dir)
    for r in read_records(run.metrics, run.path):
        if r.get("phase") == "source_model":
            out[-1] = r["miou"]
        elif r.get("phase") == "round":
            out[r["round"]] = r["miou"]
    return out


def ranked_table(records: list[dict], validator: str) -> str:
    """Checkpoints ranked by one validator (best first), as markdown."""
    rows = sorted(records, key=lambda r: -_finite(r["scores"][validator]))
    lines = [f"| rank | {validator} | run | round |", "|---:|---:|---|---:|"]
    for i, r in enumerate(rows):
        lines.append(f"| {i + 1} | {r['scores'][validator]:.4f} | {r['run']} | {r['round']} |")
    return "\n".join(lines)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def validator_study(records: list[dict], validators: list[str]) -> dict:
    """How well each validator tracks target-val mIoU, from checkpoint records with a logged mIoU.

    For each validator: Spearman and Kendall rank correlation with mIoU over all checkpoints and within
    each method (pooled over its seeds and worlds; the mean over methods is reported), and the mIoU lost
    by taking, in each run, the checkpoint the validator prefers instead of the best one, next to the
    loss of always taking the last round.
    """
    from scipy.stats import kendalltau, spearmanr  # only this study needs SciPy

    def corr(fn, a, b) -> float:
        # Undefined (NaN) for fewer than 3 points or a constant input.
        if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
            return float("nan")
        return float(fn(a, b).statistic)

    def mean(v: list[float]) -> float:
        v = [x for x in v if math.isfinite(x)]
        return float(np.mean(v)) if v else float("nan")

    scored = [r for r in records if r.get("target_val_miou") is not None]
    runs: dict[str, list[dict]] = {}
    for r in scored:
        runs.setdefault(r["run"], []).append(r)
    by_method: dict[str, list[dict]] = {}
    for r in scored:
        by_method.setdefault(r["method"], []).append(r)
    best = {k: max(x["target_val_miou"] for x in v) for k, v in runs.items()}
    last_lost = [best[k] - max(v, key=lambda x: x["round"])["target_val_miou"] for k, v in runs.items()]
    out = {
        "checkpoints": len(scored),
        "runs": len(runs),
        "last_round_lost": float(np.mean(last_lost)),
        "validators": {},
    }
    for name in validators:
        pairs = [
            (x["scores"][name], x["target_val_miou"]) for x in scored if math.isfinite(x["scores"][name])
        ]
        s, m = zip(*pairs) if pairs else ((), ())
        within_s, within_k = [], []
        for rows in by_method.values():
            rows = [x for x in rows if math.isfinite(x["scores"][name])]
            a = [x["scores"][name] for x in rows]
            b = [x["target_val_miou"] for x in rows]
            within_s.append(corr(spearmanr, a, b))
            within_k.append(corr(kendalltau, a, b))
        lost = []
        for k, v in runs.items():
            cand = [x for x in v if math.isfinite(x["scores"][name])]
            if cand:
                pick = max(cand, key=lambda x: x["scores"][name])
                lost.append(best[k] - pick["target_val_miou"])
        out["validators"][name] = {
            "spearman_all": corr(spearmanr, list(s), list(m)),
            "kendall_all": corr(kendalltau, list(s), list(m)),
            "spearman_within_method": mean(within_s),
            "kendall_within_method": mean(within_k),
            "miou_lost_vs_best": mean(lost),
            "miou_lost_vs_last_round": mean(lost) - out["last_round_lost"] if lost else float("nan"),
        }
    return out


def study_table(study: dict) -> str:
    """The validator study as markdown (best first by mIoU lost)."""
    lines = [
        f"{study['checkpoints']} checkpoints of {study['runs']} runs; always taking the last round loses "
        f"{study['last_round_lost']:.2f} mIoU against the best checkpoint of each run.",
        "",
        "| validator | Spearman (all) | Kendall (all) | Spearman (within method) | Kendall (within method) "
        "| mIoU lost vs best | vs last round |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    items = sorted(study["validators"].items(), key=lambda kv: kv[1]["miou_lost_vs_best"])
    for name, v in items:
        cells = [
            f"{v['spearman_all']:.2f}",
            f"{v['kendall_all']:.2f}",
            f"{v['spearman_within_method']:.2f}",
            f"{v['kendall_within_method']:.2f}",
            f"{v['miou_lost_vs_best']:.2f}",
            f"{v['miou_lost_vs_last_round']:+.2f}",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
