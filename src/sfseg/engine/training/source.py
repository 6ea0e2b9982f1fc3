"""Stage 0: supervised training on the labelled source domain, on the same loop as adaptation.

This is the only stage that reads source data. Each epoch is a stage of the loop (:mod:`.loop`); the run
has a run directory like an adaptation run (marker, lock, ``config.yaml``, ``metrics.jsonl``, TensorBoard,
a resumable ``state.pt`` at every epoch end and every ``runtime.save_every`` steps), beside the
checkpoint it writes: ``out`` (``runs/source/source.pt``) is the checkpoint, ``runs/source/source/`` its
run directory (:func:`source_run_dir`), and ``sfseg train-source --resume runs/source/source`` continues
a killed run exactly.

The checkpoint records the recipe, the seed, the source-val mIoU (where a source val split is given), the
code version and the inference it was scored with, so the provenance of every adapted model can be
traced. Real sources (GTA5, SYNTHIA) start from a backbone initialisation imported like any community
checkpoint (``init``: e.g. the DeepLab Caffe init or torchvision ImageNet weights), whose input
normalisation the trained model keeps. Under ``torchrun`` each rank trains on its share of every global
batch (DistributedDataParallel), scores whole val batches of its own, and rank 0 writes.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from sfseg.config import save_config, to_dict
from sfseg.constants import IGNORE_INDEX
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
    require_steps,
    step_generator,
)
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import seed_everything
from sfseg.engine.training.loop import Hook
from sfseg.engine.training.optim import build_optimizer, unwrap
from sfseg.engine.training.recipe import SourceConfig
from sfseg.engine.training.resume import resumable_state
from sfseg.engine.training.step import TrainStep, random_flip, wrap_for_training
from sfseg.engine.training.trainer import FaultInjection, PeriodicState, ProgressBar, RunTrainer
from sfseg.errors import ConfigError
from sfseg.fileio import Place, atomic_write_text, check_outputs, check_writable_file
from sfseg.models import Checkpoint, create_model, load_checkpoint
from sfseg.models.loading import network_from_init
from sfseg.models.ops import upsample_logits

TOYCITY_NORMALIZATION = Normalization()


def source_run_dir(out: str | Path) -> RunDir:
    """The run directory of a source run whose checkpoint is ``out``: ``runs/source/source.pt`` ->
    ``runs/source/source/`` (a path without a suffix gets ``.run``)."""
    out = Path(out)
    return RunDir(out.with_suffix("") if out.suffix else out.with_name(out.name + ".run"))


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


class EpochLoss(Hook):
    """The cross-entropy: checked (and shown, and logged to TensorBoard) every 10 steps, a host
    synchronisation every 10 steps and not at every one; its mean per epoch to the metrics log."""

    def __init__(self) -> None:
        self.running = 0.0

    def after_step(self) -> None:
        t = self.trainer
        self.running = self.running + t.last_loss  # a device tensor between checks
        if t.step % 10 == 0:
            value = t.last_loss.item()
            t.guard.losses({"cross_entropy": value}, t.step, t.last_good())
            t.postfix = {"loss": f"{value:.3f}"}
            t.board.scalar("loss/ce", value, t.step)
            t.board.scalar("lr", t.optimizer.param_groups[0]["lr"], t.step)

    def after_stage(self) -> None:
        t = self.trainer
        loss = float(self.running) / max(t.steps_per_epoch, 1)
        t.log.write({"phase": "train_source", "epoch": t.finished_stage, "loss": loss})
        self.running = 0.0

    def state_dict(self) -> dict:
        return {"running_loss": float(self.running)}

    def load_state_dict(self, state: dict) -> None:
        self.running = float(state.get("running_loss", 0.0))


class SourceRun(RunTrainer):
    """One source training run: ``cfg.schedule.epochs`` stages of one epoch each.

    Construction checks the paths, the data and the initialisation before anything is written.
    """

    stage_name = "epoch"

    def __init__(self, cfg: SourceConfig, progress: bool = True):
        dist, self.device = distributed.init(cfg.runtime.device)
        super().__init__(source_run_dir(cfg.out), cfg, dist, progress)
        self.cfg = cfg
        check_writable_file(Path(cfg.out), "out")  # before any training: a bad path must not cost the run
        check_outputs(
            [Place("out", cfg.out), Place("out's run directory", self.dir.path)],
            [Place("init", cfg.init), Place("data.root", cfg.data.root, tree=True)],
        )
        data = cfg.data
        self.protocol = dataset_protocol(data.dataset, data.protocol)
        if not data.train_split:
            raise ConfigError(
                f"data.train_split is required for dataset {data.dataset!r} (e.g. 'all' or a list file)"
            )
        # Missing files, size mismatches and layout errors surface here, before any training.
        self.train_set = build_dataset(
            data.dataset, data.root, data.train_split, self.protocol.name, progress=self.progress
        )
        self.val_set = None
        if data.val_split:
            self.val_set = build_dataset(
                data.dataset, data.root, data.val_split, self.protocol.name, progress=self.progress
            )
        self.steps_per_epoch = require_steps(
            len(self.train_set), cfg.schedule.batch_size, dist, data.train_split
        )
        seed_everything(cfg.seed)  # the network's initialisation below draws from it
        self.model, self.norm, self.init = self._network()
        self.settings = inference_settings(data, cfg.runtime, self.device)
        if self.settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.amp = use_amp(cfg.runtime.amp, self.device)
        self.train_model = wrap_for_training(self.model, cfg.runtime, dist, self.device)
        self.view = TrainView(self.train_set, LabelTargets(self.train_set), data.augment, cfg.seed, 0)
        self.optim = cfg.schedule.optim
        if not self.optim.nominal_steps:
            self.optim = replace(self.optim, nominal_steps=cfg.schedule.epochs * self.steps_per_epoch)
        hint = f"Is the learning rate too large (schedule.optim.lr is {self.optim.lr:g})?"
        self.guard = DivergenceGuard(self.model, max_weight_growth=0, hint=hint)
        self.board = Board(self.dir.tensorboard, enabled=False)
        self.postfix: dict | None = None
        self.register(
            _EpochBar(), EpochLoss(), PeriodicState(cfg.runtime.save_every), FaultInjection("train_source")
        )

    def _network(self):
        cfg = self.cfg
        if not cfg.init:
            model = create_model(cfg.arch, self.protocol.num_classes, **cfg.arch_kwargs)
            return model.to(self.device), TOYCITY_NORMALIZATION, None
        init = load_checkpoint(cfg.init, family=cfg.init_family, classes=self.protocol.name)
        init.check_classes(self.protocol.names, cfg.data.root)
        model = network_from_init(init, cfg.arch, cfg.arch_kwargs, cfg.init)
        return model.to(self.device), init.normalization, init

    def build_optimizer(self) -> torch.optim.Optimizer:
        return build_optimizer(self.train_model, self.optim)

    # ------------------------------------------------------------------------------------------- run
    def run(self, mode: str = "new", state: dict | None = None) -> dict:
        """Write the run directory and train; return the summary (``val_miou`` where a val split is given).

        Args:
            mode: ``new`` (neither the run directory nor ``out`` may hold another run), ``overwrite``
                (replace an earlier sfseg run) or ``resume``.
        """
        self.t_start = time.time()
        if mode == "new" and Path(self.cfg.out).exists():
            raise ConfigError(f"out {self.cfg.out} exists; --overwrite replaces it, or choose another out")
        if self.dist.is_main:
            self.dir.claim(mode)
        distributed.barrier()

        def body() -> dict:
            self.begin(mode, state)
            self.train(self.cfg.schedule.epochs)
            return self.finish()

        return self.guarded(body)

    def begin(self, mode: str, state: dict | None) -> None:
        tensorboard = self.cfg.runtime.tensorboard and self.dist.is_main
        if tensorboard:
            self.dir.mkdir(self.dir.tensorboard)
        if mode == "resume":
            self.load_state_dict(state if state is not None else resumable_state(self.dir.path, self.recipe))
            self.board = Board(self.dir.tensorboard, tensorboard, purge_step=self.step)
            self.log.write({"phase": "resume", "epoch": self.stage, "step": self.step})
            return
        if self.dist.is_main:
            save_config(self.cfg, self.dir.config, root=self.dir.path)
        distributed.barrier()
        self.board = Board(self.dir.tensorboard, tensorboard)
        self.log.write(
            {
                "phase": "start",
                "stage": "train_source",
                "processes": self.dist.world,
                "threads": torch.get_num_threads(),
                "config": to_dict(self.cfg),
            }
        )
        self.optimizer = self.build_optimizer()

    def stage_batches(self):
        self.view.epoch = self.stage
        batches = epoch_batches(
            len(self.train_set), self.cfg.schedule.batch_size, self.cfg.seed, 0, self.stage, self.dist
        )
        self.train_model.train()
        return DataLoader(
            self.view,
            batch_sampler=batches[self.batch :],
            num_workers=self.cfg.runtime.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate,
        )

    def run_step(self, batch: dict) -> None:
        data = self.cfg.data
        g = step_generator(self.cfg.seed, self.step, self.dist.rank)
        images, labels = finish_crops(batch, data.augment.crop, self.device)
        labels = labels.long()
        if data.hflip:
            images, labels = random_flip(images, labels, g)

        def cross_entropy(x):
            logits = upsample_logits(self.train_model(x), labels.shape[-2:], data.align_corners)
            return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), None

        if not hasattr(self, "train_step"):
            self.train_step = TrainStep(
                self.optimizer, self.optim, self.norm, self.settings.channels_last, self.amp, self.guard
            )
        loss, _ = self.train_step(self.step, images, cross_entropy, self.last_good())
        self.last_loss = loss.detach()

    def finish(self) -> dict:
        """Score the val split (if any), write the checkpoint with its provenance and the summary."""
        cfg, data = self.cfg, self.cfg.data
        self.guard.weights(self.step, self.last_good())
        domain = toycity_domain(data.val_split or data.train_split)
        summary = {
            "val_domain": domain,
            "val_split": data.val_split,
            "val_miou": None,
            "train_seconds": round(self.seconds, 1),
            "amp": self.amp,
            "channels_last": self.settings.channels_last,
            "checkpoint": str(cfg.out),
        }
        provenance = {
            "stage": "train_source",
            "recipe": to_dict(cfg),
            "data_root": str(Path(data.root)),
            "data_spec": data_spec(data.root, toycity_domain(data.train_split)),
        }
        if self.init is not None:
            provenance["init"] = self.init.provenance
        if self.val_set is not None:
            val = evaluate(
                Inference.from_settings(self.model, self.norm, self.settings),
                self.val_set,
                self.protocol,
                batch_size=cfg.runtime.eval_batch_size,
                workers=cfg.runtime.num_workers,
                progress=self.progress,
                desc=f"eval {data.val_split}",
                dist=self.dist,
            )
            summary.update(val_miou=val["miou"], final=val)
            log_eval(self.board, val, self.step)
            provenance[f"{domain}_val_miou" if data.dataset == "toycity" else "source_val_miou"] = val["miou"]
        if self.dist.is_main:
            Checkpoint.of(unwrap(self.model), self.protocol.names, self.norm, self.settings, provenance).save(
                cfg.out
            )
            atomic_write_text(self.dir.summary, json.dumps(summary, indent=1), root=self.dir.path)
        self.board.close()
        self.log.write({"phase": "train_source_done", **summary})
        self.save_done()
        return summary


class _EpochBar(ProgressBar):
    """The progress bar of an epoch, with the last checked loss."""

    def __init__(self) -> None:
        super().__init__(lambda e: f"epoch {e + 1}")

    def before_stage(self) -> None:
        t = self.trainer
        self.describe = lambda e: (
            f"train on {t.cfg.data.dataset} {t.cfg.data.train_split}, epoch {e + 1}/{t.cfg.schedule.epochs}"
        )
        super().before_stage()

    def after_step(self) -> None:
        super().after_step()
        if self.trainer.postfix:
            self.bar.set_postfix(self.trainer.postfix)


def train_source(cfg: SourceConfig, progress: bool = True, mode: str = "new") -> dict:
    """Train the source model of ``cfg`` (see :class:`SourceRun`); returns its summary.

    Args:
        mode: ``new``, ``overwrite`` or ``resume`` (``cfg.out``'s run directory holds a killed run).
    """
    run_dir = source_run_dir(cfg.out)
    state = None
    if mode == "resume":
        if not run_dir.is_run():
            raise ConfigError(f"{run_dir} holds no source run to resume")
        state = resumable_state(run_dir.path, cfg)
    return SourceRun(cfg, progress).run(mode, state)
