"""The pseudo-labelling pass of a round, and the label-free class-share probe.

One network forward per image: the first pass (:func:`_forward_pass`) lets the pseudo-labeller observe
each batch's scores and keeps what the selection needs in a :class:`~.label_io.LogitCache` (the network's
output at its own stride and dtype, or the pixels' (score, prediction) when those suffice and are
smaller); the selection pass (:func:`_selection_pass`) reads the cache instead of running the network
again. The labels are therefore exactly those of two full passes over the same batches (BatchNorm in train
mode included: same batches, same statistics; tested against such two passes). The cache is bounded: up
to ``runtime.logit_cache_gib`` in memory (on the GPU when it fits easily), beyond that in a
memory-mapped file in the run directory (about 1 GB per 1,000 Cityscapes images in bfloat16 at 1024x512
input, 2 GB in float32).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.adapt.pseudo_labels import PseudoLabeller, confidence_scores
from sfseg.constants import IGNORE_INDEX
from sfseg.data.classes import ClassProtocol
from sfseg.engine.evaluation.inference import Inference, LabelsView, batch_size_hw
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.loading import read_label_png, sharded_batches, sharded_loader
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.training.label_io import LogitCache, PseudoLabelWriter, submit_copy, to_host
from sfseg.errors import ResumeError
from sfseg.models.ops import argmax_classes, count_into


@dataclass
class LabelPass:
    """One labelling round's inputs and what its first pass leaves for the second.

    Attributes:
        inference, dataset, labeller, protocol: what is labelled, by whom, with which classes.
        batches: this process's batches (index lists).
        batch_size, workers, dist, progress: how the passes run.
        sizes: each batch's label resolution (H, W), from the first pass.
        keep_scores: whether the cache holds (score, prediction) rather than the network's output.
    """

    inference: Inference
    dataset: Dataset
    labeller: PseudoLabeller
    protocol: ClassProtocol
    batches: list[list[int]]
    batch_size: int
    workers: int = 0
    dist: distributed.Dist = distributed.SINGLE
    progress: bool = False
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)
    keep_scores: bool | None = None

    @property
    def has_labels(self) -> bool:
        return getattr(self.dataset, "has_labels", False)

    @property
    def same_pixels(self) -> bool:
        """Direct upsampling: thresholds are measured on the very pixels that are selected, so the scores
        of the first pass serve the second."""
        return self.inference.upsample == "direct"


@torch.no_grad()
def label_round(
    inference: Inference,
    dataset: Dataset,
    labeller: PseudoLabeller,
    out_dir: Path,
    protocol: ClassProtocol,
    batch_size: int,
    workers: int = 0,
    cache_gib: float = 4.0,
    dist: distributed.Dist = distributed.SINGLE,
    progress: bool = False,
    complementary_ranks: list[int] | None = None,
    cache_dir: Path | None = None,
    root: Path | None = None,
) -> tuple[list[Path], dict]:
    """Label the target train set with the current model (its mode is the caller's): one PNG per image.

    Args:
        labeller: this round's pseudo-labeller (its alpha is the round's).
        complementary_ranks: the 1-based ranks negative learning draws its complementary labels from;
            where the split has labels, how often each class is a wrong complementary label is measured
            (see :func:`complementary_counts`). None: not measured.
        cache_dir, root: where the logit cache spills (default ``<out_dir>/../.cache``), and the run
            directory holding it and ``out_dir`` (no link is followed below it).

    Returns:
        the PNG paths (dataset order) and the round statistics: selection share, per-class share of the
        pseudo-labels and of the argmax predictions, the labeller's summary (thresholds), and, where the
        split has labels, the diagnostics of :func:`label_diagnostics`. Counts are summed over processes.
    """
    batches = sharded_batches(len(dataset), batch_size, dist)
    job = LabelPass(inference, dataset, labeller, protocol, batches, batch_size, workers, dist, progress)
    spill = Path(cache_dir) if cache_dir is not None else Path(out_dir).parent / ".cache"
    cache = LogitCache(cache_gib, sum(len(b) for b in batches), spill, root)
    try:
        nl_counts = _forward_pass(job, cache, complementary_ranks if job.has_labels else None)
        inference.check_finite("pseudo-labelling", distributed.all_reduce_sum)
        labeller.reduce(distributed.all_reduce_sum)
        writer = PseudoLabelWriter(out_dir, protocol.palette(), root=root)  # each rank: its own batches
        try:
            counts, total = _selection_pass(job, cache, writer)
        finally:
            writer.close()
    finally:
        cache.close()
    paths = [Path(out_dir) / f"{i:05d}.png" for i in range(len(dataset))]
    return paths, _round_statistics(job, counts, total, nl_counts)


def _forward_pass(job: LabelPass, cache: LogitCache, ranks: list[int] | None) -> torch.Tensor | None:
    """The network's one pass: statistics for the labeller, the cache for the selection pass, and (with
    ``ranks``, on a labelled split) the complementary labels' counts, which need the logits."""
    inference, labeller, device = job.inference, job.labeller, job.inference.device
    nl_counts = None
    if ranks:
        nl_counts = torch.zeros(2, job.protocol.num_classes + 1, dtype=torch.int64, device=device)
    view = inference.view(job.dataset, labels=nl_counts is not None)
    loader = sharded_loader(view, job.batch_size, job.workers, job.dist)
    for b, batch in enumerate(
        tqdm(loader, desc="pseudo-labels: forward", disable=not job.progress, leave=False)
    ):
        raw = inference.raw(batch["image"])
        size = job.sizes[b] = batch_size_hw(batch)
        scores = logits = None
        if labeller.needs_statistics or (job.same_pixels and not labeller.needs_logits):
            logits = inference.threshold_logits(raw, size)
            scores = confidence_scores(logits)
        if labeller.needs_statistics:
            labeller.observe(*scores)
        if nl_counts is not None:
            if logits is None or not job.same_pixels:
                logits = inference.label_logits(raw, size)
            complementary_counts(nl_counts, logits, batch["label"].to(device, non_blocking=True), ranks)
        del logits
        if job.keep_scores is None:
            raw_bytes = raw.numel() * raw.element_size()
            score_bytes = raw.shape[0] * size[0] * size[1] * 12  # float32 + int64
            job.keep_scores = job.same_pixels and not labeller.needs_logits and score_bytes < raw_bytes
        cache.put(b, scores if job.keep_scores else (raw,))
    return nl_counts


def _selection_pass(job: LabelPass, cache: LogitCache, writer: PseudoLabelWriter):
    """Select every batch's pseudo-labels from the cache, count them (against the split's labels where it
    has them) and hand them to the writer. Returns the counts (predicted, selected, correct, ground truth;
    255 counted beyond the classes) and the pixel total."""
    inference, device = job.inference, job.inference.device
    counts = torch.zeros(4, 256, dtype=torch.int64, device=device)
    total = torch.zeros(1, dtype=torch.int64, device=device)
    if job.has_labels:  # only the labels, for the accuracy diagnostics
        source = sharded_loader(LabelsView(job.dataset), job.batch_size, job.workers, job.dist)
    else:
        source = [None] * len(job.batches)
    copies: list[tuple[list[int], tuple]] = []
    bar = tqdm(
        source, total=len(job.batches), desc="pseudo-labels: select", disable=not job.progress, leave=False
    )
    for b, batch in enumerate(bar):
        logits = None
        if job.keep_scores:
            score, pred = cache.get(b, device)
        else:
            (raw,) = cache.get(b, device)
            logits = inference.label_logits(raw, job.sizes[b])
            del raw
            score, pred = confidence_scores(logits)
        labels = job.labeller.select(score, pred, logits)
        del logits, score
        # Counts over every pixel (255 is counted beyond the classes): no masked copies, no sync.
        count_into(counts[0], pred)
        count_into(counts[1], labels)
        if job.has_labels:
            gt = batch["label"].to(device, non_blocking=True)
            count_into(counts[2], torch.where(labels == gt, labels, IGNORE_INDEX))
            count_into(counts[3], gt)
        total += labels.numel()
        # Copy to the host without waiting; hand the batch to the writer one batch later, so the device
        # keeps working while the host encodes.
        copies.append((job.batches[b], to_host(labels.to(torch.uint8))))
        if len(copies) > 1:
            submit_copy(writer, *copies.pop(0))
    while copies:
        submit_copy(writer, *copies.pop(0))
    return counts, total


def _round_statistics(job: LabelPass, counts: torch.Tensor, total: torch.Tensor, nl_counts) -> dict:
    C, names = job.protocol.num_classes, job.protocol.names
    distributed.all_reduce_sum(counts)
    distributed.all_reduce_sum(total)
    predicted, selected, correct, truth = (c[:C].cpu() for c in counts)
    total_pixels = int(total.item())
    n_sel = int(selected.sum())
    stats = {
        "alpha": job.labeller.alpha,
        "pred_share": {n: float(predicted[c]) / max(total_pixels, 1) for c, n in enumerate(names)},
        "never_predicted": [n for c, n in enumerate(names) if predicted[c] == 0],
        "selected_fraction": n_sel / max(total_pixels, 1),
        "pl_share": {n: float(selected[c]) / max(n_sel, 1) for c, n in enumerate(names)},
        **job.labeller.summary(names),
    }
    if job.has_labels:
        if nl_counts is not None:
            distributed.all_reduce_sum(nl_counts)
            nl_counts = nl_counts[:, :C].cpu()
        stats.update(label_diagnostics(selected, correct, truth, names, nl_counts))
    stats["alpha_capped"] = job.labeller.alpha_capped
    return stats


def complementary_counts(
    counts: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, ranks: list[int]
) -> None:
    """Count, for each rank ``k`` negative learning may draw (1-based, equally likely), every labelled
    pixel's complementary label (its k-th most probable class) and whether it is wrong (the true class).

    Args:
        counts: (2, C + 1) int64 counters, added to in place: row 0 how often class c was the
            complementary label, row 1 how often it was wrong; column C collects unlabelled pixels.
        logits: label-resolution logits; labels: the true classes (255 = unlabelled).

    Shape:
        logits (B, C, H, W), labels (B, H, W).
    """
    C = logits.shape[1]
    labels = labels.long()
    unlabelled = labels == IGNORE_INDEX
    order = logits.detach().topk(max(ranks), dim=1, sorted=True).indices
    for k in ranks:
        comp = order[:, k - 1]
        count_into(counts[0], torch.where(unlabelled, C, comp))
        count_into(counts[1], torch.where(unlabelled | (comp != labels), C, comp))


def label_diagnostics(
    selected: torch.Tensor,
    correct: torch.Tensor,
    truth: torch.Tensor,
    names: list[str] | tuple[str, ...],
    complementary: torch.Tensor | None = None,
) -> dict:
    """Pseudo-label quality against the split's labels: never used to choose anything, only to see why a
    recipe wins or collapses.

    Args:
        selected: (C,) pixels selected with each label; correct: (C,) of those, with the true label;
            truth: (C,) pixels of each true class; complementary: (2, C) from :func:`complementary_counts`.

    Returns:
        ``pl_accuracy`` (and per class: the share of the pixels selected as c that are c), ``pl_recall``
        (and per class: the share of class c's true pixels that were selected as c), ``true_share`` (each
        class's share of the labelled pixels, to set against ``pl_share``), and with ``complementary``,
        ``nl_error`` (and per class: how often "not class c" was wrong when c was the complementary label).
        A rate with an empty denominator is None.
    """

    def rate(num, den) -> float | None:
        return float(num) / float(den) if den else None

    n_truth = int(truth.sum())
    out = {
        "pl_accuracy": rate(correct.sum(), selected.sum()) or 0.0,
        "pl_accuracy_per_class": {n: rate(correct[c], selected[c]) for c, n in enumerate(names)},
        "pl_recall": rate(correct.sum(), n_truth),
        "pl_recall_per_class": {n: rate(correct[c], truth[c]) for c, n in enumerate(names)},
        "true_share": {n: float(truth[c]) / max(n_truth, 1) for c, n in enumerate(names)},
    }
    if complementary is not None:
        chosen, wrong = complementary
        out["nl_error"] = rate(wrong.sum(), chosen.sum())
        out["nl_error_per_class"] = {n: rate(wrong[c], chosen[c]) for c, n in enumerate(names)}
    return out


@torch.no_grad()
def class_shares(
    inference: Inference,
    dataset: Dataset,
    protocol: ClassProtocol,
    batch_size: int,
    workers: int = 0,
    dist: distributed.Dist = distributed.SINGLE,
    progress: bool = False,
    desc: str = "prediction shares",
) -> dict:
    """Each class's share of the model's argmax predictions on ``dataset`` (no labels read): the
    winner-takes-all signal. Runs the model in its current mode; the caller decides whether BN buffers may
    move (see :func:`sfseg.adapt.norm.frozen_bn_buffers`)."""
    C = protocol.num_classes
    counts = torch.zeros(C, dtype=torch.int64, device=inference.device)
    for batch in tqdm(
        sharded_loader(inference.view(dataset), batch_size, workers, dist),
        desc=desc,
        disable=not progress,
        leave=False,
    ):
        count_into(counts, argmax_classes(inference.logits(batch["image"], batch_size_hw(batch))))
    inference.check_finite(desc, distributed.all_reduce_sum)
    distributed.all_reduce_sum(counts)
    counts = counts.cpu()
    total = max(int(counts.sum()), 1)
    names = protocol.names
    return {
        "pred_share": {n: float(counts[c]) / total for c, n in enumerate(names)},
        "never_predicted": [n for c, n in enumerate(names) if counts[c] == 0],
    }


def collapse_check(
    start_share: dict[str, float],
    stats: dict,
    fraction: float,
    when: str,
    warn: Callable[[str], None] = tqdm.write,
) -> list[str]:
    """Classes whose share fell below ``fraction`` x their share in the source model's predictions.

    The share compared is the pseudo-label share when the method selects pseudo-labels, else the
    prediction share. This is the winner-takes-all signal, and it needs no target labels. A warning is
    printed; the caller records the list in the metrics.
    """
    if fraction <= 0:
        return []
    share = stats.get("pl_share", stats["pred_share"])
    collapsed = [n for n, s0 in start_share.items() if s0 > 0 and share[n] < fraction * s0]
    if collapsed:
        detail = ", ".join(f"{n} {100 * share[n]:.2f}% (was {100 * start_share[n]:.2f}%)" for n in collapsed)
        warn(f"warning: {when}: class share collapsed below {fraction:g}x its start: {detail}")
    return collapsed


def check_round_labels(run_dir: RunDir, r: int, dataset: Dataset, protocol: ClassProtocol) -> list[Path]:
    """Round ``r``'s pseudo-labels when a run resumes mid-round, each decoded and checked (present,
    readable, the size of its image, class indices or 255), so that a damaged file is one error now, not
    a failure mid-round."""
    paths = [run_dir.pseudo_labels(r) / f"{i:05d}.png" for i in range(len(dataset))]
    missing = [p for p in paths if not os.path.lexists(p)]
    if missing:
        raise ResumeError(
            f"{len(missing)} pseudo-label file(s) of round {r} are missing (e.g. {missing[0]}); the run "
            "cannot continue mid-round without them. Start it again with --overwrite"
        )
    sizes = getattr(dataset, "image_sizes", None)
    for i, p in enumerate(paths):
        label = read_label_png(p, run_dir.path)
        wrong_size = sizes is not None and (label.shape[1], label.shape[0]) != tuple(sizes[i])
        if wrong_size or ((label >= protocol.num_classes) & (label != IGNORE_INDEX)).any():
            what = "wrong size" if wrong_size else "values outside the classes"
            raise ResumeError(
                f"{p}: a pseudo-label file is damaged ({what}); the round cannot continue from it. Start the "
                "run again with --overwrite"
            )
    return paths
