"""Stopping a diverging run with a message that names the cause, before it writes anything bad.

Self-training with too large a learning rate (or an ``inf`` loss weight, a zero normalisation std, a
broken checkpoint) does not crash: its weights grow to 1e12 or turn into NaN and the run ends "fine" with a
meaningless score, or fails later with an error that points away from the cause. :class:`DivergenceGuard`
checks, at every step, that each loss part is finite (the values are on the host already, for logging, so
this costs nothing), optionally that none exceeds ``max_loss``, and, before every state or checkpoint is
written, that the weights are finite and have not grown beyond ``max_weight_growth`` times their norm at
the start. A failed check raises :class:`DivergenceError` (one line, exit status 2); the last state written
is the last good one, so the run stays resumable.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sfseg.errors import SfsegError
from sfseg.models.checkpoint import first_non_finite


class DivergenceError(SfsegError):
    """Training produced non-finite or exploding values."""


class NonFiniteOutput(DivergenceError):
    """A network's outputs hold NaN or infinite values (a diverged model, or damaged weights)."""

    def __init__(self, what: str):
        super().__init__(
            f"the network's outputs hold NaN or infinite values ({what}): the model diverged, or its weights "
            "are damaged; nothing was written from them"
        )
        self.what = what


def weight_norm(params: list[torch.Tensor]) -> float:
    """The L2 norm of a list of tensors (non-finite when any value is)."""
    if not params:
        return 0.0
    return float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in params]))
    )


class DivergenceGuard:
    """Checks a training run's losses and weights.

    Args:
        model: the network being trained (unwrapped); its trainable parameters are watched.
        max_weight_growth: stop when the trainable parameters' norm exceeds this many times its value at
            construction (0 disables; non-finite weights always stop the run).
        max_loss: stop when a loss part exceeds this value (0 disables; non-finite losses always stop).
        hint: what to suggest (e.g. the learning-rate key and its value).
    """

    def __init__(
        self, model: nn.Module, max_weight_growth: float = 100.0, max_loss: float = 0.0, hint: str = ""
    ):
        self.model = model
        self.max_weight_growth = max_weight_growth
        self.max_loss = max_loss
        self.hint = hint
        self.start_norm = self._norm()

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def _norm(self) -> float:
        return weight_norm(self._params())

    def _fail(self, what: str, step: int, last_good: str) -> None:
        raise DivergenceError(
            f"training diverged at step {step}: {what}. Nothing was saved after the last good state "
            f"({last_good}). {self.hint}".strip()
        )

    def losses(self, values: dict[str, float], step: int, last_good: str, total: float | None = None) -> None:
        """Check the loss parts of step ``step`` and their weighted ``total`` (before its optimizer step)."""
        if total is not None and not math.isfinite(total):
            self._fail(f"the weighted total loss is {total} (loss parts {values})", step, last_good)
        for name, v in values.items():
            if not math.isfinite(v):
                self._fail(f"loss part {name!r} is {v}", step, last_good)
            if self.max_loss and v > self.max_loss:
                self._fail(
                    f"loss part {name!r} is {v:.4g}, above schedule.max_loss {self.max_loss:g}",
                    step,
                    last_good,
                )

    def outputs(self, error: NonFiniteOutput, step: int, last_good: str) -> None:
        """Re-raise a :class:`NonFiniteOutput` met while the run evaluated or labelled, as the run's
        divergence (with the last good state named)."""
        self._fail(f"the network's outputs hold NaN or infinite values ({error.what})", step, last_good)

    def weights(self, step: int, last_good: str) -> None:
        """Check the weights before they are written (a state, a checkpoint)."""
        bad = first_non_finite(self.model.state_dict())
        if bad is not None:
            self._fail(f"{bad!r} holds NaN or infinite values", step, last_good)
        if self.max_weight_growth:
            norm = self._norm()
            limit = self.max_weight_growth * max(self.start_norm, 1.0)
            if norm > limit:
                self._fail(
                    f"the trainable weights' norm grew from {self.start_norm:.4g} to {norm:.4g} (more than "
                    f"schedule.max_weight_growth = {self.max_weight_growth:g} times)",
                    step,
                    last_good,
                )
