"""Data loading for the run: whole-batch sharding, seeded epoch orders, and the training view.

Everything random here is a function of (seed, round, epoch, index) or (seed, step, rank), never of a
generator's history, so a run resumed mid-epoch draws exactly what the uninterrupted run drew, and the
crops do not depend on the number of loader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import default_collate

from sfseg.data.transforms import AugmentConfig, apply_scale_crop, resize_crop, scale_crop_params
from sfseg.engine.runtime.distributed import SINGLE, Dist
from sfseg.errors import ConfigError, ResumeError
from sfseg.fileio import open_file


def derived_seed(*parts: int) -> int:
    """A 63-bit seed from integers (NumPy's SeedSequence hashing: well-mixed, platform-independent)."""
    return int(
        np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1
    )


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The generator of training step ``step`` (flips, complementary ranks, ClassMix) on ``rank``."""
    return torch.Generator().manual_seed(derived_seed(seed, 1, rank, step))


def sharded_batches(n: int, batch_size: int, dist: Dist = SINGLE) -> list[list[int]]:
    """Index lists of the batches of ``range(n)`` (in order, the last one short) that this rank owns:
    batch ``b`` is rank ``b % world``'s, so each batch has the same members for any process count."""
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return [b for i, b in enumerate(batches) if dist.owns(i)]


def collate(items: list[dict]) -> dict:
    """Stack what has one size; keep a list of what does not (images of different sizes)."""
    out = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor) and any(v.shape != values[0].shape for v in values):
            out[key] = values
        else:
            out[key] = default_collate(values)
    return out


def sharded_loader(dataset: Dataset, batch_size: int, workers: int = 0, dist: Dist = SINGLE) -> DataLoader:
    """A loader over this rank's batches of ``dataset``, in order."""
    return DataLoader(
        dataset,
        batch_sampler=sharded_batches(len(dataset), batch_size, dist),
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        collate_fn=collate,
    )


def epoch_batches(
    n: int, batch_size: int, seed: int, round_index: int, epoch: int, dist: Dist = SINGLE
) -> list[list[int]]:
    """This rank's training batches of one epoch: a permutation seeded by (seed, round, epoch), cut into
    global batches of ``batch_size x world`` (the last incomplete one dropped), each split by rank."""
    g = torch.Generator().manual_seed(derived_seed(seed, 2, round_index, epoch))
    perm = torch.randperm(n, generator=g).tolist()
    glob = batch_size * dist.world
    out = []
    for start in range(0, n - glob + 1, glob):
        mine = start + dist.rank * batch_size
        out.append(perm[mine : mine + batch_size])
    return out


def steps_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    return n // (batch_size * world)


def require_steps(n: int, batch_size: int, dist: Dist, split: str) -> int:
    """The steps of an epoch of ``n`` images, refused (naming the key and the largest batch that fits)
    when an epoch would have none."""
    steps = steps_per_epoch(n, batch_size, dist.world)
    if steps == 0:
        procs = f" x {dist.world} processes" if dist.enabled else ""
        raise ConfigError(
            f"schedule.batch_size: {batch_size}{procs} is larger than the {n} images of split {split!r}: an "
            f"epoch would have no step. Use a batch size of at most {n // dist.world}"
        )
    return steps


class PngTargets:
    """Per-pixel targets read from PNG files (a round's pseudo-labels), by sample index (picklable, for
    loader workers); no link is followed below ``root`` (the run directory)."""

    def __init__(self, paths: list[Path], root: Path | None = None):
        self.paths = list(paths)
        self.root = root

    def __call__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_label_png(self.paths[i], self.root))


def read_label_png(path: Path, root: Path | None = None) -> np.ndarray:
    """A pseudo-label PNG as (H, W) uint8; a damaged or foreign file is one error naming it."""
    try:
        with open_file(path, "rb", root=root) as f, Image.open(f) as im:
            if im.mode not in ("L", "P"):
                raise ValueError(f"mode {im.mode!r}, not 8-bit labels")
            return np.asarray(im).copy()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise ResumeError(
            f"{path}: a pseudo-label file is damaged ({reason}); the round cannot continue from it. Start "
            "the run again with --overwrite (or resume an earlier copy of the run directory)"
        ) from None


class LabelTargets:
    """A labelled split's own labels as targets (source training)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __call__(self, i: int) -> torch.Tensor:
        return self.base.label(i)


class TrainView(Dataset):
    """A split as one round (or epoch) trains on it: each image with its per-pixel target, jointly augmented.

    For adaptation the targets are the round's pseudo-labels (target labels, where the split has them,
    never reach training); for source training they are the split's labels.

    Args:
        base: the split.
        targets: index -> (H, W) target map (:class:`PngTargets`, :class:`LabelTargets`), or None for
            methods without pseudo-labels.
        augment: the augmentation recipe.
        seed, round_index: with the epoch and sample index, they fix each sample's crop. Items are
            addressed as ``(epoch, index)`` (one loader serves a whole round) or by index alone (``epoch``
            attribute).
        crop_on_device: for ``scale_crop``, return the whole decoded image and the drawn crop (``crop`` =
            the parameters of :func:`~sfseg.data.transforms.scale_crop_params`), for the training loop to
            apply on the device; otherwise every augmentation is applied here, on the loader worker.
    """

    def __init__(
        self,
        base: Dataset,
        targets: Callable[[int], torch.Tensor] | None,
        augment: AugmentConfig,
        seed: int,
        round_index: int,
        crop_on_device: bool = False,
    ):
        self.base, self.targets, self.augment = base, targets, augment
        self.seed, self.round_index, self.epoch = seed, round_index, 0
        self.crop_on_device = crop_on_device and augment.kind == "scale_crop"

    @staticmethod
    def pngs(paths: list[Path], root: Path | None = None) -> PngTargets:
        return PngTargets(paths, root)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        epoch, i = key if isinstance(key, tuple) else (self.epoch, key)
        image = self.base.image(i)
        target = None if self.targets is None else self.targets(i)
        item = {"index": i}
        rng = np.random.default_rng([self.seed, self.round_index, epoch, i])
        if self.augment.kind == "scale_crop":
            params = scale_crop_params(image.shape[-2], image.shape[-1], self.augment, rng)
            if self.crop_on_device:
                item["crop"] = torch.tensor(params)
            else:
                image, target = apply_scale_crop(image, target, params, self.augment.crop)
        elif self.augment.kind == "resize_crop":
            image, target = resize_crop(image, target, self.augment, rng)
        item["image"] = image
        if target is not None:
            item["target"] = target
        return item


def finish_crops(batch: dict, crop: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Images (B, 3, H, W) uint8 and their targets on ``device`` from a :class:`TrainView` batch, applying
    the drawn crops on the device when the view left them to it."""
    images, target = batch["image"], batch.get("target")
    if "crop" not in batch:
        images = images.to(device, non_blocking=True)
        return images, None if target is None else target.to(device, non_blocking=True)
    out_i, out_t = [], []
    for j, params in enumerate(batch["crop"].tolist()):
        img = images[j].to(device, non_blocking=True)
        lab = None if target is None else target[j].to(device, non_blocking=True)
        img, lab = apply_scale_crop(img, lab, params, crop)
        out_i.append(img)
        out_t.append(lab)
    return torch.stack(out_i), None if target is None else torch.stack(out_t)
