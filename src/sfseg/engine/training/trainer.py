"""What every training run shares, on top of the loop (:mod:`.loop`): a run directory (marker, lock,
metrics log, resumable state), the network and its optimiser, the divergence guard, and the hooks that
every run has (progress bar, the periodic state, fault injection for the resume tests).

Source training (:mod:`.source`) and adaptation (:mod:`.run`) are both a :class:`RunTrainer`: the same
loop, the same state file, the same ``--resume``.
"""

from __future__ import annotations

import os
import resource
import signal
import time

import torch
from tqdm import tqdm

from sfseg.config import to_dict
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.guard import DivergenceError, DivergenceGuard, NonFiniteOutput
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import MetricsLog
from sfseg.engine.training.loop import Hook, Trainer
from sfseg.engine.training.optim import unwrap
from sfseg.engine.training.resume import STATE_FORMAT, rng_state, set_rng_state
from sfseg.errors import ResumeError
from sfseg.fileio import atomic_torch_save


class RunTrainer(Trainer):
    """A :class:`~.loop.Trainer` that owns a run directory.

    Subclasses set ``model`` (unwrapped), ``train_model`` (possibly DDP-wrapped), ``guard`` and
    ``epochs_per_stage``, build ``optimizer`` when a stage starts, and may add to the state
    (:meth:`extra_state`, :meth:`load_extra_state`).

    Args:
        run_dir: the run directory.
        recipe: what ``config.yaml`` and the state record as the run's recipe.
        dist: the process layout.
        progress: show progress bars (rank 0 only).
    """

    epochs_per_stage: int = 1
    model: torch.nn.Module
    train_model: torch.nn.Module
    guard: DivergenceGuard

    stage_name = "stage"
    """What a stage is called in the metrics log (``round``, ``epoch``)."""

    def guarded(self, body):
        """Run ``body()`` (the run's steps) and return its result: non-finite outputs become the run's
        divergence (rolled back to the last good state by the guard), a divergence is logged before it is
        raised, and the run directory is unlocked whatever happens."""
        try:
            try:
                return body()
            except NonFiniteOutput as e:
                self.guard.outputs(e, self.step, self.last_good())  # raises the run's divergence
        except DivergenceError as e:
            record = {"phase": "diverged", "step": self.step, self.stage_name: self.stage, "message": str(e)}
            self.log.write(record)
            raise e from None
        finally:
            if self.dist.is_main:
                self.dir.unlock()

    def __init__(self, run_dir: RunDir, recipe, dist: distributed.Dist, progress: bool):
        super().__init__()
        self.dir, self.recipe, self.dist = run_dir, recipe, dist
        self.progress = progress and dist.is_main
        self.log = MetricsLog(run_dir.metrics, enabled=dist.is_main, root=run_dir.path)
        self.optimizer: torch.optim.Optimizer | None = None
        self.saved_step: int | None = None
        self.elapsed, self.t_start = 0.0, time.time()  # seconds of earlier sessions; this one's start

    @property
    def seconds(self) -> float:
        """Wall time spent on the run so far, over every session that resumed it."""
        return self.elapsed + time.time() - self.t_start

    # ---------------------------------------------------------------------------------------- state
    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def build_optimizer(self) -> torch.optim.Optimizer:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Everything needed to continue the run exactly (tensors and plain values only)."""
        return {
            "format": STATE_FORMAT,
            "config": to_dict(self.recipe),
            "phase": "run",
            **self.position(),
            "model": unwrap(self.model).state_dict(),
            "optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
            **self.extra_state(),
            **self.hook_states(),
            "metrics_bytes": self.log.size(),
            "elapsed": self.seconds,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.load_extra_state(state)
        self.load_position(state)
        self.optimizer = None
        if state["optimizer"] is not None:
            self.optimizer = self.build_optimizer()
            self.optimizer.load_state_dict(state["optimizer"])
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
        self.saved_step = self.step

    def save_state(self) -> None:
        """Write the resumable state, once the weights are known to be sound (every rank checks its own)."""
        self.guard.weights(self.step, self.last_good())
        if self.dist.is_main:
            atomic_torch_save(self.state_dict(), self.dir.state, root=self.dir.path)
        self.saved_step = self.step
        distributed.barrier()

    def save_done(self) -> None:
        """Mark the run finished (a finished run refuses to resume)."""
        if self.dist.is_main:
            done = {"format": STATE_FORMAT, "phase": "done", "config": to_dict(self.recipe)}
            atomic_torch_save(done, self.dir.state, root=self.dir.path)
        distributed.barrier()

    def last_good(self) -> str:
        if self.saved_step is None:
            return "none: the run had not saved a state yet"
        return (
            f"{self.dir.state}, step {self.saved_step}; the run's --resume {self.dir.path} continues from it"
        )


class ProgressBar(Hook):
    """A progress bar per stage (rank 0; none when the run is quiet)."""

    def __init__(self, describe):
        self.describe, self.bar = describe, None

    def before_stage(self) -> None:
        t = self.trainer
        per_stage = t.epochs_per_stage * t.steps_per_epoch
        self.bar = tqdm(
            total=per_stage,
            initial=t.epoch * t.steps_per_epoch + t.batch,
            desc=self.describe(t.stage),
            disable=not t.progress,
        )

    def after_step(self) -> None:
        self.bar.update()

    def after_stage(self) -> None:
        self.bar.close()


class PeriodicState(Hook):
    """The resumable state once a new run has started (after every other hook's start), at every stage
    end and every ``save_every`` steps within a stage."""

    def __init__(self, save_every: int):
        self.save_every = save_every

    def before_train(self) -> None:
        if not self.trainer.resumed:
            self.trainer.save_state()

    def after_step(self) -> None:
        t = self.trainer
        if self.save_every and t.step % self.save_every == 0 and t.epoch < t.epochs_per_stage:
            t.save_state()

    def after_stage(self) -> None:
        self.trainer.save_state()


class FaultInjection(Hook):
    """For the resume tests: ``SFSEG_FAULT_KILL=<name>:<point>:<value>`` makes the run SIGKILL itself right
    after that point (``step``: after optimizer step ``value`` and any state save; ``labelled``/``round``:
    after round ``value``'s pseudo-labels / after the round's end state)."""

    def __init__(self, name: str):
        self.name = name

    def after_step(self) -> None:
        fault(self.name, "step", self.trainer.step)

    def after_stage(self) -> None:
        fault(self.name, "round", self.trainer.finished_stage)


def fault(name: str, point: str, value: int) -> None:
    """SIGKILL this process at the point ``SFSEG_FAULT_KILL`` names; with ``SFSEG_FAULT_ONCE=<file>``, only
    the first process to get there (it creates the file), so that one of several runs dies, once."""
    spec = os.environ.get("SFSEG_FAULT_KILL")
    if spec and spec == f"{name}:{point}:{value}":
        once = os.environ.get("SFSEG_FAULT_ONCE")
        if once:
            try:
                os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                return
        os.kill(os.getpid(), signal.SIGKILL)


def peak_memory() -> dict:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (GiB)."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


class TargetPasses:
    """The target train images as a method sees them before round 0 (``Method.on_start``): passes of
    normalised network inputs over this process's share, and their reduction across processes."""

    def __init__(self, inference, dataset, batch_size: int, workers: int, dist, progress: bool):
        self.inference, self.dataset, self.dist, self.progress = inference, dataset, dist, progress
        self.batch_size, self.workers = batch_size, workers

    def inputs(self):
        loader = sharded_loader(self.inference.view(self.dataset), self.batch_size, self.workers, self.dist)
        return (self.inference.network_input(b["image"]) for b in loader)

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return distributed.all_reduce_sum(t)

    def autocast(self):
        return self.inference.autocast()
