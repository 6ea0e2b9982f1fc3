"""Stage 0: supervised training on the labelled source domain.

This is the only stage that reads source data. The checkpoint records the recipe, the seed, the
source-val mIoU (where a source val split is given) and the code version, so the provenance of every
adapted model can be traced. Real sources (GTA5, SYNTHIA) start from a backbone initialisation imported
like any community checkpoint (``init``: e.g. the DeepLab Caffe init or torchvision ImageNet weights),
whose input normalisation the trained model keeps.

Under ``torchrun`` each rank trains on its share of every global batch (DistributedDataParallel), scores
whole val batches of its own, and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.adapt.config import RuntimeConfig
from sfseg.config import MAX_BATCH, MAX_SEED, MAX_SIDE, in_range, require, to_dict
from sfseg.data.normalization import Normalization
from sfseg.data.registry import build_dataset, dataset_protocol
from sfseg.data.transforms import random_crop, resize_image, resize_label
from sfseg.engine import distributed
from sfseg.engine.board import Board, log_eval
from sfseg.engine.evaluate import evaluate
from sfseg.engine.guard import DivergenceGuard
from sfseg.engine.inference import Inference, use_amp, use_channels_last
from sfseg.engine.loading import collate, epoch_batches, step_generator, steps_per_epoch
from sfseg.engine.runlog import MetricsLog, seed_everything
from sfseg.errors import ConfigError
from sfseg.fileio import check_writable_file
from sfseg.models import create_model, load_checkpoint, save_checkpoint
from sfseg.models.ops import upsample_logits
from sfseg.optim import OptimConfig, build_sgd, poly_step, unwrap


@dataclass
class SourceDataConfig:
    """The labelled training data.

    Attributes:
        dataset: ``toycity``, ``gta5``, ``synthia``, ``cityscapes``, ``folder``.
        root: its root.
        protocol: class protocol; empty = the dataset's own.
        domain: ToyCity only: ``source`` (stage 0) or ``target`` (the oracle).
        train_split: the training split (ToyCity: empty = ``<domain>_train``; GTA5/SYNTHIA: ``all`` or a
            list file).
        val_split: a labelled split of the *same* domain to score the final model on (ToyCity: empty =
            ``<domain>_val``; elsewhere empty = none). Never used to pick a checkpoint.
        resize: ``[width, height]`` every training image (and label, nearest) is resized to; empty = none.
        crop: ``[width, height]`` random training crop after the resize; empty = none.
        input_size: ``[width, height]`` for the val evaluation; empty = native.
        hflip: random horizontal flips.
    """

    dataset: str = "toycity"
    root: str = "data/toycity"
    protocol: str = ""
    domain: str = "source"
    train_split: str = ""
    val_split: str = ""
    resize: list[int] = field(default_factory=list)
    crop: list[int] = field(default_factory=list)
    input_size: list[int] = field(default_factory=list)
    hflip: bool = True

    def check(self) -> None:
        require(bool(self.root), "root", "is empty; give the dataset's root directory")
        require(
            self.domain in ("source", "target"), "domain", f"must be source or target, got {self.domain!r}"
        )
        for key in ("resize", "crop", "input_size"):
            v = getattr(self, key)
            require(
                not v or (len(v) == 2 and min(v) > 0 and max(v) <= MAX_SIDE),
                key,
                f"must be [width, height] with sizes in 1..{MAX_SIDE}, or empty, got {v}",
            )


@dataclass
class SourceScheduleConfig:
    """Attributes:
    epochs: passes over the training split.
    batch_size: batch size per process.
    optim: SGD settings; ``nominal_steps`` 0 means "the whole run".
    """

    epochs: int = 30
    batch_size: int = 8
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, head_lr_mult=1.0))

    def check(self) -> None:
        in_range(self.epochs, 1, 10000, "epochs")
        in_range(self.batch_size, 1, MAX_BATCH, "batch_size")


@dataclass
class SourceConfig:
    """Recipe for ``sfseg train-source``.

    Attributes:
        out: where to write the checkpoint (a file).
        seed: seeds initialisation, sampling, crops and flips.
        arch, arch_kwargs: registered architecture and its options (ignored when ``init`` is given).
        init: a checkpoint to start from (sfseg or community; a file without a head gets a new one).
        init_family: its family when its keys are ambiguous.
        data, runtime, schedule: the groups above (``runtime`` as for ``sfseg adapt``).
    """

    out: str = "runs/source/source.pt"
    seed: int = 0
    arch: str = "deeplab_small"
    arch_kwargs: dict = field(default_factory=dict)
    init: str = ""
    init_family: str = ""
    data: SourceDataConfig = field(default_factory=SourceDataConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    schedule: SourceScheduleConfig = field(default_factory=SourceScheduleConfig)

    def check(self) -> None:
        require(bool(self.out.strip()), "out", "is empty; give the checkpoint's file path")
        in_range(self.seed, 0, MAX_SEED, "seed")


TOYCITY_NORMALIZATION = Normalization()


class SourceView(Dataset):
    """Labelled images resized and cropped for training; a crop depends on (seed, epoch, index) only."""

    def __init__(self, base: Dataset, data: SourceDataConfig, seed: int):
        self.base, self.data, self.seed, self.epoch = base, data, seed, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        image, label = item["image"], item["label"]
        if self.data.resize:
            image = resize_image(image, tuple(self.data.resize))
            label = resize_label(label, tuple(self.data.resize))
        if self.data.crop:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            image, label = random_crop(image, label, tuple(self.data.crop), rng)
        return {"image": image, "label": label, "index": i}


def data_spec(root: str | Path, domain: str = "source") -> dict | None:
    """What identifies the data a model was trained on, beyond its path (None for datasets other than
    ToyCity): for a ToyCity tree, the generator version, the world seed, the image size and split sizes of
    ``domain``, and a digest of that domain's layout and appearance styles. The variants of the suite share
    one source domain, so a source model serves every variant of its world."""
    meta = Path(root) / "toycity.json"
    if not meta.is_file():
        return None
    from sfseg.data.toycity import ToyCitySpec

    d = json.loads(meta.read_text())
    return toycity_signature(ToyCitySpec(**d["spec"]), domain, d.get("generator_version"))


def toycity_signature(spec, domain: str, generator_version: int | None = None) -> dict:
    """The identity of one domain of a ToyCity world (see :func:`data_spec`)."""
    from sfseg.data.toycity import GENERATOR_VERSION, VARIANTS

    style = repr(VARIANTS[spec.variant].style(domain))
    return {
        "generator_version": GENERATOR_VERSION if generator_version is None else generator_version,
        "domain": domain,
        "seed": spec.seed,
        "size": [spec.height, spec.width],
        "counts": [spec.count(domain, "train"), spec.count(domain, "val")],
        "style": hashlib.sha1(style.encode()).hexdigest(),
    }


def same_training(provenance: dict, cfg: SourceConfig) -> bool:
    """Whether a checkpoint with ``provenance`` is what ``cfg`` would train: the same recipe (its output
    path and data location aside) on the same data (for ToyCity, the same generator version and spec)."""
    recipe = provenance.get("recipe")
    if not isinstance(recipe, dict):
        return False
    theirs, mine = copy.deepcopy(recipe), to_dict(cfg)
    for r in (theirs, mine):
        r.pop("out", None)
        r.get("data", {}).pop("root", None)
    return theirs == mine and provenance.get("data_spec") == data_spec(cfg.data.root, cfg.data.domain)


def _splits(data: SourceDataConfig) -> tuple[str, str]:
    if data.dataset == "toycity":
        return data.train_split or f"{data.domain}_train", data.val_split or f"{data.domain}_val"
    if not data.train_split:
        raise ConfigError(
            f"data.train_split is required for dataset {data.dataset!r} (e.g. 'all' or a list file)"
        )
    return data.train_split, data.val_split


def train_source(cfg: SourceConfig, progress: bool = True, log: MetricsLog | None = None) -> dict:
    """Train, evaluate on the domain's val split (if any), save the checkpoint; return its summary."""
    d, device = distributed.init(cfg.runtime.device)
    progress = progress and d.is_main
    check_writable_file(Path(cfg.out), "out")  # before any training: a bad path must not cost the run
    data = cfg.data
    protocol = dataset_protocol(data.dataset, data.protocol)
    train_split, val_split = _splits(data)
    # Missing files, size mismatches and layout errors surface here, before any training.
    train_set = build_dataset(data.dataset, data.root, train_split, protocol.name, progress=progress)
    val_set = (
        build_dataset(data.dataset, data.root, val_split, protocol.name, progress=progress)
        if val_split
        else None
    )
    bs = cfg.schedule.batch_size
    if steps_per_epoch(len(train_set), bs, d.world) == 0:
        raise ConfigError(
            f"schedule.batch_size: {bs}{f' x {d.world} processes' if d.enabled else ''} is larger than the "
            f"{len(train_set)} images of split {train_split!r}: an epoch would have no step"
        )
    seed_everything(cfg.seed)
    if cfg.init:
        init = load_checkpoint(cfg.init, family=cfg.init_family, classes=protocol.name)
        init.check_classes(protocol.names, data.root)
        model, arch, arch_kwargs, norm = init.build(), init.arch, init.arch_kwargs, init.normalization
    else:
        arch, arch_kwargs, norm = cfg.arch, cfg.arch_kwargs, TOYCITY_NORMALIZATION
        model = create_model(arch, protocol.num_classes, **arch_kwargs)
    model.to(device)
    channels_last = use_channels_last(cfg.runtime.channels_last, device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = use_amp(cfg.runtime.amp, device)
    train_model: nn.Module = model
    if d.enabled:
        if cfg.runtime.sync_bn:
            if device.type != "cuda":
                raise ConfigError("runtime.sync_bn needs CUDA devices (SyncBatchNorm has no CPU path)")
            train_model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=ids)
    view = SourceView(train_set, data, cfg.seed) if (data.resize or data.crop) else train_set
    per_epoch = steps_per_epoch(len(train_set), bs, d.world)
    total = cfg.schedule.epochs * per_epoch
    optim_cfg = cfg.schedule.optim
    if not optim_cfg.nominal_steps:
        optim_cfg = replace(optim_cfg, nominal_steps=total)
    optimizer = build_sgd(train_model, optim_cfg)
    train_model.train()
    guard = DivergenceGuard(
        model,
        max_weight_growth=0,
        hint=f"Is the learning rate too large (schedule.optim.lr is {optim_cfg.lr:g})?",
    )
    step, t0 = 0, time.time()
    out = Path(cfg.out)
    board = Board(out.parent / "tensorboard" / out.stem, enabled=d.is_main and cfg.runtime.tensorboard)
    bar = tqdm(total=total, desc=f"train on {data.dataset} {train_split}", disable=not progress)
    for epoch in range(cfg.schedule.epochs):
        if isinstance(view, SourceView):
            view.epoch = epoch
        loader = DataLoader(
            view,
            batch_sampler=epoch_batches(len(train_set), bs, cfg.seed, 0, epoch, d),
            num_workers=cfg.runtime.num_workers,
            pin_memory=device.type == "cuda",
            collate_fn=collate,
        )
        running = torch.zeros((), device=device)
        for batch in loader:
            g = step_generator(cfg.seed, step, d.rank)
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True).long()
            if data.hflip:
                flip = (torch.rand(images.shape[0], generator=g) < 0.5).to(device)
                images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
                labels = torch.where(flip.view(-1, 1, 1), labels.flip(-1), labels)
            poly_step(optimizer, optim_cfg, step)
            x = norm(images)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = upsample_logits(train_model(x), labels.shape[-2:])
            loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.detach()
            step += 1
            bar.update()
            if step % 10 == 0:
                value = loss.item()
                guard.losses(
                    {"cross_entropy": value}, step, "none: train-source writes its checkpoint at the end"
                )
                bar.set_postfix(loss=f"{value:.3f}")
                board.scalar("loss/ce", value, step)
                board.scalar("lr", optimizer.param_groups[0]["lr"], step)
        if log is not None:
            log.write({"phase": "train_source", "epoch": epoch, "loss": running.item() / max(per_epoch, 1)})
    bar.close()
    guard.weights(step, "none: nothing was written")
    summary = {
        "val_domain": data.domain,
        "val_split": val_split,
        "val_miou": None,
        "train_seconds": round(time.time() - t0, 1),
        "amp": amp,
        "channels_last": channels_last,
    }
    provenance = {
        "stage": "train_source",
        "recipe": to_dict(cfg),
        "data_root": str(Path(data.root)),
        "data_spec": data_spec(data.root, data.domain),
    }
    if cfg.init:
        provenance["init"] = init.provenance
    if val_set is not None:
        inference = Inference(model, norm, data.input_size, channels_last=channels_last)
        val = evaluate(
            inference,
            val_set,
            protocol,
            batch_size=cfg.runtime.eval_batch_size,
            workers=cfg.runtime.num_workers,
            progress=progress,
            desc=f"eval {val_split}",
            dist=d,
        )
        summary.update(val_miou=val["miou"], val_per_class=val["per_class"])
        log_eval(board, val, step)
        provenance[f"{data.domain}_val_miou" if data.dataset == "toycity" else "source_val_miou"] = val[
            "miou"
        ]
    if d.is_main:
        save_checkpoint(
            cfg.out,
            unwrap(model),
            arch=arch,
            arch_kwargs=arch_kwargs,
            class_names=protocol.names,
            normalization=norm,
            provenance=provenance,
        )
    board.close()
    distributed.barrier()
    if log is not None:
        log.write({"phase": "train_source_done", **summary})
    return summary
