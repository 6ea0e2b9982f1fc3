"""An adaptation run as an object: the round loop, with exact resume. What is learnt is the method's
(:class:`sfseg.adapt.method.Method`); what is shown is the monitor's (:mod:`.monitor`).

Per round ``r`` (You et al., ACM MM 2021, Sec. 3):

1. run the current model over the whole target train set and choose pseudo-labels (written as PNGs);
2. train ``epochs_per_round`` epochs with the method's loss;
3. ``alpha += alpha_step``; learning rate ``/= lr_round_decay``; optimizer rebuilt (momentum reset).

Target-val scores are logged after every round for monitoring only: ``final.pt`` is always the model after
the last round (the very model whose score the summary reports), never the best round on the split it is
reported on.

:class:`AdaptationRun` owns the model, the method, the optimizer, the round, the step and the history. Its
:meth:`~AdaptationRun.state_dict` is written atomically to ``<out>/state.pt`` at round boundaries, after
each round's pseudo-labels, and every ``runtime.save_every`` steps; ``sfseg adapt --resume OUT`` continues
from it and gives the same weights and metrics as an uninterrupted run. Randomness is a function of
(seed, round, epoch, index) for crops and epoch orders and of (seed, step, rank) for flips, complementary
ranks and mixing, so nothing but the step counter needs restoring.

Under ``torchrun`` every rank labels and scores whole batches of its own (labels do not depend on the
number of processes), counters are summed, training uses DistributedDataParallel, and rank 0 writes the
logs, states and checkpoints.
"""

from __future__ import annotations

import json
import math
import os
import resource
import signal
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sfseg.adapt.method import build_method
from sfseg.adapt.norm import adabn, frozen_bn_buffers, set_bn_mode
from sfseg.config import save_config, to_dict
from sfseg.data.file_dataset import check_one_size
from sfseg.data.registry import build_dataset, dataset_protocol
from sfseg.engine.evaluation.inference import Inference, inference_settings
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.config import use_amp
from sfseg.engine.runtime.guard import DivergenceError, DivergenceGuard, NonFiniteOutput
from sfseg.engine.runtime.loading import (
    TrainView,
    collate,
    epoch_batches,
    finish_crops,
    read_label_png,
    sharded_loader,
    step_generator,
    steps_per_epoch,
)
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import MetricsLog, seed_everything
from sfseg.engine.training.labelling import class_shares, collapse_check, label_round
from sfseg.engine.training.monitor import RunMonitor
from sfseg.engine.training.optim import build_optimizer, unwrap
from sfseg.engine.training.recipe import AdaptConfig
from sfseg.engine.training.resume import STATE_FORMAT, resumable_state, rng_state, set_rng_state
from sfseg.engine.training.step import TrainStep, random_flip, wrap_for_training
from sfseg.errors import ConfigError, ResumeError
from sfseg.fileio import atomic_torch_save, atomic_write_bytes, atomic_write_text
from sfseg.models import Checkpoint, load_checkpoint


def peak_memory() -> dict:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (GiB)."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


class AdaptationRun:
    """One adaptation run: ``cfg.checkpoint`` adapted to the target domain, written to ``cfg.out``.

    Construction checks everything that can be checked without writing: the method composition, the
    checkpoint and its classes, the data, and that the batch size fits the split. :meth:`run` writes.

    Args:
        cfg: the recipe (for a two-stage recipe, use :func:`~sfseg.engine.training.stages.run_adaptation`,
            which runs its first stage).
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
        data, sched, rt = cfg.data, cfg.schedule, cfg.runtime
        self.protocol = dataset_protocol(data.dataset, data.protocol)
        self.method = build_method(cfg.method, self.protocol.num_classes, sched.rounds)
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
        self._check_sizes()
        self.dir = RunDir(cfg.out)
        self.out = self.dir.path
        self.log = MetricsLog(self.dir.metrics, enabled=self.dist.is_main, root=self.dir.path)
        self.norm = self.ckpt.normalization
        self.amp = use_amp(rt.amp, self.device)
        self.model = self.ckpt.build().to(self.device)
        settings = inference_settings(data, rt, self.device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method.prepare(self.model)
        self.method.start(self.model, self.device, data.align_corners)
        if cfg.method.adabn:
            from sfseg.adapt.norm import require_batch_norm

            require_batch_norm(self.model, "method.adabn")
        self.inference = Inference.from_settings(self.model, self.norm, settings)
        self.train_model = (
            wrap_for_training(self.model, rt, self.dist, self.device) if sched.rounds else self.model
        )
        self.monitor = RunMonitor(
            cfg.name,
            self.dir,
            self.log,
            self.inference,
            self.train_set,
            self.val_set,
            self.protocol,
            self.dist,
            rt.eval_batch_size,
            rt.num_workers,
            self.progress,
        )
        self.guard = DivergenceGuard(
            self.model,
            sched.max_weight_growth,
            sched.max_loss,
            f"Is the learning rate too large (schedule.optim.lr is {sched.optim.lr:g})? Check also the loss "
            "weights and the checkpoint.",
        )
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
        self.selection: list[dict] = []
        self.elapsed = 0.0
        self.saved_step: int | None = None

    def _check_sizes(self) -> None:
        data, sched, rt = self.cfg.data, self.cfg.schedule, self.cfg.runtime
        for split, ds in ((data.train_split, self.train_set), (data.val_split, self.val_set)):
            if ds is not None and rt.eval_batch_size > 1:
                fix = "batches need one size: set runtime.eval_batch_size: 1"
                check_one_size(ds, f"split {split!r} of {data.root}", fix)
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

    def _set_bn(self) -> None:
        self.model.eval()
        set_bn_mode(self.model, self.cfg.method.bn_mode)

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
            "method": self.method.state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            "sums": dict(self.sums),
            "round_steps": self.round_steps,
            "history": json.dumps(self.history),
            "round_stats": json.dumps(self.round_stats),
            "start_share": json.dumps(self.start_share),
            "selection": json.dumps(self.selection),
            "metrics_bytes": self.log.size(),
            "elapsed": self.elapsed,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.round, self.labelled = int(state["round"]), bool(state["labelled"])
        self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
        unwrap(self.model).load_state_dict(state["model"])
        # States written before the method object kept their teacher at the top level.
        self.method.load_state_dict(state.get("method") or {"teacher": state.get("teacher")})
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = self._optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
        self.sums, self.round_steps = dict(state["sums"]), int(state["round_steps"])
        self.history = json.loads(state["history"])
        self.round_stats = json.loads(state["round_stats"])
        self.start_share = json.loads(state["start_share"])
        self.selection = json.loads(state.get("selection", "[]"))
        self.elapsed = float(state["elapsed"])
        set_rng_state(state["rng"])
        saved = int(state["metrics_bytes"])
        if self.dist.is_main and self.log.size() < saved:
            raise ResumeError(
                f"{self.dir.metrics} is shorter ({self.log.size():,} bytes) than when the state was saved "
                f"({saved:,}): records were lost, so the run cannot be resumed with its history. Run it "
                "again with --overwrite"
            )
        self.log.truncate(saved)

    def save_state(self) -> None:
        """Write the resumable state, once the weights are known to be sound (every rank checks its own)."""
        self.guard.weights(self.step, self._last_good())
        if self.dist.is_main:
            atomic_torch_save(self.state_dict(), self.dir.state, root=self.dir.path)
        self.saved_step = self.step
        distributed.barrier()

    def _last_good(self) -> str:
        if self.saved_step is None:
            return "none: the run had not saved a state yet"
        return f"{self.dir.state}, step {self.saved_step}; sfseg adapt --resume {self.out} continues from it"

    def save_model(self, path: Path, **where) -> Path:
        """Write the current model as a checkpoint, with its provenance and inference settings."""
        self.guard.weights(self.step, self._last_good())
        if self.dist.is_main:
            cfg = self.cfg
            provenance = {"stage": "adapt", "method": cfg.name, **where, "recipe": to_dict(cfg)}
            provenance["parent"] = self.ckpt.provenance
            Checkpoint.of(
                unwrap(self.model), self.ckpt.class_names, self.norm, self.inference.settings, provenance
            ).save(path, root=self.dir.path)
        distributed.barrier()
        return path

    def _optimizer(self) -> torch.optim.Optimizer:
        scale = self.cfg.schedule.lr_round_decay ** (-self.round)
        return build_optimizer(self.train_model, self.cfg.schedule.optim, lr_scale=scale)

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
            try:
                return self._run(mode, state)
            except NonFiniteOutput as e:
                self.guard.outputs(e, self.step, self._last_good())  # raises the run's divergence
        except DivergenceError as e:
            self.log.write({"phase": "diverged", "step": self.step, "round": self.round, "message": str(e)})
            raise e from None
        finally:
            if self.dist.is_main:
                self.dir.unlock()

    def _run(self, mode: str, state: dict | None) -> dict:
        cfg = self.cfg
        t_start = time.time()
        pseudo_paths = None
        if mode == "resume":
            state = state if state is not None else resumable_state(self.out, self.recipe)
            self.load_state_dict(state)
            self.saved_step = self.step
            if self.labelled and self.method.labeller is not None:
                # Every file the round needs is checked before the resumed run writes anything.
                pseudo_paths = self._existing_pseudo_labels(self.round)
            self.monitor.open_board(cfg.runtime.tensorboard, purge_step=self.step)
            self.log.write({"phase": "resume", "round": self.round, "step": self.step, "time": _now()})
        else:
            if self.dist.is_main:
                save_config(self.recipe, self.dir.config, root=self.dir.path)
            distributed.barrier()
            self.monitor.open_board(cfg.runtime.tensorboard)
            seed_everything(cfg.seed)
            self.log.write(
                {
                    "phase": "start",
                    "method": cfg.name,
                    "time": _now(),
                    "processes": self.dist.world,
                    "threads": torch.get_num_threads(),
                    "device": str(self.device),
                    "config": to_dict(cfg),
                }
            )
            self._set_bn()
            self.history = [self.monitor.evaluate(-1, "source_model", self.step)]
            if cfg.method.adabn:
                self._adabn()
                self.history.append(self.monitor.evaluate(-1, "adabn", self.step))
            self.monitor.look(-1, None, self.round_stats, self.step)
            self._select_score(-1)
            self.save_state()

        while self.round < cfg.schedule.rounds:
            r = self.round
            if not self.labelled:
                pseudo_paths = self._label(r)
                self.labelled = True
                self.save_state()
                _fault(cfg.name, "labelled", r)
            self._train_round(r, pseudo_paths)
            self.guard.weights(self.step, self._last_good())  # before anything computes with them
            self._set_bn()
            self.history.append(self.monitor.evaluate(r, "round", self.step))
            self.save_model(self.dir.round_checkpoint(r), round=r)
            self.monitor.look(r, pseudo_paths, self.round_stats, self.step)
            self._select_score(r)
            if not cfg.runtime.save_pseudo_labels and pseudo_paths and self.dist.is_main:
                for p in pseudo_paths:
                    p.unlink(missing_ok=True)
            self.round, self.labelled, self.epoch, self.batch = r + 1, False, 0, 0
            self.optimizer, self.sums, self.round_steps = None, {}, 0
            self.save_state()
            _fault(cfg.name, "round", r)
        return self._finish(t_start)

    # ----------------------------------------------------------------------------------------- phases
    def _label(self, r: int) -> list[Path] | None:
        """The round's pseudo-labels (written as PNGs), or, for methods without them, the start-of-round
        class shares (their collapse reference); the statistics are logged either way."""
        rt = self.cfg.runtime
        self._set_bn()  # the reference labels with BN in the same mode as it trains
        t0 = time.time()
        labeller, paths = self.method.labeller, None
        if labeller is not None:
            alpha, capped = self.method.round_alpha(r)
            paths, stats = label_round(
                self.inference,
                self.train_set,
                labeller,
                alpha,
                self.dir.pseudo_labels(r),
                self.protocol,
                rt.eval_batch_size,
                rt.num_workers,
                rt.logit_cache_gib,
                self.dist,
                self.progress,
                complementary_ranks=self.method.complementary_ranks(),
                cache_dir=self.dir.cache,
                root=self.dir.path,
            )
            stats["alpha_capped"] = capped
            stats["seconds"] = round(time.time() - t0, 1)
        else:
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
        stats = self.monitor.round_statistics(
            r, stats, self.start_share, self.cfg.method.collapse_warning, self.step
        )
        self.round_stats.append(stats)
        return paths

    def _adabn(self) -> None:
        rt = self.cfg.runtime
        loader = sharded_loader(
            self.inference.view(self.train_set), rt.eval_batch_size, rt.num_workers, self.dist
        )
        inputs = (self.inference.network_input(b["image"]) for b in loader)
        with self.inference.autocast():
            adabn(self.model, inputs, progress=self.progress, all_reduce_sum=distributed.all_reduce_sum)

    def _select_score(self, r: int) -> None:
        """With ``select.validator``: score the current model without reading any target label."""
        name = self.cfg.select.validator
        if not name:
            return
        source = self.ckpt.build().to(self.device)
        previous = {-1: None, 0: source}.get(r)
        if r > 0:
            previous = load_checkpoint(self.dir.round_checkpoint(r - 1), root=self.out)
            previous = previous.build().to(self.device)
        self.selection.append(
            self.monitor.validator_score(
                name,
                r,
                unwrap(self.model),
                {"previous": previous, "source": source},
                self.cfg.select.max_images,
                self.step,
            )
        )

    def _existing_pseudo_labels(self, r: int) -> list[Path]:
        """The round's pseudo-labels on resume, each decoded and checked (present, readable, the size of
        its image, class indices or 255), so that a damaged file is one error now, not a failure mid-round."""
        paths = [self.dir.pseudo_labels(r) / f"{i:05d}.png" for i in range(len(self.train_set))]
        missing = [p for p in paths if not os.path.lexists(p)]
        if missing:
            raise ResumeError(
                f"{len(missing)} pseudo-label file(s) of round {r} are missing (e.g. {missing[0]}); the run "
                "cannot continue mid-round without them. Start it again with --overwrite"
            )
        C = self.protocol.num_classes
        sizes = getattr(self.train_set, "image_sizes", None)
        for i, p in enumerate(paths):
            label = read_label_png(p, self.dir.path)
            bad = (label >= C) & (label != 255)
            wrong_size = sizes is not None and (label.shape[1], label.shape[0]) != tuple(sizes[i])
            if bad.any() or wrong_size:
                what = "wrong size" if wrong_size else "values outside the classes"
                raise ResumeError(
                    f"{p}: a pseudo-label file is damaged ({what}); "
                    "the round cannot continue from it. Start the run again with --overwrite"
                )
        return paths

    def _train_round(self, r: int, pseudo_paths: list[Path] | None) -> None:
        cfg, sched, rt = self.cfg, self.cfg.schedule, self.cfg.runtime
        t0 = time.time()
        targets = None if pseudo_paths is None else TrainView.pngs(pseudo_paths, self.dir.path)
        crop_on_device = self.device.type == "cuda"
        view = TrainView(self.train_set, targets, cfg.data.augment, cfg.seed, r, crop_on_device)
        if self.optimizer is None:
            self.optimizer = self._optimizer()  # rebuilt every round: momentum reset
        step = TrainStep(
            self.optimizer, sched.optim, self.norm, self.inference.channels_last, self.amp, self.guard
        )
        self.train_model.train()
        set_bn_mode(self.train_model, cfg.method.bn_mode)
        per_epoch = steps_per_epoch(len(self.train_set), sched.batch_size, self.dist.world)
        bar = tqdm(
            total=sched.epochs_per_round * per_epoch,
            initial=self.epoch * per_epoch + self.batch,
            desc=f"round {r} train",
            disable=not self.progress,
        )
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
            self._train_step(step, batch)
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

    def _train_step(self, step: TrainStep, batch: dict) -> None:
        cfg = self.cfg
        gen = step_generator(cfg.seed, self.step, self.dist.rank)
        images, pseudo = finish_crops(batch, cfg.data.augment.crop, self.device)
        pseudo = None if pseudo is None else pseudo.long()
        if cfg.data.hflip:
            images, pseudo = random_flip(images, pseudo, gen)
        loss, values = step(
            self.step,
            images,
            lambda x: self.method.loss(self.train_model, x, pseudo, gen, self.step),
            self._last_good(),
        )
        self.method.after_step(unwrap(self.model), self.step)
        self.step += 1
        self.round_steps += 1
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.monitor.losses(values, float(loss.detach()), self.optimizer.param_groups[0]["lr"], self.step)

    def _finish(self, t_start: float) -> dict:
        cfg = self.cfg
        # final.pt is the model scored last, saved before anything else runs on it.
        final_path = self.save_model(self.dir.final, rounds=cfg.schedule.rounds)
        end = None
        if cfg.schedule.rounds > 0:
            # The adapted model's own class shares: has training itself swallowed a class? BN buffers are
            # restored afterwards, so the probe cannot change the saved model.
            self._set_bn()
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
                self.start_share, end, cfg.method.collapse_warning, "after the last round", self.monitor.warn
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
            atomic_write_text(self.dir.summary, json.dumps(summary, indent=1), root=self.dir.path)
            self.monitor.close()
            done = {"format": STATE_FORMAT, "phase": "done", "config": to_dict(self.recipe)}
            atomic_torch_save(done, self.dir.state, root=self.dir.path)
        distributed.barrier()
        return summary

    def _keep_selected(self) -> dict | None:
        """With ``select.validator``: copy the model the validator prefers to ``selected.pt``."""
        if not self.selection:
            return None
        best = max(self.selection, key=lambda s: s["score"] if math.isfinite(s["score"]) else -math.inf)
        if self.dist.is_main:
            if best["round"] >= 0:
                data = self.dir.read_bytes(self.dir.round_checkpoint(best["round"]))
                atomic_write_bytes(self.dir.selected, lambda p: p.write_bytes(data), root=self.dir.path)
            else:
                source = self.ckpt
                source.provenance = {**source.provenance, "selected_by": best["validator"]}
                source.save(self.dir.selected, root=self.dir.path)
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
