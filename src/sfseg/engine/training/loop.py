"""One training loop for every kind of training (after detectron2's ``TrainerBase`` and ``HookBase``).

A run is stages of optimisation steps: an adaptation round is a stage (pseudo-labels, then epochs of
steps), an epoch of source training is one. :class:`Trainer` runs them and calls its hooks around them;
everything else (evaluation, checkpoints, the resumable state, label-free selection, TensorBoard and
progress bars, the divergence guard, fault injection for the tests) is a :class:`Hook` with, where it
needs one, its own state. The resumable state is the loop's position, the network, the optimiser and the
method, plus the sum of the hooks' states; resuming restores all of them and continues the loop.

The loop advances its position before it calls the hooks, so a state saved by a hook at ``after_step``
or ``after_stage`` names the next step to run (``finished_stage`` is the stage just finished).
"""

from __future__ import annotations

from collections.abc import Iterable


class Hook:
    """Something that happens around the steps. ``trainer`` is set when the hook is registered."""

    trainer: Trainer

    def before_train(self) -> None:
        """Once, before the first stage (also when a run resumes: see ``trainer.resumed``)."""

    def before_stage(self) -> None:
        """Before the steps of a stage, after the trainer prepared it (pseudo-labels)."""

    def after_step(self) -> None:
        """After each optimisation step (the position already counts it)."""

    def after_stage(self) -> None:
        """After a stage's steps (the position already names the next stage)."""

    def after_train(self) -> None:
        """Once, after the last stage."""

    def state_dict(self) -> dict:
        """What resuming needs of this hook (plain values and tensors; keys unique across hooks)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Trainer:
    """Stages of steps, with hooks around them.

    Position: ``stage``, ``epoch`` and ``batch`` within it, and ``step`` over the run. A subclass says
    how long a stage is (:attr:`steps_per_epoch`), which batches it still has to run
    (:meth:`stage_batches`, from the current position: a resumed run continues mid-epoch) and what one
    step does (:meth:`run_step`); it may prepare and close a stage (:meth:`start_stage`,
    :meth:`end_stage`).
    """

    steps_per_epoch: int = 1

    def __init__(self) -> None:
        self.hooks: list[Hook] = []
        self.stage = self.epoch = self.batch = self.step = 0
        self.finished_stage = -1
        self.resumed = False

    def register(self, *hooks: Hook) -> None:
        for h in hooks:
            h.trainer = self
            self.hooks.append(h)

    def call(self, event: str) -> None:
        for h in self.hooks:
            getattr(h, event)()

    def train(self, stages: int) -> None:
        self.call("before_train")
        while self.stage < stages:
            self.start_stage()
            self.call("before_stage")
            for batch in self.stage_batches():
                self.run_step(batch)
                self.step, self.batch = self.step + 1, self.batch + 1
                if self.batch == self.steps_per_epoch:
                    self.epoch, self.batch = self.epoch + 1, 0
                self.call("after_step")
            self.end_stage()
            self.finished_stage = self.stage
            self.stage, self.epoch, self.batch = self.stage + 1, 0, 0
            self.call("after_stage")
        self.call("after_train")

    # ------------------------------------------------------------------------------ what a run defines
    def start_stage(self) -> None:
        """Prepare the stage (an adaptation round's pseudo-labels)."""

    def stage_batches(self) -> Iterable:
        raise NotImplementedError

    def run_step(self, batch) -> None:
        raise NotImplementedError

    def end_stage(self) -> None:
        """Close the stage before the hooks see it finished (reset what a stage keeps)."""

    # ---------------------------------------------------------------------------------------- state
    def position(self) -> dict:
        return {"round": self.stage, "epoch": self.epoch, "batch": self.batch, "step": self.step}

    def hook_states(self) -> dict:
        out: dict = {}
        for h in self.hooks:
            out.update(h.state_dict())
        return out

    def load_position(self, state: dict) -> None:
        self.stage, self.epoch = int(state["round"]), int(state["epoch"])
        self.batch, self.step = int(state["batch"]), int(state["step"])
        for h in self.hooks:
            h.load_state_dict(state)
        self.resumed = True
