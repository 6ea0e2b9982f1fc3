"""An adaptation run as an object: the round loop shared by every self-training method, with exact resume.

Per round ``r`` (You et al., ACM MM 2021, Sec. 3):

1. run the current model over the whole target train set and choose pseudo-labels (written as PNGs);
2. train ``epochs_per_round`` epochs with the method's loss parts;
3. ``alpha += alpha_step``; learning rate ``/= lr_round_decay``; optimizer rebuilt (momentum reset).

Target-val scores are logged after every round for monitoring only: ``final.pt`` is always the model after
the last round (the very model whose score the summary reports), never the best round on the split it is
reported on.

:class:`AdaptationRun` owns the model, the teacher, the optimizer, the round, the step and the history.
Its :meth:`~AdaptationRun.state_dict` is written atomically to ``<out>/state.pt`` at round boundaries,
after each round's pseudo-labels, and every ``runtime.save_every`` steps; ``sfseg adapt --resume OUT``
continues from it and gives the same weights and metrics as an uninterrupted run. Randomness is a function
of (seed, round, epoch, index) for crops and epoch orders and of (seed, step, rank) for flips,
complementary ranks and ClassMix, so nothing but the step counter needs restoring.

Under ``torchrun`` every rank labels and scores whole batches of its own (labels do not depend on the
number of processes), counters are summed, training uses DistributedDataParallel, and rank 0 writes the
logs, states and checkpoints.
"""

from __future__ import annotations

import ast
import json
import math
import os
import random
import resource
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.adapt.bn import (
    adabn,
    freeze_bn_affine,
    frozen_bn_buffers,
    set_bn_mode,
    train_downsample_bn_affine,
    train_only_bn_affine,
)
from sfseg.adapt.config import AdaptConfig
from sfseg.adapt.losses import complementary_ranks
from sfseg.adapt.mixing import class_mix, class_mix_masks
from sfseg.adapt.parts import StepInputs, build_loss_parts, total_loss
from sfseg.adapt.pseudo_labels import build_pseudo_labeller
from sfseg.adapt.teacher import EMATeacher
from sfseg.config import from_dict, load_config, save_config, to_dict
from sfseg.data.datasets import check_one_size
from sfseg.data.registry import build_dataset, dataset_protocol
from sfseg.engine import distributed
from sfseg.engine.board import Board, grid_indices, log_eval, log_pseudo_labels, prediction_grid
from sfseg.engine.evaluate import evaluate
from sfseg.engine.guard import DivergenceError, DivergenceGuard
from sfseg.engine.inference import Inference, use_amp, use_channels_last
from sfseg.engine.labelling import class_shares, collapse_check, label_round
from sfseg.engine.loading import (
    TrainView,
    collate,
    epoch_batches,
    finish_crops,
    sharded_loader,
    step_generator,
    steps_per_epoch,
)
from sfseg.engine.recipes import recipe_path
from sfseg.engine.report import figure_rgb, has_diagnostics, pl_diagnostics_figure
from sfseg.engine.rundir import RunDir
from sfseg.engine.runlog import MetricsLog, seed_everything
from sfseg.engine.select import check_validator, score_model
from sfseg.errors import ConfigError, ResumeError
from sfseg.fileio import atomic_torch_save, atomic_write_bytes, atomic_write_text
from sfseg.models import load_checkpoint, save_checkpoint
from sfseg.models.ops import upsample_logits
from sfseg.optim import build_sgd, poly_step, unwrap

STATE_FORMAT = "sfseg-run-state-v1"
# Keys of the recipe a resumed run may change: where and how fast it runs, not what it computes.
RESUMABLE_CHANGES = ("runtime.device", "runtime.num_workers", "runtime.save_every", "runtime.tensorboard")


def peak_memory() -> dict:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (GiB)."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("loss_weights", "arch_kwargs"):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def recipe_differences(a: dict, b: dict, ignore: tuple[str, ...] = RESUMABLE_CHANGES) -> list[str]:
    """Dotted keys whose values differ between two recipe dicts (``ignore`` excepted). Both are read
    through the schema first, so a key a recipe written by an older sfseg lacks counts as its default."""
    fa, fb = _flat(_normalised(a)), _flat(_normalised(b))
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and k not in ignore)


def _normalised(recipe: dict) -> dict:
    try:
        return to_dict(from_dict(AdaptConfig, recipe))
    except ConfigError:
        return recipe


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": repr(random.getstate()),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    keys = state["numpy_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))


def read_state(out: Path) -> dict:
    """The saved state of the run in ``out``; one clear error when it is missing or unreadable."""
    path = RunDir(out).state
    if not path.is_file():
        raise ResumeError(
            f"{path} not found: {out} has no resumable state (was it written by sfseg adapt, and did it "
            "get past the source-model evaluation?)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (torch raises several types for a damaged file)
        raise ResumeError(
            f"{path} is truncated or corrupt ({type(e).__name__}); it cannot be resumed. Start the run "
            "again with --overwrite"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not an sfseg run state; it cannot be resumed")
    return state


class AdaptationRun:
    """One adaptation run: ``cfg.checkpoint`` adapted to the target domain, written to ``cfg.out``.

    Construction checks everything that can be checked without writing: the method composition, the
    checkpoint and its classes, the data, and that the batch size fits the split. :meth:`run` writes.

    Args:
        cfg: the recipe (for a two-stage recipe, use :func:`run_adaptation`, which runs its first stage).
        progress: show progress bars (rank 0 only).
        recipe: what ``config.yaml`` and the state record as the run's recipe, when it differs from ``cfg``
            (the second stage of a two-stage recipe runs ``cfg`` with the first stage's checkpoint).
    """

    def __init__(self, cfg: AdaptConfig, progress: bool = True, recipe: AdaptConfig | None = None):
        self.cfg = cfg
        self.recipe = recipe or cfg
        self.dist, self.device = distributed.init(cfg.runtime.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # the summary reports this run's peak
        self.progress = progress and self.dist.is_main
        data, method, sched = cfg.data, cfg.method, cfg.schedule
        self.protocol = dataset_protocol(data.dataset, data.protocol)
        self.parts = build_loss_parts(method, self.protocol.num_classes, sched.rounds)
        self.labeller = build_pseudo_labeller(method.pseudo_labels, self.protocol.num_classes)
        self.ckpt = load_checkpoint(cfg.checkpoint, family=cfg.checkpoint_family, classes=self.protocol.name)
        self.ckpt.check_classes(self.protocol.names, data.root)
        # Target train labels (where the split has them) feed only the pseudo-label diagnostics, never a loss.
        self.train_set = build_dataset(
            data.dataset,
            data.root,
            data.train_split,
            self.protocol.name,
            labels="auto",
            progress=self.progress,
        )
        self.val_set = (
            build_dataset(data.dataset, data.root, data.val_split, self.protocol.name, progress=self.progress)
            if data.val_split
            else None
        )
        rt = cfg.runtime
        for split, ds in ((data.train_split, self.train_set), (data.val_split, self.val_set)):
            if ds is not None and rt.eval_batch_size > 1:
                check_one_size(
                    ds,
                    f"split {split!r} of {data.root}",
                    "batches need one size: set runtime.eval_batch_size: 1",
                )
        if sched.rounds > 0 and sched.batch_size > 1 and data.augment.kind == "none":
            check_one_size(
                self.train_set,
                f"split {data.train_split!r} of {data.root}",
                "training batches need one size: set data.augment.kind: scale_crop (random crops of one "
                "size) or schedule.batch_size: 1",
            )
        n = len(self.train_set)
        if sched.rounds > 0 and steps_per_epoch(n, sched.batch_size, self.dist.world) == 0:
            raise ConfigError(
                f"schedule.batch_size: {sched.batch_size}"
                f"{f' x {self.dist.world} processes' if self.dist.enabled else ''} is larger than the "
                f"{n} images of split {data.train_split!r}: an epoch would have no step. Use a batch size "
                f"of at most {n // self.dist.world}"
            )
        self.dir = RunDir(cfg.out)
        self.out = self.dir.path
        self.log = MetricsLog(self.dir.metrics, enabled=self.dist.is_main)
        self.norm = self.ckpt.normalization
        self.amp = use_amp(cfg.runtime.amp, self.device)
        self.model = self._build_model()
        self.inference = Inference.from_config(self.model, self.norm, data, cfg.runtime)
        self.teacher = (
            EMATeacher(self.model, method.teacher.max_decay, data.align_corners).to(self.device)
            if method.teacher.ema
            else None
        )
        self.train_model: nn.Module = self.model
        if self.dist.enabled and sched.rounds > 0:
            model = self.model
            if cfg.runtime.sync_bn:
                if self.device.type != "cuda":
                    raise ConfigError("runtime.sync_bn needs CUDA devices (SyncBatchNorm has no CPU path)")
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # Run state (what state_dict() saves).
        self.round = 0
        self.labelled = False
        self.epoch = 0
        self.batch = 0
        self.step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.sums: dict[str, float] = {}
        self.round_steps = 0
        self.history: list[dict] = []
        self.round_stats: list[dict] = []
        self.start_share: dict[str, float] | None = None
        self.pl_stats: dict | None = None
        self.selection: list[dict] = []
        self.elapsed = 0.0
        self.board = Board(self.dir.tensorboard, enabled=False)
        self.saved_step: int | None = None
        lr = f"schedule.optim.lr is {sched.optim.lr:g}"
        self.guard = DivergenceGuard(
            self.model,
            sched.max_weight_growth,
            sched.max_loss,
            f"Is the learning rate too large ({lr})? Check also the loss weights and the checkpoint.",
        )
        self.grid_images = grid_indices(len(self.train_set))
        if cfg.select.validator:
            check_validator(cfg.select.validator)

    # ----------------------------------------------------------------------------------------- building
    def _build_model(self) -> nn.Module:
        method = self.cfg.method
        model = self.ckpt.build().to(self.device)
        if use_channels_last(self.cfg.runtime.channels_last, self.device):
            model = model.to(memory_format=torch.channels_last)
        if method.trainable == "bn_affine":
            train_only_bn_affine(model)
        else:
            freeze_bn_affine(model)
            if method.bn_affine == "downsample":
                train_downsample_bn_affine(model)
        return model

    def _set_bn(self, model: nn.Module) -> None:
        model.eval()
        set_bn_mode(model, self.cfg.method.bn_mode)

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly (tensors and plain values only)."""
        return {
            "format": STATE_FORMAT,
            "config": to_dict(self.recipe),
            "phase": "run",
            "round": self.round,
            "labelled": bool(self.labelled),
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "model": unwrap(self.model).state_dict(),
            "teacher": None if self.teacher is None else self.teacher.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "sums": dict(self.sums),
            "round_steps": self.round_steps,
            "history": json.dumps(self.history),
            "round_stats": json.dumps(self.round_stats),
            "start_share": json.dumps(self.start_share),
            "pl_stats": json.dumps(self.pl_stats),
            "selection": json.dumps(self.selection),
            "metrics_bytes": self.log.size(),
            "elapsed": self.elapsed,
            "rng": _rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round, self.labelled = int(state["round"]), bool(state["labelled"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        unwrap(self.model).load_state_dict(state["model"])
        if self.teacher is not None and state["teacher"] is not None:
            self.teacher.load_state_dict(state["teacher"])
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = self._optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        self.sums, self.round_steps = dict(state["sums"]), int(state["round_steps"])
        self.history = json.loads(state["history"])
        self.round_stats = json.loads(state["round_stats"])
        self.start_share = json.loads(state["start_share"])
        self.pl_stats = json.loads(state["pl_stats"])
        self.selection = json.loads(state.get("selection", "[]"))
        self.elapsed = float(state["elapsed"])
        _set_rng_state(state["rng"])
        self.log.truncate(int(state["metrics_bytes"]))

    def save_state(self) -> None:
        """Write the resumable state, once the weights are known to be sound (every rank checks its own)."""
        self.guard.weights(self.step, self._last_good())
        if self.dist.is_main:
            atomic_torch_save(self.state_dict(), self.dir.state)
        self.saved_step = self.step
        distributed.barrier()

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "none: the run had not saved a state yet"
        return f"{self.dir.state}, step {self.saved_step}; sfseg adapt --resume {self.out} continues from it"

    def save_model(self, name: str, **where) -> Path:
        """The one checkpoint-saving call: the unwrapped model with its metadata and provenance."""
        path = self.out / name
        self.guard.weights(self.step, self._last_good())
        if self.dist.is_main:
            cfg = self.cfg
            provenance = {"stage": "adapt", "method": cfg.name, **where, "recipe": to_dict(cfg)}
            provenance["parent"] = self.ckpt.provenance
            save_checkpoint(
                path,
                unwrap(self.model),
                arch=self.ckpt.arch,
                arch_kwargs=self.ckpt.arch_kwargs,
                class_names=self.ckpt.class_names,
                normalization=self.norm,
                provenance=provenance,
            )
        distributed.barrier()
        return path

    # ----------------------------------------------------------------------------------------- phases
    def evaluate(self, round_index: int, phase: str) -> dict | None:
        if self.val_set is None:
            return None
        t0 = time.time()
        res = evaluate(
            self.inference,
            self.val_set,
            self.protocol,
            batch_size=self.cfg.runtime.eval_batch_size,
            workers=self.cfg.runtime.num_workers,
            progress=self.progress,
            desc=f"eval ({phase})",
            dist=self.dist,
        )
        self.log.write(
            {
                "phase": phase,
                "round": round_index,
                "split": "target_val",
                "seconds": round(time.time() - t0, 2),
                **res,
            }
        )
        log_eval(self.board, res, self.step)
        return res

    def _look(self, r: int, pseudo_paths: list[Path] | None) -> None:
        """The round's picture: a few fixed target images with pseudo-labels, predictions and labels."""
        if not self.dist.is_main:
            return
        grid = prediction_grid(self.inference, self.train_set, self.grid_images, self.protocol, pseudo_paths)
        self.dir.figures.mkdir(exist_ok=True)
        atomic_write_bytes(self.dir.prediction_grid(r), lambda p: Image.fromarray(grid).save(p, "PNG"))
        self.board.image("predictions", grid, self.step)
        if r >= 0 and has_diagnostics(self.round_stats):
            fig = pl_diagnostics_figure(self.round_stats, self.protocol, f"{self.cfg.name}: pseudo-labels")
            rgb = figure_rgb(fig)
            atomic_write_bytes(self.dir.diagnostics_figure, lambda p: Image.fromarray(rgb).save(p, "PNG"))
            self.board.image("pl_diagnostics", rgb, self.step)

    def _select_score(self, r: int) -> None:
        """Score the current model with the recipe's validator (no target label is read)."""
        name = self.cfg.select.validator
        if not name:
            return
        source = self.ckpt.build().to(self.device)
        if r < 0:
            previous = None
        elif r == 0:
            previous = source
        else:
            previous = load_checkpoint(self.dir.round_checkpoint(r - 1)).build().to(self.device)
        score = score_model(
            unwrap(self.model),
            self.norm,
            self.train_set,
            self.protocol,
            [name],
            {"previous": previous, "source": source},
            self.cfg.data,
            batch_size=self.cfg.runtime.eval_batch_size,
            max_images=self.cfg.select.max_images,
        )[name]
        self.selection.append({"round": r, "validator": name, "score": score})
        self.log.write({"phase": "select_score", "round": r, "validator": name, "score": score})
        self.board.scalar(f"select/{name}", score, self.step)

    def _adabn(self) -> None:
        rt = self.cfg.runtime
        loader = sharded_loader(
            self.inference.view(self.train_set), rt.eval_batch_size, rt.num_workers, self.dist
        )
        inputs = (self.inference.network_input(b["image"]) for b in loader)
        with self.inference.autocast():
            adabn(self.model, inputs, progress=self.progress, all_reduce_sum=distributed.all_reduce_sum)

    def _label(self, r: int) -> list[Path]:
        alpha, capped = self.cfg.round_alpha(r)
        t0 = time.time()
        self._set_bn(self.model)  # the reference labels with BN in the same mode as it trains
        rt = self.cfg.runtime
        paths, stats = label_round(
            self.inference,
            self.train_set,
            self.labeller,
            alpha,
            self.pl_dir(r),
            self.protocol,
            rt.eval_batch_size,
            rt.num_workers,
            rt.logit_cache_gib,
            self.dist,
            self.progress,
            complementary_ranks=self._complementary_ranks(),
        )
        stats["alpha_capped"] = capped
        stats["seconds"] = round(time.time() - t0, 1)
        if capped:
            self._warn(
                f"round {r}: alpha {self.cfg.method.pseudo_labels.alpha} + {r} x alpha_step is above 1; "
                "capped at 1"
            )
        if stats["never_predicted"]:
            self._warn(
                f"round {r}: classes never predicted, no pseudo-labels for them: {stats['never_predicted']}"
            )
        self.start_share = self.start_share or stats["pred_share"]
        stats["collapsed"] = collapse_check(
            self.start_share, stats, self.cfg.method.collapse_warning, f"round {r}", self._warn
        )
        self.log.write({"phase": "pseudo_labels", "round": r, **stats})
        log_pseudo_labels(self.board, stats, self.step)
        self.pl_stats = stats
        return paths

    def _complementary_ranks(self) -> list[int] | None:
        """The ranks negative learning draws from, when the method has it (for its diagnostics)."""
        if "negative" not in self.cfg.method.losses:
            return None
        return complementary_ranks(self.protocol.num_classes, self.cfg.method.negative_width)

    def _share_probe(self, r: int) -> dict:
        """The start-of-round shares for methods without pseudo-labels (their collapse reference)."""
        self._set_bn(self.model)
        rt = self.cfg.runtime
        with frozen_bn_buffers(self.model):
            stats = class_shares(
                self.inference,
                self.train_set,
                self.protocol,
                rt.eval_batch_size,
                rt.num_workers,
                self.dist,
                self.progress,
            )
        self.start_share = self.start_share or stats["pred_share"]
        stats["collapsed"] = collapse_check(
            self.start_share, stats, self.cfg.method.collapse_warning, f"round {r}", self._warn
        )
        self.log.write({"phase": "pseudo_labels", "round": r, **stats})
        log_pseudo_labels(self.board, stats, self.step)
        self.pl_stats = stats
        return stats

    def pl_dir(self, r: int) -> Path:
        return self.dir.pseudo_labels(r)

    def _optimizer(self) -> torch.optim.Optimizer:
        scale = self.cfg.schedule.lr_round_decay ** (-self.round)
        return build_sgd(self.train_model, self.cfg.schedule.optim, lr_scale=scale)

    def _warn(self, text: str) -> None:
        if self.dist.is_main:
            tqdm.write(text)

    def _step_inputs(self, x: torch.Tensor, pseudo: torch.Tensor | None, generator) -> StepInputs:
        """The student's forward pass, after the teacher's labels and ClassMix where the method has them."""
        method = self.cfg.method
        t_conf = t_label = None
        if self.teacher is not None:
            t_conf, t_label = self.teacher.predict(x)
            if pseudo is not None:
                # Class-balanced pseudo-labels override the teacher, with confidence 1.
                chosen = pseudo != IGNORE_INDEX
                t_label = torch.where(chosen, pseudo, t_label)
                t_conf = torch.where(chosen, torch.ones_like(t_conf), t_conf)
        if method.mixing == "classmix":
            masks = class_mix_masks(t_label if t_label is not None else pseudo, generator)
            x = class_mix(masks, x)[0]
            pseudo, t_label, t_conf = (
                None if t is None else class_mix(masks, t)[0] for t in (pseudo, t_label, t_conf)
            )
        logits = upsample_logits(self.train_model(x), x.shape[-2:], self.cfg.data.align_corners)
        return StepInputs(logits, pseudo, generator, teacher_labels=t_label, teacher_confidence=t_conf)

    def _train_round(self, r: int, pseudo_paths: list[Path] | None) -> None:
        cfg, sched, rt = self.cfg, self.cfg.schedule, self.cfg.runtime
        t0 = time.time()
        crop_on_device = self.device.type == "cuda"
        view = TrainView(self.train_set, pseudo_paths, cfg.data.augment, cfg.seed, r, crop_on_device)
        if self.optimizer is None:
            self.optimizer = self._optimizer()  # rebuilt every round: momentum reset
        self.train_model.train()
        set_bn_mode(self.train_model, cfg.method.bn_mode)
        per_epoch = steps_per_epoch(len(self.train_set), sched.batch_size, self.dist.world)
        done = self.epoch * per_epoch + self.batch
        bar = tqdm(
            total=sched.epochs_per_round * per_epoch,
            initial=done,
            desc=f"round {r} train",
            disable=not self.progress,
        )
        channels_last = use_channels_last(rt.channels_last, self.device)
        # One loader for the rest of the round, its batches spanning the epochs: workers start once.
        n = len(self.train_set)
        epochs = [
            [[(e, i) for i in b] for b in epoch_batches(n, sched.batch_size, cfg.seed, r, e, self.dist)]
            for e in range(self.epoch, sched.epochs_per_round)
        ]
        epochs[0] = epochs[0][self.batch :]
        loader = DataLoader(
            view,
            batch_sampler=[b for e in epochs for b in e],
            num_workers=rt.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate,
            prefetch_factor=4 if rt.num_workers else None,
        )
        for batch in loader:
            self._train_step(batch, channels_last)
            self.batch += 1
            if self.batch == per_epoch:
                self.epoch, self.batch = self.epoch + 1, 0
            bar.update()
            if rt.save_every and self.step % rt.save_every == 0 and self.epoch < sched.epochs_per_round:
                self.save_state()
            _fault(cfg.name, "step", self.step)
        bar.close()
        n = max(self.round_steps, 1)
        self.log.write(
            {
                "phase": "train",
                "round": r,
                "steps": self.round_steps,
                "seconds": round(time.time() - t0, 1),
                "lr_scale": sched.lr_round_decay ** (-r),
                **{f"loss_{k}": v / n for k, v in self.sums.items()},
            }
        )

    def _train_step(self, batch: dict, channels_last: bool) -> None:
        cfg = self.cfg
        gen = step_generator(cfg.seed, self.step, self.dist.rank)
        images, pseudo = finish_crops(batch, cfg.data.augment.crop, self.device)
        pseudo = None if pseudo is None else pseudo.long()
        if cfg.data.hflip:
            flip = (torch.rand(images.shape[0], generator=gen) < 0.5).to(self.device)
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(-1), images)
            if pseudo is not None:
                pseudo = torch.where(flip.view(-1, 1, 1), pseudo.flip(-1), pseudo)
        poly_step(self.optimizer, cfg.schedule.optim, self.step)
        x = self.norm(images)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            inputs = self._step_inputs(x, pseudo, gen)
            loss, values = total_loss(self.parts, inputs)
        total = sum(w * values[part.name] for w, part in self.parts)
        self.guard.losses(values, self.step, self._last_good(), total)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.teacher is not None:
            self.teacher.update(unwrap(self.model), self.step)
        self.step += 1
        self.round_steps += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.board.scalars("loss", {**values, "total": float(loss.detach())}, self.step)
        self.board.scalar("lr", self.optimizer.param_groups[0]["lr"], self.step)

    # ------------------------------------------------------------------------------------------- run
    def run(self, mode: str = "new", state: dict | None = None) -> dict:
        """Write the run directory and adapt.

        Args:
            mode: ``new``, ``overwrite``, ``claimed`` (the directory was prepared by the caller) or
                ``resume``.
            state: for ``resume``, the state already read and checked by :func:`resumable_state`.
        """
        if self.dist.is_main:
            if mode == "claimed":
                self.dir.lock()
            else:
                self.dir.claim(mode)
        distributed.barrier()
        try:
            return self._run(mode, state)
        except DivergenceError as e:
            self.log.write({"phase": "diverged", "step": self.step, "round": self.round, "message": str(e)})
            raise
        finally:
            if self.dist.is_main:
                self.dir.unlock()

    def _run(self, mode: str, state: dict | None) -> dict:
        cfg = self.cfg
        t_start = time.time()
        tb = self.dist.is_main and cfg.runtime.tensorboard
        if mode == "resume":
            state = state if state is not None else resumable_state(self.out, self.recipe)
            self.load_state_dict(state)
            self.board = Board(self.dir.tensorboard, tb, purge_step=self.step)
            self.log.write({"phase": "resume", "round": self.round, "step": self.step, "time": _now()})
        else:
            if self.dist.is_main:
                save_config(self.recipe, self.dir.config)
            distributed.barrier()
            self.board = Board(self.dir.tensorboard, tb)
            seed_everything(cfg.seed)
            self.log.write(
                {
                    "phase": "start",
                    "method": cfg.name,
                    "time": _now(),
                    "processes": self.dist.world,
                    "device": str(self.device),
                    "config": to_dict(cfg),
                }
            )
            self._set_bn(self.model)
            self.history = [self.evaluate(-1, "source_model")]
            if cfg.method.adabn:
                self._adabn()
                self.history.append(self.evaluate(-1, "adabn"))
            self._look(-1, None)
            self._select_score(-1)
            self.save_state()

        while self.round < cfg.schedule.rounds:
            r = self.round
            if not self.labelled:
                pseudo_paths = self._label(r) if self.labeller is not None else None
                if self.labeller is None:
                    self._share_probe(r)
                self.round_stats.append(self.pl_stats)
                self.labelled = True
                self.save_state()
                _fault(cfg.name, "labelled", r)
            else:
                pseudo_paths = None if self.labeller is None else self._existing_pseudo_labels(r)
            self._train_round(r, pseudo_paths)
            self._set_bn(self.model)
            self.history.append(self.evaluate(r, "round"))
            self.save_model(f"round_{r}.pt", round=r)
            self._look(r, pseudo_paths)
            self._select_score(r)
            if not cfg.runtime.save_pseudo_labels and pseudo_paths and self.dist.is_main:
                for p in pseudo_paths:
                    p.unlink(missing_ok=True)
            self.round, self.labelled, self.epoch, self.batch = r + 1, False, 0, 0
            self.optimizer, self.sums, self.round_steps = None, {}, 0
            self.save_state()
            _fault(cfg.name, "round", r)
        return self._finish(t_start)

    def _existing_pseudo_labels(self, r: int) -> list[Path]:
        paths = [self.pl_dir(r) / f"{i:05d}.png" for i in range(len(self.train_set))]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ResumeError(
                f"{len(missing)} pseudo-label file(s) of round {r} are missing (e.g. {missing[0]}); the run "
                "cannot continue mid-round without them. Start it again with --overwrite"
            )
        return paths

    def _finish(self, t_start: float) -> dict:
        cfg = self.cfg
        # final.pt is the model scored last, saved before anything else runs on it.
        final_path = self.save_model("final.pt", rounds=cfg.schedule.rounds)
        end = None
        if cfg.schedule.rounds > 0:
            # The adapted model's own class shares: has training itself swallowed a class? BN buffers are
            # restored afterwards, so the probe cannot change the saved model.
            self._set_bn(self.model)
            rt = self.cfg.runtime
            with frozen_bn_buffers(self.model):
                end = class_shares(
                    self.inference,
                    self.train_set,
                    self.protocol,
                    rt.eval_batch_size,
                    rt.num_workers,
                    self.dist,
                    self.progress,
                )
            end["collapsed"] = collapse_check(
                self.start_share, end, cfg.method.collapse_warning, "after the last round", self._warn
            )
            self.log.write({"phase": "final_shares", **end})
        selected = self._keep_selected()
        final = self.history[-1]
        self.elapsed += time.time() - t_start
        summary = {
            "method": cfg.name,
            **peak_memory(),
            "seed": cfg.seed,
            "final": final,
            "final_checkpoint": str(final_path),
            "val_miou_per_round": [h["miou"] if h else None for h in self.history],
            "round_stats": self.round_stats,
            "final_shares": end,
            "selected": selected,
            "seconds": round(self.elapsed, 1),
        }
        self.log.write(
            {
                "phase": "done",
                "method": cfg.name,
                "miou": None if final is None else final["miou"],
                "seconds": summary["seconds"],
                **peak_memory(),
            }
        )
        if self.dist.is_main:
            atomic_write_text(self.dir.summary, json.dumps(summary, indent=1))
            self.board.close()
            done = {"format": STATE_FORMAT, "phase": "done", "config": to_dict(self.recipe)}
            atomic_torch_save(done, self.dir.state)
        distributed.barrier()
        return summary

    def _keep_selected(self) -> dict | None:
        """With ``select.validator``: copy the model the validator prefers to ``selected.pt``."""
        if not self.selection:
            return None
        best = max(self.selection, key=lambda s: s["score"] if math.isfinite(s["score"]) else -math.inf)
        if self.dist.is_main:
            path = self.dir.selected
            if best["round"] >= 0:
                src = self.dir.round_checkpoint(best["round"])
                atomic_write_bytes(path, lambda p: shutil.copyfile(src, p))
            else:
                source = self.ckpt
                save_checkpoint(
                    path,
                    source.build(),
                    arch=source.arch,
                    arch_kwargs=source.arch_kwargs,
                    class_names=source.class_names,
                    normalization=source.normalization,
                    provenance={**source.provenance, "selected_by": best["validator"]},
                )
        distributed.barrier()
        self.log.write({"phase": "selected", **best})
        return best


def _fault(name: str, point: str, value: int) -> None:
    """Fault injection for the resume tests: ``SFSEG_FAULT_KILL=<run name>:<point>:<value>`` makes the run
    SIGKILL itself right after that point (``step``: after optimizer step ``value`` and any state save;
    ``labelled``/``round``: after round ``value``'s pseudo-labels / after the round's end state)."""
    spec = os.environ.get("SFSEG_FAULT_KILL")
    if spec and spec == f"{name}:{point}:{value}":
        os.kill(os.getpid(), signal.SIGKILL)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def init_stage_config(cfg: AdaptConfig) -> AdaptConfig:
    """The ``init_from`` recipe as this run runs it: its own method and schedule; this run's checkpoint,
    seed, data and runtime; written into ``<out>/<recipe name>``."""
    first = load_config(AdaptConfig, recipe_path(cfg.init_from))
    name = cfg.init_from.rsplit("/", 1)[-1]
    return replace(
        first,
        checkpoint=cfg.checkpoint,
        checkpoint_family=cfg.checkpoint_family,
        seed=cfg.seed,
        data=cfg.data,
        runtime=cfg.runtime,
        out=str(Path(cfg.out) / name),
    )


def resumable_state(out: Path, recipe: AdaptConfig) -> dict:
    """The state of the run in ``out``, checked: unfinished and started with ``recipe``."""
    state = read_state(out)
    if state.get("phase") == "done":
        raise ResumeError(f"the run in {out} has finished; nothing to resume (final.pt is its result)")
    check_same_recipe(state["config"], to_dict(recipe), Path(out))
    return state


def check_same_recipe(saved: dict, given: dict, out: Path) -> None:
    """Refuse to resume ``out`` with a recipe that computes something other than the one it started with."""
    diff = recipe_differences(saved, given)
    if diff:
        fs, fg = _flat(saved), _flat(given)
        shown = ", ".join(f"{k} ({fs.get(k)!r} -> {fg.get(k)!r})" for k in diff[:5])
        raise ResumeError(
            f"{out} holds a run of another recipe; it differs in {shown}{' ...' if len(diff) > 5 else ''}. "
            "Resume with the run's own recipe (omit --config) or start a new run elsewhere"
        )


def run_adaptation(cfg: AdaptConfig, progress: bool = True, mode: str = "new") -> dict:
    """Adapt ``cfg.checkpoint`` to the target domain; write the run directory; return the summary.

    A two-stage recipe (``init_from``) runs its first stage into ``<out>/<name>`` and starts from its
    ``final.pt``; on resume, a finished first stage is kept and an unfinished one resumed. Every input of
    both stages is checked before anything in ``out`` is cleared or written, and the run directory is
    locked for the whole run (one process per run directory).

    Args:
        mode: ``new`` (``out`` must be empty), ``overwrite`` (clear an earlier sfseg run there first) or
            ``resume`` (continue the run in ``out`` from its last saved state).
    """
    out = RunDir(cfg.out)
    d, _ = distributed.init(cfg.runtime.device)
    if mode == "resume":
        if not out.path.is_dir():
            raise ResumeError(f"{out} does not exist: there is no run to resume")
        if d.is_main:
            out.lock()  # before the state is read: no other process is writing it
    try:
        return _run_adaptation(cfg, out, d, progress, mode)
    finally:
        if d.is_main:
            out.unlock()


def _run_adaptation(cfg: AdaptConfig, out: RunDir, d, progress: bool, mode: str) -> dict:
    if not cfg.init_from:
        state = resumable_state(out.path, cfg) if mode == "resume" else None  # before any loading
        return AdaptationRun(cfg, progress).run(mode, state)
    first = init_stage_config(cfg)
    second = replace(cfg, checkpoint=str(RunDir(first.out).final), init_from="")
    # Check this stage's composition before the first stage spends any time.
    num_classes = dataset_protocol(cfg.data.dataset, cfg.data.protocol).num_classes
    build_loss_parts(cfg.method, num_classes, cfg.schedule.rounds)
    if mode == "resume":
        if out.state.is_file():
            # The second stage has started: its state decides.
            state = resumable_state(out.path, cfg)
            return AdaptationRun(second, progress, recipe=cfg).run("resume", state)
        if not out.config.is_file():
            raise ResumeError(f"{out} holds no run to resume (no {out.CONFIG})")
        check_same_recipe(to_dict(load_config(AdaptConfig, out.config)), to_dict(cfg), out.path)
        first_dir = RunDir(first.out)
        if first_dir.state.is_file():
            if read_state(first_dir.path).get("phase") != "done":
                AdaptationRun(first, progress).run("resume")
        else:
            AdaptationRun(first, progress).run("overwrite" if first_dir.path.exists() else "new")
        return AdaptationRun(second, progress, recipe=cfg).run("claimed")
    # The first stage checks the checkpoint and the data now, before anything in ``out`` is cleared.
    first_run = AdaptationRun(first, progress)
    if d.is_main:
        out.claim(mode)
        save_config(cfg, out.config)
    distributed.barrier()
    first_run.run("new")
    return AdaptationRun(second, progress, recipe=cfg).run("claimed")
