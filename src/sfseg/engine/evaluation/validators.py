"""Label-free model selection: validators computed from a model and unlabelled target images only.

Source-free adaptation has no target labels, yet rounds, recipes and checkpoints must be chosen. Each
validator here scores a model from its predictions (and, for SND, its features) on the target train
images, streamed batch by batch with bounded memory (pixels are sampled at fixed, seeded positions per
image). Higher is better for every score. Which one to trust for segmentation is measured on ToyCity in
docs/RESULTS.md ("Choosing without target labels").

Validators (the registry ``VALIDATORS``):

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

import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.adapt.norm import set_bn_mode
from sfseg.data.classes import ClassProtocol
from sfseg.engine.evaluation.inference import Inference, batch_size_hw
from sfseg.engine.runtime.guard import NonFiniteOutput
from sfseg.engine.runtime.loading import derived_seed, sharded_loader
from sfseg.models.checkpoint import InferenceSettings
from sfseg.models.ops import argmax_classes
from sfseg.registry import VALIDATORS

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


@VALIDATORS.register()
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


@VALIDATORS.register()
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


DEFAULT_VALIDATOR = "bnm"
"""The validator a run without target labels scores its rounds with, when its recipe names none: the one
that lost the least mIoU against the best round in the label-free selection study (docs/RESULTS.md)."""


@VALIDATORS.register()
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


@VALIDATORS.register()
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


@VALIDATORS.register()
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


@VALIDATORS.register()
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


def check_validator(name: str) -> None:
    VALIDATORS.check(name)


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
    settings: InferenceSettings | None = None,
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
        settings: how the models are run (input size, resizing, upsampling: the run's inference).
        max_images: evenly spaced images of the split to use (0 = all).
        keep_predictions: also return this model's argmax predictions per batch (uint8, on the host).
    """
    references = references or {}
    vals = [VALIDATORS.get(n)(protocol.num_classes) for n in validators]
    needed = {v.reference for v in vals if v.reference}
    indices = list(range(len(dataset)))
    if max_images and max_images < len(indices):
        indices = [int(round(i)) for i in np.linspace(0, len(dataset) - 1, max_images)]
    sub = _Subset(dataset, indices)

    def inference(m: nn.Module) -> Inference:
        return Inference.from_settings(m, normalization, settings or InferenceSettings())

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
                    raw, feats = model.forward_with_features(x)  # the model contract's features
                else:
                    raw, feats = model(x), None
            logits = inf.label_logits(raw, size)
            if not bool(torch.isfinite(logits).all()):
                raise NonFiniteOutput("label-free validator scoring")
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
