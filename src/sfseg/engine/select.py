"""Label-free model selection: validators computed from a model and unlabelled target images only.

Source-free adaptation has no target labels, yet rounds, recipes and checkpoints must be chosen. Each
validator here scores a model from its predictions (and, for SND, its features) on the target train
images, streamed batch by batch with bounded memory (pixels are sampled at fixed, seeded positions per
image). Higher is better for every score. Which one to trust for segmentation is measured on ToyCity in
docs/RESULTS.md ("Choosing without target labels").

Validators (``VALIDATORS``):

* ``entropy``: minus the mean per-pixel prediction entropy (confident models score high). Morerio et al.,
  "Minimal-Entropy Correlation Alignment for Unsupervised Deep Domain Adaptation", ICLR 2018.
* ``info_max``: information maximisation, the entropy of the mean prediction (diversity) minus the mean
  entropy. Used as a validator by Musgrave et al., "Benchmarking Validation Methods for Unsupervised
  Domain Adaptation", 2022; the objective of SHOT (Liang et al., ICML 2020).
* ``bnm``: the nuclear norm of the (sampled pixels x classes) prediction matrix, divided by the number of
  pixels: confident *and* diverse predictions score high. Cui et al., "Towards Discriminability and
  Diversity: Batch Nuclear-norm Maximization under Label Insufficient Situations", CVPR 2020.
* ``snd``: soft neighbourhood density of sampled pixel features (the classifier's input, L2-normalised):
  the mean entropy of each pixel's softmax over its similarities to the others (temperature 0.05).
  Saito et al., "Tune it the Right Way: Unsupervised Validation of Domain Adaptation via Soft
  Neighborhood Density", ICCV 2021.
* ``agreement``: the share of pixels whose argmax agrees with the previous round's model (round 0: with
  the source model): a stable model scores high.
* ``share_stability``: minus the mean over classes of ``|log(share_c / share0_c)|``, the class shares of
  the argmax predictions against the source model's: a class swallowed by the others (winner-takes-all)
  costs a lot.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.adapt.bn import set_bn_mode
from sfseg.data.classes import ClassProtocol
from sfseg.engine.inference import Inference, batch_size_hw
from sfseg.engine.loading import derived_seed, sharded_loader
from sfseg.models.ops import argmax_classes

EPS = 1e-8


class Validator:
    """Accumulates a score over batches. ``update`` gets, per batch, the label-resolution logits, the
    indices of the sampled pixels, the sampled features (or None), and the reference model's argmax
    predictions (or None)."""

    name = ""
    needs_features = False
    reference: str | None = None  # "previous" (the previous round's model) or "source"

    def __init__(self, num_classes: int):
        self.num_classes = num_classes

    def update(self, logits, samples, features, reference) -> None:
        raise NotImplementedError

    def score(self) -> float:
        raise NotImplementedError


class EntropyValidator(Validator):
    name = "entropy"

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.total, self.n = 0.0, 0

    def update(self, logits, samples, features, reference) -> None:
        logp = logits.float().log_softmax(1)
        self.total += float(-(logp.exp() * logp).sum(1).sum())
        self.n += logits.shape[0] * logits.shape[2] * logits.shape[3]

    def score(self) -> float:
        return -self.total / max(self.n, 1)


class InfoMaxValidator(Validator):
    name = "info_max"

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.entropy = EntropyValidator(num_classes)
        self.mean = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, logits, samples, features, reference) -> None:
        self.entropy.update(logits, samples, features, reference)
        self.mean += logits.float().softmax(1).sum((0, 2, 3)).double().cpu()

    def score(self) -> float:
        p = self.mean / self.mean.sum().clamp(min=EPS)
        diversity = float(-(p * (p + EPS).log()).sum())
        return diversity + self.entropy.score()


class BNMValidator(Validator):
    name = "bnm"

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.rows: list[torch.Tensor] = []

    def update(self, logits, samples, features, reference) -> None:
        p = logits.float().softmax(1).flatten(2)  # (B, C, HW)
        self.rows.append(torch.cat([p[b][:, samples[b]].T for b in range(p.shape[0])]).cpu())

    def score(self) -> float:
        m = torch.cat(self.rows).double()
        return float(torch.linalg.matrix_norm(m, ord="nuc")) / m.shape[0]


class SNDValidator(Validator):
    name = "snd"
    needs_features = True
    temperature = 0.05

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.rows: list[torch.Tensor] = []

    def update(self, logits, samples, features, reference) -> None:
        self.rows.append(features.float().cpu())

    def score(self) -> float:
        f = torch.nn.functional.normalize(torch.cat(self.rows), dim=1)
        sim = f @ f.T / self.temperature
        sim.fill_diagonal_(-math.inf)
        p = sim.softmax(1)
        return float(-(p * (p + EPS).log()).sum(1).mean())


class AgreementValidator(Validator):
    name = "agreement"
    reference = "previous"

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.same, self.n = 0, 0

    def update(self, logits, samples, features, reference) -> None:
        if reference is None:
            return
        self.same += int((argmax_classes(logits) == reference.to(logits.device)).sum())
        self.n += logits.shape[0] * logits.shape[2] * logits.shape[3]

    def score(self) -> float:
        return self.same / self.n if self.n else float("nan")


class ShareStabilityValidator(Validator):
    name = "share_stability"
    reference = "source"

    def __init__(self, num_classes: int):
        super().__init__(num_classes)
        self.counts = torch.zeros(num_classes, dtype=torch.float64)
        self.ref = torch.zeros(num_classes, dtype=torch.float64)

    def update(self, logits, samples, features, reference) -> None:
        c = self.num_classes
        self.counts += torch.bincount(argmax_classes(logits).reshape(-1), minlength=c)[:c].double().cpu()
        if reference is not None:
            self.ref += torch.bincount(reference.reshape(-1).long(), minlength=c)[:c].double().cpu()

    def score(self) -> float:
        if not self.ref.sum():
            return 0.0
        s, s0 = self.counts / self.counts.sum(), self.ref / self.ref.sum()
        present = s0 > 0
        return float(-((s[present] + 1e-4) / (s0[present] + 1e-4)).log().abs().mean())


VALIDATORS: dict[str, type[Validator]] = {
    v.name: v
    for v in (
        EntropyValidator,
        InfoMaxValidator,
        BNMValidator,
        SNDValidator,
        AgreementValidator,
        ShareStabilityValidator,
    )
}


def check_validator(name: str) -> None:
    from sfseg.errors import ConfigError

    if name not in VALIDATORS:
        raise ConfigError(f"unknown validator {name!r}; validators: {sorted(VALIDATORS)}")


def _sample(b_index: int, hw: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(derived_seed(seed, 3, b_index))
    return torch.randperm(hw, generator=g)[: min(k, hw)]


@torch.no_grad()
def score_model(
    model: nn.Module,
    normalization,
    dataset: Dataset,
    protocol: ClassProtocol,
    validators: list[str],
    references: dict[str, nn.Module | list[torch.Tensor] | None] | None = None,
    data_cfg=None,
    batch_size: int = 8,
    max_images: int = 0,
    pixels_per_image: int = 64,
    features_per_image: int = 16,
    progress: bool = False,
    keep_predictions: bool = False,
) -> dict[str, float] | tuple[dict[str, float], list[torch.Tensor]]:
    """Score ``model`` with each validator on ``dataset`` (its images only; no label is read).

    Models run in eval mode (BN running statistics: the model as it would be deployed).

    Args:
        references: ``{"previous": ..., "source": ...}`` for the validators that compare: a model, or its
            argmax predictions per batch as returned with ``keep_predictions`` (so a sequence of
            checkpoints is run once each).
        data_cfg: the run's :class:`~sfseg.adapt.config.DataConfig` (input size, resizing, upsampling).
        max_images: evenly spaced images of the split to use (0 = all).
        keep_predictions: also return this model's argmax predictions per batch (uint8, on the host).
    """
    references = references or {}
    vals = [VALIDATORS[n](protocol.num_classes) for n in validators]
    needed = {v.reference for v in vals if v.reference}
    indices = list(range(len(dataset)))
    if max_images and max_images < len(indices):
        indices = [int(round(i)) for i in np.linspace(0, len(dataset) - 1, max_images)]
    sub = _Subset(dataset, indices)

    def inference(m: nn.Module) -> Inference:
        if data_cfg is None:
            return Inference(m, normalization)
        return Inference.from_config(m, normalization, data_cfg)

    inf = inference(model)
    ref_models = {k: m for k, m in references.items() if isinstance(m, nn.Module) and k in needed}
    ref_preds = {k: p for k, p in references.items() if isinstance(p, list) and k in needed}
    refs = {k: inference(m) for k, m in ref_models.items()}
    modes = [(m, m.training) for m in [model, *ref_models.values()]]
    for m, _ in modes:
        m.eval()
        set_bn_mode(m, "frozen")
    kept: list[torch.Tensor] = []
    try:
        loader = sharded_loader(inf.view(sub), batch_size)
        for b, batch in enumerate(tqdm(loader, desc="validators", disable=not progress, leave=False)):
            size = batch_size_hw(batch)
            x = inf.network_input(batch["image"])
            with inf.autocast():
                if any(v.needs_features for v in vals):
                    raw, feats = model.forward_with_features(x)
                else:
                    raw, feats = model(x), None
            logits = inf.label_logits(raw, size)
            if keep_predictions:
                kept.append(argmax_classes(logits).to(torch.uint8).cpu())
            hw = size[0] * size[1]
            samples = [_sample(int(i), hw, pixels_per_image) for i in batch["index"]]
            feat_rows = None
            if feats is not None:
                f = feats.float().flatten(2)  # (B, D, hf * wf)
                picks = [_sample(int(i) + 7919, f.shape[2], features_per_image) for i in batch["index"]]
                feat_rows = torch.cat([f[b_][:, picks[b_].to(f.device)].T for b_ in range(f.shape[0])])
            ref_now = {k: argmax_classes(r.logits(batch["image"], size)) for k, r in refs.items()}
            ref_now.update({k: p[b] for k, p in ref_preds.items()})
            for v in vals:
                ref = ref_now.get(v.reference) if v.reference else None
                v.update(logits, [s_.to(logits.device) for s_ in samples], feat_rows, ref)
    finally:
        for m, training in modes:
            m.train(training)
    scores = {v.name: v.score() for v in vals}
    return (scores, kept) if keep_predictions else scores


class _Subset(Dataset):
    def __init__(self, base: Dataset, indices: list[int]):
        self.base, self.indices = base, indices
        self.has_labels = False

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> torch.Tensor:
        return self.base.image(self.indices[i])


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(round, path) of a run directory's models: the run's starting checkpoint as round -1, then every
    ``round_<r>.pt``."""
    from sfseg.adapt.config import AdaptConfig
    from sfseg.config import load_config
    from sfseg.engine.rundir import RunDir

    run = RunDir(run_dir)
    cfg = load_config(AdaptConfig, run.config)
    start = Path(cfg.checkpoint)
    if cfg.init_from:
        start = run.stage(cfg.init_from.rsplit("/", 1)[-1]).final
    return [(-1, start), *run.round_checkpoints()]


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
    from sfseg.adapt.config import AdaptConfig
    from sfseg.config import load_config
    from sfseg.data.registry import build_dataset, dataset_protocol
    from sfseg.models import load_checkpoint

    run_dir = Path(run_dir)
    cfg = load_config(AdaptConfig, run_dir / "config.yaml")
    protocol = dataset_protocol(cfg.data.dataset, cfg.data.protocol)
    data = build_dataset(cfg.data.dataset, cfg.data.root, cfg.data.train_split, protocol.name, labels=False)
    ckpts = run_checkpoints(run_dir)
    miou = _logged_miou(run_dir)
    source = load_checkpoint(ckpts[0][1], family=cfg.checkpoint_family, classes=protocol.name)
    out = []
    source_preds = previous_preds = None
    for r, path in ckpts:
        ck = source if r == -1 else load_checkpoint(path)
        # Each checkpoint runs once: the source model's and the previous round's predictions are kept.
        scores, preds = score_model(
            ck.build(),
            ck.normalization,
            data,
            protocol,
            validators,
            {"previous": previous_preds, "source": source_preds},
            cfg.data,
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
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        r = json.loads(line)
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
    from scipy.stats import kendalltau, spearmanr

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
