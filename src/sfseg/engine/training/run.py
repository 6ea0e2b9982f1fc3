"""An adaptation run: rounds of self-training on the one training loop (:mod:`.loop`). What is learnt is
the method's (:class:`sfseg.adapt.method.Method`, asked, never read); what happens around the rounds is
the hooks' (:mod:`.round_hooks`); what is shown is the monitor's (:mod:`.monitor`).

Per round ``r`` (You et al., ACM MM 2021, Sec. 3):

1. run the current model over the whole target train set and choose pseudo-labels (written as PNGs);
2. train ``epochs_per_round`` epochs with the method's loss;
3. ``alpha += alpha_step``; learning rate ``/= lr_round_decay``; optimizer rebuilt (momentum reset).

The resumable state (``<out>/state.pt``, written atomically at round boundaries, after each round's
pseudo-labels and every ``runtime.save_every`` steps) holds the loop's position, the network, the
optimiser, the method's own state and the hooks'; ``sfseg adapt --resume OUT`` gives the same weights and
metrics as an uninterrupted run. Randomness is a function of (seed, round, epoch, index) for crops and
epoch orders and of (seed, step, rank) for flips, complementary ranks and mixing.

Under ``torchrun`` every rank labels and scores whole batches of its own (labels do not depend on the
number of processes), counters are summed, training uses DistributedDataParallel, and rank 0 writes the
logs, states and checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from sfseg.adapt.method import build_method
from sfseg.adapt.norm import frozen_bn_buffers
from sfseg.config import save_config, to_dict
from sfseg.data.file_dataset import check_one_size
from sfseg.data.registry import build_dataset
from sfseg.engine.evaluation.inference import Inference, inference_settings
from sfseg.engine.evaluation.validators import DEFAULT_VALIDATOR
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.config import use_amp
from sfseg.engine.runtime.guard import DivergenceGuard
from sfseg.engine.runtime.loading import (
    TrainView,
    collate,
    epoch_batches,
    finish_crops,
    require_steps,
    step_generator,
)
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import seed_everything
from sfseg.engine.training.labelling import check_round_labels, class_shares, label_round
from sfseg.engine.training.monitor import RunMonitor
from sfseg.engine.training.optim import build_optimizer, unwrap
from sfseg.engine.training.recipe import AdaptConfig
from sfseg.engine.training.resume import resumable_state
from sfseg.engine.training.round_hooks import (
    LabelFreeSelection,
    PseudoLabelCleanup,
    RoundCheckpoints,
    RoundEvaluation,
    RoundLosses,
    RoundPictures,
    RunSummary,
)
from sfseg.engine.training.step import TrainStep, random_flip, wrap_for_training
from sfseg.engine.training.trainer import (
    FaultInjection,
    PeriodicState,
    ProgressBar,
    RunTrainer,
    TargetPasses,
    fault,
)
from sfseg.models import Checkpoint, load_for_data
from sfseg.registry import DATASETS


class AdaptationRun(RunTrainer):
    """One adaptation run: ``cfg.checkpoint`` adapted to the target domain, written to ``cfg.out``.

    Construction checks everything that can be checked without writing: the method composition, the
    checkpoint and its classes, the data, and that the batch size fits the split. :meth:`run` writes.

    Args:
        cfg: the recipe (a recipe with ``init_from`` runs through
            :func:`~sfseg.engine.training.stages.run_adaptation`, which runs its first stages).
        progress: show progress bars (rank 0 only).
        recipe: what ``config.yaml`` and the state record as the run's recipe, when it differs from ``cfg``
            (the last stage of a chain runs ``cfg`` with the previous stage's checkpoint).
    """

    stage_name = "round"

    def __init__(self, cfg: AdaptConfig, progress: bool = True, recipe: AdaptConfig | None = None):
        if cfg.init_from:
            raise ValueError("a recipe with init_from runs through stages.run_adaptation")
        dist, self.device = distributed.init(cfg.runtime.device)
        super().__init__(RunDir(cfg.out), recipe or cfg, dist, progress)
        self.cfg, self.out = cfg, self.dir.path
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)  # the summary reports this run's peak
        self.selection = LabelFreeSelection(cfg.select.validator, cfg.select.max_images)
        self._load_inputs()
        self._build_network()
        self.epochs_per_stage = cfg.schedule.epochs_per_round
        self.labelled, self.pseudo_paths = False, None
        self.round_stats: list[dict] = []
        self.start_share: dict[str, float] | None = None
        self.evals = RoundEvaluation()
        rt = cfg.runtime
        self.register(
            ProgressBar(lambda r: f"round {r} train"),
            RoundLosses(),
            self.evals,
            RoundCheckpoints(),
            RoundPictures(),
            self.selection,
            PseudoLabelCleanup(rt.save_pseudo_labels),
            PeriodicState(rt.save_every),
            FaultInjection(cfg.name),
            RunSummary(),
        )

    def _load_inputs(self) -> None:
        """The method, the checkpoint and the target data, each checked against the others."""
        cfg, data = self.cfg, self.cfg.data
        self.ckpt, self.protocol = load_for_data(
            cfg.checkpoint, data.dataset, data.protocol, cfg.checkpoint_family, data.root
        )
        self.method = build_method(cfg.method, self.protocol.num_classes, cfg.schedule.rounds)
        # Target train labels (where the split has them) feed only the pseudo-label diagnostics, never a loss.
        self.train_set = build_dataset(
            data.dataset, data.root, data.train_split, self.protocol, labels="auto", progress=self.progress
        )
        self.val_set = None
        if data.val_split:
            # A dataset that may lack labels (a folder of images) is scored where it has them; a benchmark's
            # val split must have them.
            labels = "auto" if DATASETS.meta(data.dataset)["protocol"] is None else True
            val = build_dataset(data.dataset, data.root, data.val_split, self.protocol, labels, self.progress)
            self.val_set = val if getattr(val, "has_labels", False) else None
        if self.val_set is None and not self.selection.validator:
            # Without target labels, each round is scored by the default label-free validator instead.
            self.selection.validator = DEFAULT_VALIDATOR
            self.selection.unlabelled = True
        self._check_sizes()

    def _build_network(self) -> None:
        """The network as the method prepares it, its inference, its training wrapper, the monitor and the
        divergence guard."""
        cfg, rt, sched = self.cfg, self.cfg.runtime, self.cfg.schedule
        self.norm, self.amp = self.ckpt.normalization, use_amp(rt.amp, self.device)
        self.model = self.ckpt.build().to(self.device)
        settings = inference_settings(cfg.data, rt, self.device)
        if settings.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.method.prepare(self.model)
        self.method.start(self.model, self.device, cfg.data.align_corners)
        self.inference = Inference.from_settings(self.model, self.norm, settings)
        self.train_model = self.model
        if sched.rounds:
            self.train_model = wrap_for_training(self.model, rt, self.dist, self.device)
        splits = (self.train_set, self.val_set)
        self.monitor = RunMonitor(
            cfg.name, self.dir, self.log, self.inference, splits, self.protocol, self.dist, rt, self.progress
        )
        hint = f"Is the learning rate too large (schedule.optim.lr is {sched.optim.lr:g})? Check also the "
        self.guard = DivergenceGuard(
            self.model, sched.max_weight_growth, sched.max_loss, hint + "loss weights and the checkpoint."
        )

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
        if sched.rounds > 0:
            self.steps_per_epoch = require_steps(
                len(self.train_set), sched.batch_size, self.dist, data.train_split
            )

    # ---------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict:
        return {
            "labelled": bool(self.labelled),
            "method": self.method.state_dict(),
            "round_stats": json.dumps(self.round_stats),
            "start_share": json.dumps(self.start_share),
        }

    def load_extra_state(self, state: dict) -> None:
        self.labelled = bool(state["labelled"])
        # States written before the method object kept their teacher at the top level.
        self.method.load_state_dict(state.get("method") or {"teacher": state.get("teacher")})
        self.round_stats = json.loads(state["round_stats"])
        self.start_share = json.loads(state["start_share"])

    def build_optimizer(self) -> torch.optim.Optimizer:
        scale = self.cfg.schedule.lr_round_decay ** (-self.stage)
        return build_optimizer(self.train_model, self.cfg.schedule.optim, lr_scale=scale)

    def save_model(self, path: Path, **where) -> Path:
        """Write the current model as a checkpoint, with its provenance and inference settings."""
        self.guard.weights(self.step, self.last_good())
        if self.dist.is_main:
            provenance = {"stage": "adapt", "method": self.cfg.name, **where, "recipe": to_dict(self.cfg)}
            provenance["parent"] = self.ckpt.provenance
            Checkpoint.of(
                unwrap(self.model), self.ckpt.class_names, self.norm, self.inference.settings, provenance
            ).save(path, root=self.dir.path)
        distributed.barrier()
        return path

    # ------------------------------------------------------------------------------------------- run
    def run(self, mode: str = "new", state: dict | None = None) -> dict:
        """Write the run directory and adapt.

        Args:
            mode: ``new``, ``overwrite``, ``claimed`` (the directory was prepared by the caller) or
                ``resume``.
            state: for ``resume``, the state already read and checked by :func:`resumable_state`.
        """
        self.t_start = time.time()
        if self.dist.is_main:
            self.dir.lock() if mode == "claimed" else self.dir.claim(mode)
        distributed.barrier()

        def body() -> dict:
            self.begin(mode, state)
            self.train(self.cfg.schedule.rounds)
            return self.summary

        return self.guarded(body)

    def begin(self, mode: str, state: dict | None) -> None:
        """A resumed run: its state, the files its round needs checked before anything is written. A new
        run: its recipe, its seed, the starting model's scores and what the method does before round 0."""
        rt = self.cfg.runtime
        if mode == "resume":
            self.load_state_dict(state if state is not None else resumable_state(self.out, self.recipe))
            if self.labelled and self.method.uses_pseudo_labels:
                self.pseudo_paths = check_round_labels(self.dir, self.stage, self.train_set, self.protocol)
            self.monitor.open_board(rt.tensorboard, purge_step=self.step)
            self.log.write({"phase": "resume", "round": self.stage, "step": self.step, "time": _now()})
            return
        if self.dist.is_main:
            save_config(self.recipe, self.dir.config, root=self.dir.path)
        distributed.barrier()
        self.monitor.open_board(rt.tensorboard)
        seed_everything(self.cfg.seed)
        self.log.write(
            {
                "phase": "start",
                "method": self.cfg.name,
                "time": _now(),
                "processes": self.dist.world,
                "threads": torch.get_num_threads(),
                "device": str(self.device),
                "config": to_dict(self.cfg),
                "classes": list(self.protocol.names),
                "validator": self.selection.validator,
                "target_labels": self.val_set is not None,
            }
        )
        self.evals.evaluate(-1, "source_model")
        target = TargetPasses(
            self.inference, self.train_set, rt.eval_batch_size, rt.num_workers, self.dist, self.progress
        )
        for phase in self.method.on_start(self.model, target):
            self.evals.evaluate(-1, phase)

    # ---------------------------------------------------------------------------------------- rounds
    def start_stage(self) -> None:
        r = self.stage
        if not self.labelled:
            self.pseudo_paths = self._label(r)
            self.labelled = True
            self.save_state()
            fault(self.cfg.name, "labelled", r)

    def _label(self, r: int) -> list[Path] | None:
        """The round's pseudo-labels (written as PNGs), or, for methods without them, the start-of-round
        class shares (their collapse reference); the statistics are logged either way."""
        rt = self.cfg.runtime
        self.method.set_mode(self.model, "label")  # the reference labels with BN as it trains
        t0, paths = time.time(), None
        labeller = self.method.labeller_for(r, self.device)
        if labeller is not None:
            paths, stats = label_round(
                self.inference,
                self.train_set,
                labeller,
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
            stats["seconds"] = round(time.time() - t0, 1)
        else:
            stats = self.shares()
        self.start_share = self.start_share or stats["pred_share"]
        stats = self.monitor.round_statistics(
            r, stats, self.start_share, self.method.collapse_warning, self.step
        )
        self.round_stats.append(stats)
        return paths

    def shares(self) -> dict:
        """The model's own class shares on the target train set; BatchNorm buffers restored afterwards,
        so the probe cannot change the model."""
        rt = self.cfg.runtime
        with frozen_bn_buffers(self.model):
            return class_shares(
                self.inference,
                self.train_set,
                self.protocol,
                rt.eval_batch_size,
                rt.num_workers,
                self.dist,
                self.progress,
            )

    def stage_batches(self):
        """The rest of the round's batches, one loader spanning its epochs (workers start once)."""
        cfg, sched, rt = self.cfg, self.cfg.schedule, self.cfg.runtime
        targets = None if self.pseudo_paths is None else TrainView.pngs(self.pseudo_paths, self.dir.path)
        view = TrainView(
            self.train_set, targets, cfg.data.augment, cfg.seed, self.stage, self.device.type == "cuda"
        )
        if self.optimizer is None:
            self.optimizer = self.build_optimizer()  # rebuilt every round: momentum reset
        self.train_step = TrainStep(
            self.optimizer, sched.optim, self.norm, self.inference.channels_last, self.amp, self.guard
        )
        self.method.set_mode(self.train_model, "train")
        n = len(self.train_set)
        epochs = [
            [
                [(e, i) for i in b]
                for b in epoch_batches(n, sched.batch_size, cfg.seed, self.stage, e, self.dist)
            ]
            for e in range(self.epoch, sched.epochs_per_round)
        ]
        epochs[0] = epochs[0][self.batch :]
        return DataLoader(
            view,
            batch_sampler=[b for e in epochs for b in e],
            num_workers=rt.num_workers,
            pin_memory=self.device.type == "cuda",
            collate_fn=collate,
            prefetch_factor=4 if rt.num_workers else None,
        )

    def run_step(self, batch: dict) -> None:
        cfg = self.cfg
        gen = step_generator(cfg.seed, self.step, self.dist.rank)
        images, pseudo = finish_crops(batch, cfg.data.augment.crop, self.device)
        pseudo = None if pseudo is None else pseudo.long()
        if cfg.data.hflip:
            images, pseudo = random_flip(images, pseudo, gen)
        loss, self.last_values = self.train_step(
            self.step,
            images,
            lambda x: self.method.loss(self.train_model, x, pseudo, gen, self.step),
            self.last_good(),
        )
        self.last_loss = float(loss.detach())
        self.method.after_step(unwrap(self.model), self.step)

    def end_stage(self) -> None:
        self.optimizer, self.labelled = None, False

    # --------------------------------------------------------------------------------------- the end


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")
