"""Stage 0: supervised training on the labelled source domain.

This is the only stage that reads source data. The checkpoint records the recipe, the seed, the
source-val mIoU and the code version, so the provenance of every adapted model can be traced.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.config import to_dict
from sfseg.data.classes import TOYCITY
from sfseg.data.datasets import toycity_split
from sfseg.data.normalization import Normalization
from sfseg.engine.evaluate import evaluate
from sfseg.engine.optim import OptimConfig, build_sgd, poly_step
from sfseg.engine.runlog import MetricsLog, seed_everything
from sfseg.models import create_model, save_checkpoint


@dataclass
class SourceConfig:
    """Recipe for ``sfseg train-source``.

    Attributes:
        data_root: ToyCity root (``sfseg toycity generate``).
        domain: which labelled domain to train on: ``source`` (stage 0) or ``target`` (the oracle).
        out: where to write the checkpoint.
        arch, arch_kwargs: registered architecture and its options.
        epochs, batch_size: training length and batch size.
        hflip: random horizontal flips.
        optim: SGD settings; ``nominal_steps`` 0 means "the whole run".
        seed: seeds initialisation and sampling.
    """

    data_root: str = "data/toycity"
    domain: str = "source"
    out: str = "runs/source/source.pt"
    arch: str = "deeplab_small"
    arch_kwargs: dict = field(default_factory=dict)
    epochs: int = 30
    batch_size: int = 8
    hflip: bool = True
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.01, head_lr_mult=1.0))
    seed: int = 0


TOYCITY_NORMALIZATION = Normalization()


def train_source(cfg: SourceConfig, progress: bool = True, log: MetricsLog | None = None) -> dict:
    """Train, evaluate on the domain's val split, save the checkpoint; return its summary."""
    seed_everything(cfg.seed)
    protocol = TOYCITY
    train_set = toycity_split(cfg.data_root, cfg.domain, "train", progress=progress)
    val_set = toycity_split(cfg.data_root, cfg.domain, "val", progress=progress)
    norm = TOYCITY_NORMALIZATION
    model = create_model(cfg.arch, protocol.num_classes, **cfg.arch_kwargs)
    g = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True, generator=g)
    total = cfg.epochs * len(loader)
    optim_cfg = cfg.optim if cfg.optim.nominal_steps else replace(cfg.optim, nominal_steps=total)
    optimizer = build_sgd(model, optim_cfg)
    model.train()
    step, t0 = 0, time.time()
    bar = tqdm(total=total, desc=f"train on {cfg.domain}", disable=not progress)
    for epoch in range(cfg.epochs):
        running = 0.0
        for batch in loader:
            images, labels = batch["image"], batch["label"]
            if cfg.hflip:
                flip = torch.rand(images.shape[0], generator=g) < 0.5
                images[flip], labels[flip] = images[flip].flip(-1), labels[flip].flip(-1)
            poly_step(optimizer, optim_cfg, step)
            loss = F.cross_entropy(model(norm(images)), labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if log is not None:
            log.write({"phase": "train_source", "epoch": epoch, "loss": running / len(loader)})
    bar.close()
    val = evaluate(model, val_set, norm, protocol, progress=progress, desc=f"eval {cfg.domain} val")
    summary = {
        "val_domain": cfg.domain,
        "val_miou": val["miou"],
        "val_per_class": val["per_class"],
        "train_seconds": round(time.time() - t0, 1),
    }
    save_checkpoint(
        cfg.out,
        model,
        arch=cfg.arch,
        arch_kwargs=cfg.arch_kwargs,
        class_names=protocol.names,
        normalization=norm,
        provenance={
            "stage": "train_source",
            "recipe": to_dict(cfg),
            f"{cfg.domain}_val_miou": val["miou"],
            "data_root": str(Path(cfg.data_root)),
        },
    )
    if log is not None:
        log.write({"phase": "train_source_done", **summary})
    return summary
