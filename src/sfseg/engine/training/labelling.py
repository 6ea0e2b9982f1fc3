"""The pseudo-labelling pass of a round, its PNG writer, and the label-free class-share probe.

One network forward per image: the first pass keeps each batch's network output (at the network's own
stride, in its own dtype) in a :class:`LogitCache` while the pseudo-labeller observes it; the selection
pass reads the cache instead of running the network again. The labels are therefore exactly those of two
full passes over the same batches (BatchNorm in train mode included: same batches, same statistics).
The cache is bounded: up to ``runtime.logit_cache_gib`` in memory (on the GPU when it fits easily), beyond
that in a memory-mapped file in the run directory (about 1 GB per 1,000 Cityscapes images in bfloat16 at
1024x512 input, 2 GB in float32).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.adapt.pseudo_labels import PseudoLabeller, confidence_scores
from sfseg.data.classes import ClassProtocol
from sfseg.engine.evaluation.inference import Inference, LabelsView, batch_size_hw
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.loading import sharded_batches, sharded_loader
from sfseg.fileio import make_dirs, open_fd, open_file
from sfseg.models.ops import argmax_classes, count_into


class LogitCache:
    """What each batch's selection needs, kept between the two passes of a labelling round: the network's
    outputs, or the pixels' (score, prediction) when those suffice and are smaller.

    Args:
        budget_gib: memory budget; when the first batch shows that all batches would exceed it, the
            tensors go to memory-mapped files in ``spill_dir`` (deleted by :meth:`close`).
        total_images: number of images this process will store (for the size estimate).
        spill_dir: where the files go.
        root: the run directory holding ``spill_dir`` (no link is followed below it).
    """

    def __init__(self, budget_gib: float, total_images: int, spill_dir: Path, root: Path | None = None):
        self.budget = budget_gib * 2**30
        self.total = total_images
        self.spill_dir = Path(spill_dir)
        self.root = Path(root) if root is not None else self.spill_dir.parent
        self.mem: dict[int, tuple[torch.Tensor, ...]] = {}
        self.files: list[np.memmap] = []
        self.paths: list[Path] = []
        self.specs: list[tuple[tuple, torch.dtype]] = []
        self.slots: dict[int, tuple[int, int]] = {}
        self.next_row = 0
        self.where: str | None = None

    def _plan(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.specs = [(tuple(t.shape[1:]), t.dtype) for t in tensors]
        need = sum(t[0].numel() * t.element_size() for t in tensors) * self.total
        if need > self.budget:
            self.where = "file"
            make_dirs(self.spill_dir, self.root)
            for i, (shape, dtype) in enumerate(self.specs):
                np_dtype = _np_storage(dtype)
                path = self.spill_dir / f"cache{i}.bin"
                self.paths.append(path)
                with open_file(path, "w+b", root=self.root) as f:
                    self.files.append(np.memmap(f, dtype=np_dtype, mode="w+", shape=(self.total, *shape)))
        elif tensors[0].device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(tensors[0].device)
            self.where = "device" if need < 0.25 * free else "host"
        else:
            self.where = "memory"

    def put(self, key: int, tensors: tuple[torch.Tensor, ...]) -> None:
        if self.where is None:
            self._plan(tensors)
        if self.where in ("device", "memory"):
            self.mem[key] = tensors
        elif self.where == "host":
            self.mem[key] = tuple(t.to("cpu", non_blocking=True) for t in tensors)
        else:
            n = tensors[0].shape[0]
            for f, t in zip(self.files, tensors):
                f[self.next_row : self.next_row + n] = _as_storage(t.detach().cpu())
            self.slots[key] = (self.next_row, n)
            self.next_row += n

    def get(self, key: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        if self.where != "file":
            return tuple(t.to(device, non_blocking=True) for t in self.mem.pop(key))
        row, n = self.slots.pop(key)
        out = []
        for f, (_, dtype) in zip(self.files, self.specs):
            t = torch.from_numpy(np.array(f[row : row + n]))
            out.append((t.view(dtype) if dtype in (torch.bfloat16, torch.float16) else t).to(device))
        return tuple(out)

    def close(self) -> None:
        self.mem.clear()
        for f, path in zip(self.files, self.paths):
            f._mmap.close()
            path.unlink(missing_ok=True)
        self.files, self.paths = [], []


def _np_storage(dtype: torch.dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return np.int16
    return torch.empty(0, dtype=dtype).numpy().dtype


def _as_storage(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy()


def palette_png(gray_png: bytes, palette: list[int]) -> bytes:
    """An 8-bit grayscale PNG turned into a palette PNG with the same pixel values (indices).

    The image data of an 8-bit grayscale PNG and of an 8-bit palette PNG are the same bytes: only the
    header's colour type (0 -> 3) and a ``PLTE`` chunk differ. This lets OpenCV, which encodes without
    holding Python's lock (so threads encode in parallel), write the palette PNGs that image viewers show
    in the classes' colours.
    """
    sig, rest = gray_png[:8], gray_png[8:]
    length = struct.unpack(">I", rest[:4])[0]
    if rest[4:8] != b"IHDR" or length != 13 or rest[8 + 8] != 8 or rest[8 + 9] != 0:
        raise ValueError("expected an 8-bit grayscale PNG")
    ihdr = bytearray(rest[8 : 8 + 13])
    ihdr[9] = 3  # colour type: palette

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    tail = rest[8 + 13 + 4 :]  # the chunks after IHDR (and its CRC)
    return sig + chunk(b"IHDR", bytes(ihdr)) + chunk(b"PLTE", bytes(palette[: 3 * 256])) + tail


class PseudoLabelWriter:
    """Writes pseudo-label PNGs (palette, the index is the class; 255 = not selected) on a thread pool,
    so that PNG encoding overlaps the network's work: OpenCV encodes (in parallel: it releases Python's
    lock), the palette is added by :func:`palette_png`. :meth:`close` waits and re-raises any error."""

    def __init__(
        self, out_dir: Path, palette: list[int], threads: int | None = None, root: Path | None = None
    ):
        self.out_dir = Path(out_dir)
        self.root = Path(root) if root is not None else self.out_dir
        if root is not None:
            make_dirs(self.out_dir, self.root)
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.palette = list(palette) + [0] * (768 - len(palette))
        self.pool = cf.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1))
        self.pending: list[cf.Future] = []

    def path(self, index: int) -> Path:
        return self.out_dir / f"{index:05d}.png"

    def _write(self, index: int, label: np.ndarray) -> None:
        # Fast zlib level (label maps compress well). No per-file rename: a round whose labelling did not
        # finish is labelled again on resume.
        ok, gray = cv2.imencode(".png", np.ascontiguousarray(label), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"could not encode pseudo-label {index}")
        fd = open_fd(self.path(index), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, root=self.root)
        with os.fdopen(fd, "wb") as f:
            f.write(palette_png(gray.tobytes(), self.palette))

    def submit(self, index: int, label: np.ndarray) -> None:
        self.pending.append(self.pool.submit(self._write, index, label))
        if len(self.pending) > 64:
            done = [f for f in self.pending if f.done()]
            for f in done:
                f.result()
            self.pending = [f for f in self.pending if not f.done()]

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pool.shutdown(wait=True)
            self.pending = []


@torch.no_grad()
def label_round(
    inference: Inference,
    dataset: Dataset,
    labeller: PseudoLabeller,
    alpha: float,
    out_dir: Path,
    protocol: ClassProtocol,
    batch_size: int,
    workers: int = 0,
    cache_gib: float = 4.0,
    dist: distributed.Dist = distributed.SINGLE,
    progress: bool = False,
    forward_passes: int = 1,
    complementary_ranks: list[int] | None = None,
    cache_dir: Path | None = None,
    root: Path | None = None,
) -> tuple[list[Path], dict]:
    """Label the target train set with the current model (its mode is the caller's): one PNG per image.

    Args:
        forward_passes: 1 (the network runs once per image; what the selection needs is cached) or 2 (it
            runs again for the selection pass: the former behaviour, kept for the equivalence test and
            the benchmark).
        cache_dir, root: where the logit cache spills (default ``<out_dir>/../.cache``), and the run
            directory holding it and ``out_dir`` (no link is followed below it).
        complementary_ranks: the 1-based ranks negative learning draws its complementary labels from;
            where the split has labels, how often each class is a wrong complementary label is measured
            (see :func:`complementary_counts`). None: not measured.

    Returns:
        the PNG paths (dataset order) and the round statistics: selection share, per-class share of the
        pseudo-labels and of the argmax predictions, the labeller's summary (thresholds), and, where the
        split has labels, the diagnostics of :func:`label_diagnostics`. Counts are summed over processes.
    """
    C = protocol.num_classes
    device = inference.device
    batches = sharded_batches(len(dataset), batch_size, dist)
    has_labels = getattr(dataset, "has_labels", False)
    # Complementary labels need the logits, so their diagnostics are counted in the forward pass.
    nl_counts = None
    if has_labels and complementary_ranks:
        nl_counts = torch.zeros(2, C + 1, dtype=torch.int64, device=device)
    labeller.start(alpha, device)
    spill = Path(cache_dir) if cache_dir is not None else Path(out_dir).parent / ".cache"
    cache = LogitCache(cache_gib, sum(len(b) for b in batches), spill, root)
    # With direct upsampling, thresholds are measured on the very pixels that are selected: the scores of
    # the first pass serve the second. When the selection needs only (score, prediction) and those are
    # smaller than the network's output, they are what is cached.
    same_pixels = inference.upsample == "direct"
    sizes: dict[int, tuple[int, int]] = {}
    keep_scores: bool | None = None
    try:
        view = inference.view(dataset, labels=nl_counts is not None)
        loader = sharded_loader(view, batch_size, workers, dist)
        for b, batch in enumerate(
            tqdm(loader, desc="pseudo-labels: forward", disable=not progress, leave=False)
        ):
            raw = inference.raw(batch["image"])
            sizes[b] = batch_size_hw(batch)
            scores = logits = None
            if labeller.needs_statistics or (same_pixels and not labeller.needs_logits):
                logits = inference.threshold_logits(raw, sizes[b])
                scores = confidence_scores(logits)
            if labeller.needs_statistics:
                labeller.observe(*scores)
            if nl_counts is not None:
                if logits is None or not same_pixels:
                    logits = inference.label_logits(raw, sizes[b])
                gt = batch["label"].to(device, non_blocking=True)
                complementary_counts(nl_counts, logits, gt, complementary_ranks)
            del logits
            if forward_passes == 1:
                if keep_scores is None:
                    raw_bytes = raw.numel() * raw.element_size()
                    score_bytes = raw.shape[0] * sizes[b][0] * sizes[b][1] * 12  # float32 + int64
                    keep_scores = same_pixels and not labeller.needs_logits and score_bytes < raw_bytes
                cache.put(b, scores if keep_scores else (raw,))
        inference.check_finite("pseudo-labelling", distributed.all_reduce_sum)
        labeller.reduce(distributed.all_reduce_sum)

        # predicted, selected, correct, ground truth (255 is counted beyond the classes)
        counts = torch.zeros(4, 256, dtype=torch.int64, device=device)
        total = torch.zeros(1, dtype=torch.int64, device=device)
        # Each rank writes the PNGs of its own batches (disjoint files).
        writer = PseudoLabelWriter(out_dir, protocol.palette(), root=root)
        copies: list[tuple[list[int], tuple]] = []
        if forward_passes == 2:
            source = sharded_loader(inference.view(dataset, labels=has_labels), batch_size, workers, dist)
        elif has_labels:  # only the labels, for the accuracy diagnostics
            source = sharded_loader(LabelsView(dataset), batch_size, workers, dist)
        else:
            source = [None] * len(batches)
        try:
            for b, batch in enumerate(
                tqdm(
                    source,
                    total=len(batches),
                    desc="pseudo-labels: select",
                    disable=not progress,
                    leave=False,
                )
            ):
                logits = None
                if forward_passes == 2:
                    logits = inference.label_logits(inference.raw(batch["image"]), sizes[b])
                    score, pred = confidence_scores(logits)
                elif keep_scores:
                    score, pred = cache.get(b, device)
                else:
                    (raw,) = cache.get(b, device)
                    logits = inference.label_logits(raw, sizes[b])
                    del raw
                    score, pred = confidence_scores(logits)
                labels = labeller.select(score, pred, logits)
                del logits, score
                # Counts over every pixel (255 is counted beyond the classes): no masked copies, no sync.
                count_into(counts[0], pred)
                count_into(counts[1], labels)
                if has_labels:
                    gt = batch["label"].to(device, non_blocking=True)
                    count_into(counts[2], torch.where(labels == gt, labels, IGNORE_INDEX))
                    count_into(counts[3], gt)
                total += labels.numel()
                # Copy to the host without waiting; hand the batch to the writer one batch later, so the
                # device keeps working while the host encodes.
                copies.append((batches[b], _to_host(labels.to(torch.uint8))))
                if len(copies) > 1:
                    _submit(writer, *copies.pop(0))
            while copies:
                _submit(writer, *copies.pop(0))
        finally:
            writer.close()
    finally:
        cache.close()
    distributed.all_reduce_sum(counts)
    distributed.all_reduce_sum(total)
    predicted, selected, correct, truth = (c[:C].cpu() for c in counts)
    total_pixels = int(total.item())
    names = protocol.names
    n_sel = int(selected.sum())
    stats = {
        "alpha": alpha,
        "pred_share": {n: float(predicted[c]) / max(total_pixels, 1) for c, n in enumerate(names)},
        "never_predicted": [n for c, n in enumerate(names) if predicted[c] == 0],
        "selected_fraction": n_sel / max(total_pixels, 1),
        "pl_share": {n: float(selected[c]) / max(n_sel, 1) for c, n in enumerate(names)},
        **labeller.summary(names),
    }
    if has_labels:
        if nl_counts is not None:
            distributed.all_reduce_sum(nl_counts)
            nl_counts = nl_counts[:, :C].cpu()
        stats.update(label_diagnostics(selected, correct, truth, names, nl_counts))
    paths = [Path(out_dir) / f"{i:05d}.png" for i in range(len(dataset))]
    return paths, stats


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


def _to_host(t: torch.Tensor) -> tuple:
    """Start copying ``t`` to (pinned) host memory; returns what :func:`_submit` needs to finish it."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def _submit(writer: PseudoLabelWriter, indices: list[int], copy: tuple) -> None:
    host, done = copy
    if done is not None:
        done.synchronize()
    for idx, lab in zip(indices, host.numpy()):
        writer.submit(idx, lab)


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
