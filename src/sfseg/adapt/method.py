"""An adaptation method as an object: what is learnt from the target images, separated from the loop that
runs rounds.

A :class:`Method` owns everything a method decides: which parameters train, how the normalisation layers
behave while labelling and while training (BatchNorm in train or frozen mode), what it does to the network
before the first round (AdaBN), its pseudo-labeller and the alpha schedule over rounds, its loss parts and
their weights, an EMA teacher, a mixing of the batch, how far a class's share may fall before the run
warns, and any state of its own (saved with the run and restored on resume). The loop
(``sfseg.engine.training``) asks; it reads none of the method's settings, so a new method (with its own
BatchNorm policy, per-step state, or a new kind of mixing) is added here and registered, without
touching the loop::

    @METHODS.register("my_method")
    class MyMethod(SelfTraining):
        def loss(self, forward, x, pseudo, generator, step): ...
        def state_dict(self): ...

``self_training`` is the composable method of the recipes: LD (positive + negative learning), BE (EMA
teacher + ClassMix + confidence-weighted cross-entropy), and every baseline are compositions of its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Protocol

import torch
from torch import nn

from sfseg.adapt.config import MethodConfig
from sfseg.adapt.losses import complementary_ranks
from sfseg.adapt.norm import (
    adabn,
    freeze_bn_affine,
    require_batch_norm,
    set_bn_mode,
    train_downsample_bn_affine,
    train_only_norm_affine,
)
from sfseg.adapt.parts import StepInputs, build_loss_parts, total_loss
from sfseg.adapt.pseudo_labels import PseudoLabeller, build_pseudo_labeller
from sfseg.adapt.teacher import EMATeacher
from sfseg.constants import IGNORE_INDEX
from sfseg.errors import MethodError
from sfseg.models.ops import upsample_logits
from sfseg.registry import METHODS, MIXINGS, PSEUDO_LABELLERS


class TargetPasses(Protocol):
    """What a method may ask of the run before the first round: passes over the target train images (no
    label is read), as normalised network inputs of this process's share, and their reduction across
    processes."""

    progress: bool

    def inputs(self) -> Iterable[torch.Tensor]: ...

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def autocast(self) -> AbstractContextManager: ...


class Method:
    """The interface the round loop uses. See :class:`SelfTraining` for the composable implementation.

    Args:
        cfg: the method's recipe group.
        num_classes: the class count of the protocol.
        rounds: the schedule's rounds (compositions that cannot train are refused when rounds > 0).
    """

    def __init__(self, cfg: MethodConfig, num_classes: int, rounds: int):
        self.cfg, self.num_classes, self.rounds = cfg, num_classes, rounds

    # -------------------------------------------------------------------------- before training
    def prepare(self, model: nn.Module) -> None:
        """Choose the trainable parameters of ``model`` (the unwrapped network, before any optimiser) and
        refuse a network the method cannot work on."""

    def start(self, model: nn.Module, device: torch.device, align_corners: bool) -> None:
        """Build what the method keeps beside the network (a teacher), once the network is on ``device``."""

    def on_start(self, model: nn.Module, target: TargetPasses) -> list[str]:
        """Change the network before the first round, from the target images alone (AdaBN re-estimates
        BatchNorm statistics). Returns the names of the steps taken, each of which the run then scores."""
        return []

    def set_mode(self, model: nn.Module, phase: str) -> None:
        """Put ``model`` in the mode of ``phase``: ``label`` (pseudo-labelling and the probes around it)
        or ``train``. Default: the module's eval/train mode, then BatchNorm as ``method.bn_mode`` says."""
        model.train(phase == "train")
        set_bn_mode(model, self.cfg.bn_mode)

    @property
    def collapse_warning(self) -> float:
        """Warn when a class's share falls below this fraction of its start (0: never)."""
        return self.cfg.collapse_warning

    # -------------------------------------------------------------------------------- per round
    @property
    def uses_pseudo_labels(self) -> bool:
        """Whether the method selects pseudo-labels each round (:meth:`labeller_for` is not None)."""
        return False

    def labeller_for(self, r: int, device: torch.device | str = "cpu") -> PseudoLabeller | None:
        """Round ``r``'s pseudo-labeller, or None for methods without pseudo-labels."""
        return None

    def complementary_ranks(self) -> list[int] | None:
        """The ranks negative learning draws from, when the method has it (for its diagnostics)."""
        return None

    # --------------------------------------------------------------------------------- per step
    def loss(
        self,
        forward: Callable[[torch.Tensor], torch.Tensor],
        x: torch.Tensor,
        pseudo: torch.Tensor | None,
        generator: torch.Generator,
        step: int,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss of one training step and each part's value (for logging and the divergence check).

        Args:
            forward: the (possibly DDP-wrapped) student network.
            x: the normalised, augmented images (B, 3, H, W).
            pseudo: their pseudo-labels (B, H, W), 255 = unselected, or None.
            generator: this step's random generator (complementary ranks, mixing).
            step: the optimiser step counted over the run.
        """
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int) -> None:
        """After optimiser step ``step`` (e.g. the teacher's update); ``model`` is unwrapped."""

    # ------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """What resuming needs beyond the network and the optimiser (tensors and plain values)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@METHODS.register("self_training")
class SelfTraining(Method):
    """Self-training composed from parts: a pseudo-labeller, weighted loss parts, an optional EMA teacher
    (whose labels the pseudo-labels override, with confidence 1) and an optional mixing of the batch."""

    def __init__(self, cfg: MethodConfig, num_classes: int, rounds: int):
        super().__init__(cfg, num_classes, rounds)
        if cfg.options:
            raise MethodError(
                f"method.options {sorted(cfg.options)}: the self_training method takes no options (its "
                "settings are the keys of method:)"
            )
        self.parts = build_loss_parts(cfg, num_classes, rounds)
        if cfg.pseudo_labels.kind != "none":
            PSEUDO_LABELLERS.check(cfg.pseudo_labels.kind, "method.pseudo_labels.kind")
        self.mix = MIXINGS.get(cfg.mixing) if cfg.mixing != "none" else None
        self.teacher: EMATeacher | None = None
        self.align_corners = False

    def prepare(self, model: nn.Module) -> None:
        if self.cfg.adabn:
            require_batch_norm(model, "method.adabn")
        if self.cfg.trainable == "norm_affine":
            train_only_norm_affine(model)
        elif self.cfg.bn_affine != "train":
            freeze_bn_affine(model)
            if self.cfg.bn_affine == "downsample":
                train_downsample_bn_affine(model)

    def on_start(self, model: nn.Module, target: TargetPasses) -> list[str]:
        if not self.cfg.adabn:
            return []
        with target.autocast():
            adabn(model, target.inputs(), progress=target.progress, all_reduce_sum=target.all_reduce_sum)
        return ["adabn"]

    def start(self, model: nn.Module, device: torch.device, align_corners: bool) -> None:
        self.align_corners = align_corners
        if self.cfg.teacher.ema:
            self.teacher = EMATeacher(model, self.cfg.teacher.max_decay, align_corners).to(device)

    @property
    def uses_pseudo_labels(self) -> bool:
        return self.cfg.pseudo_labels.kind != "none"

    def labeller_for(self, r: int, device: torch.device | str = "cpu") -> PseudoLabeller | None:
        """Round ``r``'s labeller: alpha grows by ``alpha_step`` per round and is capped at 1 (the
        labeller's ``alpha_capped`` says so)."""
        pl = self.cfg.pseudo_labels
        raw = pl.alpha + r * pl.alpha_step
        labeller = build_pseudo_labeller(pl, self.num_classes, min(1.0, raw), device)
        if labeller is not None:
            labeller.alpha_capped = raw > 1.0
        return labeller

    def complementary_ranks(self) -> list[int] | None:
        if "negative" not in self.cfg.losses:
            return None
        return complementary_ranks(self.num_classes, self.cfg.negative_width)

    def inputs(self, forward, x, pseudo, generator) -> StepInputs:
        """The student's forward pass, after the teacher's labels and the mixing where the method has them."""
        t_conf = t_label = None
        if self.teacher is not None:
            t_conf, t_label = self.teacher.predict(x)
            if pseudo is not None:
                # Class-balanced pseudo-labels override the teacher, with confidence 1.
                chosen = pseudo != IGNORE_INDEX
                t_label = torch.where(chosen, pseudo, t_label)
                t_conf = torch.where(chosen, torch.ones_like(t_conf), t_conf)
        if self.mix is not None:
            maps = [t for t in (pseudo, t_label, t_conf) if t is not None]
            mixed = self.mix(t_label if t_label is not None else pseudo, generator, x, *maps)
            x, rest = mixed[0], iter(mixed[1:])
            pseudo, t_label, t_conf = (None if t is None else next(rest) for t in (pseudo, t_label, t_conf))

        def student(images: torch.Tensor) -> torch.Tensor:
            return upsample_logits(forward(images), images.shape[-2:], self.align_corners)

        return StepInputs(student(x), pseudo, generator, t_label, t_conf, images=x, student=student)

    def loss(self, forward, x, pseudo, generator, step):
        return total_loss(self.parts, self.inputs(forward, x, pseudo, generator))

    def after_step(self, model: nn.Module, step: int) -> None:
        if self.teacher is not None:
            self.teacher.update(model, step)

    def state_dict(self) -> dict:
        return {} if self.teacher is None else {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.teacher is not None and state.get("teacher") is not None:
            self.teacher.load_state_dict(state["teacher"])


def build_method(cfg: MethodConfig, num_classes: int, rounds: int) -> Method:
    """The method of ``cfg.kind``; an impossible composition is refused here, before any data is read."""
    return METHODS.get(cfg.kind, "method.kind")(cfg, num_classes, rounds)
