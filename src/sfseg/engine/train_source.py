"""Stage 0: supervised training on the labelled source domain.

This is the only stage that reads source data. The checkpoint records the recipe, the seed, the
source-val mIoU (where a source val split is given) and the code version, so the provenance of every
adapted model can be traced. Real sources (GTA5, SYNTHIA) start from a backbone initialisation imported
like any community checkpoint (``init``: e.g. the DeepLab Caffe init or torchvision ImageNet weights),
whose input normalisation the trained model keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.config import to_dict
from sfseg.data.normalization import Normalization
from sfseg.data.registry import build_dataset, dataset_protocol
from sfseg.data.transforms import random_crop, resize_image, resize_label
from sfseg.engine.evaluate import evaluate
from sfseg.engine.optim import OptimConfig, build_sgd, poly_step
from sfseg.engine.runlog import MetricsLog, resolve_device, seed_everything
from sfseg.models import create_model, load_checkpoint, save_checkpoint
from sfseg.models.ops import upsample_logits


@dataclass
class SourceConfig:
    """Recipe for ``sfseg train-source``.

    Attributes:
        dataset: the labelled dataset (``toycity``, ``gta5``, ``synthia``, ``cityscapes``, ``folder``).
        data_root: its root.
        protocol: class protocol; empty = the dataset's own.
        domain: ToyCity only: ``source`` (stage 0) or ``target`` (the oracle).
        train_split: the training split (ToyCity: empty = ``<domain>_train``; GTA5/SYNTHIA: ``all`` or a
            list file).
        val_split: a labelled split of the *same* domain to score the final model on (ToyCity: empty =
            ``<domain>_val``; elsewhere empty = none). Never used to pick a checkpoint.
        out: where to write the checkpoint.
        arch, arch_kwargs: registered architecture and its options (ignored when ``init`` is given).
        init: a checkpoint to start from (sfseg or community; a file without a head gets a new one).
        init_family: its family when its keys are ambiguous.
        resize: ``[width, height]`` every training image (and label, nearest) is resized to; empty = none.
        crop: ``[width, height]`` random training crop after the resize; empty = none.
        input_size: ``[width, height]`` for the val evaluation; empty = native.
        epochs, batch_size: training length and batch size.
        hflip: random horizontal flips.
        optim: SGD settings; ``nominal_steps`` 0 means "the whole run".
        seed: seeds initialisation, sampling and crops.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: bfloat16 autocast for the training steps.
        num_workers: data-loading processes.
    """

    dataset: str = "toycity"
    data_root: str = "data/toycity"
    protocol: str = ""
    domain: str = "source"
    train_split: str = ""
    val_split: str = ""
    out: str = "runs/source/source.pt"
    arch: str = "deeplab_small"
    arch_kwargs: dict = field(default_factory=dict)
    init: str = ""
    init_family: str = ""
    resize: list[int] = field(default_factory=list)
    crop: list[int] = field(default_factory=list)
    input_size: list[int] = field(default_factory=list)
    epochs: int = 30
    batch_size: int = 8
    hflip: bool = True
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, head_lr_mult=1.0))
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    num_workers: int = 0


TOYCITY_NORMALIZATION = Normalization()


class SourceView(Dataset):
    """Labelled images resized and cropped for training; a crop depends on (seed, epoch, index) only."""

    def __init__(self, base: Dataset, cfg: SourceConfig):
        self.base, self.cfg, self.epoch = base, cfg, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = self.base[i]
        image, label = item["image"], item["label"]
        if self.cfg.resize:
            image = resize_image(image, tuple(self.cfg.resize))
            label = resize_label(label, tuple(self.cfg.resize))
        if self.cfg.crop:
            rng = np.random.default_rng([self.cfg.seed, self.epoch, i])
            image, label = random_crop(image, label, tuple(self.cfg.crop), rng)
        return {"image": image, "label": label, "index": i}


def _splits(cfg: SourceConfig) -> tuple[str, str]:
    if cfg.dataset == "toycity":
        return cfg.train_split or f"{cfg.domain}_train", cfg.val_split or f"{cfg.domain}_val"
    if not cfg.train_split:
        raise ValueError(f"train_split is required for dataset {cfg.dataset!r} (e.g. 'all' or a list file)")
    return cfg.train_split, cfg.val_split


def train_source(cfg: SourceConfig, progress: bool = True, log: MetricsLog | None = None) -> dict:
    """Train, evaluate on the domain's val split (if any), save the checkpoint; return its summary."""
    protocol = dataset_protocol(cfg.dataset, cfg.protocol)
    train_split, val_split = _splits(cfg)
    # Missing files, size mismatches and layout errors surface here, before any training.
    train_set = build_dataset(cfg.dataset, cfg.data_root, train_split, protocol.name, progress=progress)
    val_set = (
        build_dataset(cfg.dataset, cfg.data_root, val_split, protocol.name, progress=progress)
        if val_split
        else None
    )
    seed_everything(cfg.seed)
    if cfg.init:
        init = load_checkpoint(cfg.init, family=cfg.init_family, classes=protocol.name)
        init.check_classes(protocol.names, cfg.data_root)
        model, arch, arch_kwargs, norm = init.build(), init.arch, init.arch_kwargs, init.normalization
    else:
        arch, arch_kwargs, norm = cfg.arch, cfg.arch_kwargs, TOYCITY_NORMALIZATION
        model = create_model(arch, protocol.num_classes, **arch_kwargs)
    device = resolve_device(cfg.device)
    model.to(device)
    view = SourceView(train_set, cfg) if (cfg.resize or cfg.crop) else train_set
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(
        view,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=g,
        num_workers=cfg.num_workers,
    )
    total = cfg.epochs * len(loader)
    optim_cfg = cfg.optim if cfg.optim.nominal_steps else replace(cfg.optim, nominal_steps=total)
    optimizer = build_sgd(model, optim_cfg)
    model.train()
    step, t0 = 0, time.time()
    bar = tqdm(total=total, desc=f"train on {cfg.dataset} {train_split}", disable=not progress)
    for epoch in range(cfg.epochs):
        if isinstance(view, SourceView):
            view.epoch = epoch
        running = 0.0
        for batch in loader:
            images, labels = batch["image"].to(device), batch["label"].to(device)
            if cfg.hflip:
                flip = (torch.rand(images.shape[0], generator=g) < 0.5).to(device)
                images[flip], labels[flip] = images[flip].flip(-1), labels[flip].flip(-1)
            poly_step(optimizer, optim_cfg, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = upsample_logits(model(norm(images)), labels.shape[-2:])
                loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if log is not None:
            log.write({"phase": "train_source", "epoch": epoch, "loss": running / max(len(loader), 1)})
    bar.close()
    summary = {
        "val_domain": cfg.domain,
        "val_split": val_split,
        "val_miou": None,
        "train_seconds": round(time.time() - t0, 1),
    }
    provenance = {"stage": "train_source", "recipe": to_dict(cfg), "data_root": str(Path(cfg.data_root))}
    if cfg.init:
        provenance["init"] = init.provenance
    if val_set is not None:
        val = evaluate(
            model,
            val_set,
            norm,
            protocol,
            input_size=cfg.input_size,
            workers=cfg.num_workers,
            progress=progress,
            desc=f"eval {val_split}",
        )
        summary.update(val_miou=val["miou"], val_per_class=val["per_class"])
        provenance[f"{cfg.domain}_val_miou" if cfg.dataset == "toycity" else "source_val_miou"] = val["miou"]
    save_checkpoint(
        cfg.out,
        model,
        arch=arch,
        arch_kwargs=arch_kwargs,
        class_names=protocol.names,
        normalization=norm,
        provenance=provenance,
    )
    if log is not None:
        log.write({"phase": "train_source_done", **summary})
    return summary
