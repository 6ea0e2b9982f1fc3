"""Stage 0: supervised training on the labelled source domain.

This is the only stage that reads source data. The checkpoint records the recipe, the seed, the
source-val mIoU (where a source val split is given), the code version and the inference it was scored
with, so the provenance of every adapted model can be traced. Real sources (GTA5, SYNTHIA) start from a
backbone initialisation imported like any community checkpoint (``init``: e.g. the DeepLab Caffe init or
torchvision ImageNet weights), whose input normalisation the trained model keeps.

The training step, the distributed wrapping, the data view and the optimisers are the ones adaptation
uses (:mod:`sfseg.engine.training.step`). Under ``torchrun`` each rank trains on its share of every global
batch (DistributedDataParallel), scores whole val batches of its own, and rank 0 writes the checkpoint.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.config import to_dict
from sfseg.data.normalization import Normalization
from sfseg.data.registry import build_dataset, dataset_protocol
from sfseg.data.toycity import data_spec, toycity_domain
from sfseg.engine.evaluation.evaluate import evaluate
from sfseg.engine.evaluation.inference import Inference, inference_settings
from sfseg.engine.reporting.board import Board, log_eval
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.config import use_amp
from sfseg.engine.runtime.guard import DivergenceGuard
from sfseg.engine.runtime.loading import (
    LabelTargets,
    TrainView,
    collate,
    epoch_batches,
    finish_crops,
    step_generator,
    steps_per_epoch,
)
from sfseg.engine.runtime.runlog import MetricsLog, seed_everything
from sfseg.engine.training.optim import build_optimizer, unwrap
from sfseg.engine.training.recipe import SourceConfig
from sfseg.engine.training.step import TrainStep, random_flip, wrap_for_training
from sfseg.errors import ConfigError
from sfseg.fileio import Place, check_outputs, check_writable_file
from sfseg.models import Checkpoint, create_model, load_checkpoint
from sfseg.models.loading import network_from_init
from sfseg.models.ops import upsample_logits

TOYCITY_NORMALIZATION = Normalization()


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
    domain = toycity_domain(cfg.data.train_split)
    return theirs == mine and provenance.get("data_spec") == data_spec(cfg.data.root, domain)


def train_source(cfg: SourceConfig, progress: bool = True, log: MetricsLog | None = None) -> dict:
    """Train, evaluate on the val split (if any), save the checkpoint; return its summary."""
    d, device = distributed.init(cfg.runtime.device)
    progress = progress and d.is_main
    check_writable_file(Path(cfg.out), "out")  # before any training: a bad path must not cost the run
    check_outputs(
        [Place("out", cfg.out)], [Place("init", cfg.init), Place("data.root", cfg.data.root, tree=True)]
    )
    data = cfg.data
    protocol = dataset_protocol(data.dataset, data.protocol)
    if not data.train_split:
        raise ConfigError(
            f"data.train_split is required for dataset {data.dataset!r} (e.g. 'all' or a list file)"
        )
    # Missing files, size mismatches and layout errors surface here, before any training.
    train_set = build_dataset(data.dataset, data.root, data.train_split, protocol.name, progress=progress)
    val_set = (
        build_dataset(data.dataset, data.root, data.val_split, protocol.name, progress=progress)
        if data.val_split
        else None
    )
    bs = cfg.schedule.batch_size
    if steps_per_epoch(len(train_set), bs, d.world) == 0:
        raise ConfigError(
            f"schedule.batch_size: {bs}{f' x {d.world} processes' if d.enabled else ''} is larger than the "
            f"{len(train_set)} images of split {data.train_split!r}: an epoch would have no step"
        )
    seed_everything(cfg.seed)
    if cfg.init:
        init = load_checkpoint(cfg.init, family=cfg.init_family, classes=protocol.name)
        init.check_classes(protocol.names, data.root)
        model, norm = network_from_init(init, cfg.arch, cfg.arch_kwargs, cfg.init), init.normalization
    else:
        model, norm = create_model(cfg.arch, protocol.num_classes, **cfg.arch_kwargs), TOYCITY_NORMALIZATION
    model.to(device)
    settings = inference_settings(data, cfg.runtime, device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = use_amp(cfg.runtime.amp, device)
    train_model = wrap_for_training(model, cfg.runtime, d, device)
    view = TrainView(train_set, LabelTargets(train_set), data.augment, cfg.seed, 0)
    per_epoch = steps_per_epoch(len(train_set), bs, d.world)
    total = cfg.schedule.epochs * per_epoch
    optim_cfg = cfg.schedule.optim
    if not optim_cfg.nominal_steps:
        optim_cfg = replace(optim_cfg, nominal_steps=total)
    optimizer = build_optimizer(train_model, optim_cfg)
    train_model.train()
    guard = DivergenceGuard(
        model,
        max_weight_growth=0,
        hint=f"Is the learning rate too large (schedule.optim.lr is {optim_cfg.lr:g})?",
    )
    train_step = TrainStep(optimizer, optim_cfg, norm, settings.channels_last, amp, guard)
    nothing_saved = "none: train-source writes its checkpoint at the end"
    step, t0 = 0, time.time()
    out = Path(cfg.out)
    board = Board(out.parent / "tensorboard" / out.stem, enabled=d.is_main and cfg.runtime.tensorboard)
    bar = tqdm(total=total, desc=f"train on {data.dataset} {data.train_split}", disable=not progress)
    for epoch in range(cfg.schedule.epochs):
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
            images, labels = finish_crops(batch, data.augment.crop, device)
            labels = labels.long()
            if data.hflip:
                images, labels = random_flip(images, labels, g)

            def cross_entropy(x, labels=labels):
                logits = upsample_logits(train_model(x), labels.shape[-2:], data.align_corners)
                return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), None

            loss, _ = train_step(step, images, cross_entropy, nothing_saved)
            running += loss.detach()
            step += 1
            bar.update()
            if step % 10 == 0:  # a host sync every 10 steps, not every step
                value = loss.item()
                guard.losses({"cross_entropy": value}, step, nothing_saved)
                bar.set_postfix(loss=f"{value:.3f}")
                board.scalar("loss/ce", value, step)
                board.scalar("lr", optimizer.param_groups[0]["lr"], step)
        if log is not None:
            log.write({"phase": "train_source", "epoch": epoch, "loss": running.item() / max(per_epoch, 1)})
    bar.close()
    guard.weights(step, "none: nothing was written")
    domain = toycity_domain(data.val_split or data.train_split)
    summary = {
        "val_domain": domain,
        "val_split": data.val_split,
        "val_miou": None,
        "train_seconds": round(time.time() - t0, 1),
        "amp": amp,
        "channels_last": settings.channels_last,
    }
    provenance = {
        "stage": "train_source",
        "recipe": to_dict(cfg),
        "data_root": str(Path(data.root)),
        "data_spec": data_spec(data.root, toycity_domain(data.train_split)),
    }
    if cfg.init:
        provenance["init"] = init.provenance
    if val_set is not None:
        val = evaluate(
            Inference.from_settings(model, norm, settings),
            val_set,
            protocol,
            batch_size=cfg.runtime.eval_batch_size,
            workers=cfg.runtime.num_workers,
            progress=progress,
            desc=f"eval {data.val_split}",
            dist=d,
        )
        summary.update(val_miou=val["miou"], val_per_class=val["per_class"])
        log_eval(board, val, step)
        provenance[f"{domain}_val_miou" if data.dataset == "toycity" else "source_val_miou"] = val["miou"]
    if d.is_main:
        Checkpoint.of(unwrap(model), protocol.names, norm, settings, provenance).save(cfg.out)
    board.close()
    distributed.barrier()
    if log is not None:
        log.write({"phase": "train_source_done", **summary})
    return summary
