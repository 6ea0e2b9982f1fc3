"""The hooks of an adaptation run (:class:`~.run.AdaptationRun`), in the order it registers them: what
happens around each round's steps and at the end of the run, each with its own part of the state.

At the end of round ``r``: the round's losses are logged; the weights are checked and the model scored on
the target val split (monitoring only: ``final.pt`` is the last round, whatever the scores say);
``round_<r>.pt`` is written; the round's pictures are drawn; a label-free validator scores the model (when
the recipe names one); the round's pseudo-labels are deleted (when the recipe does not keep them). At the
end of the run: ``final.pt``, the validator's choice as ``selected.pt``, the adapted model's own class
shares (has training itself swallowed a class?), the summary and the finished state.
"""

from __future__ import annotations

import json
import math
import time

import torch

from sfseg.engine.runtime import distributed
from sfseg.engine.training.labelling import collapse_check
from sfseg.engine.training.loop import Hook
from sfseg.engine.training.optim import unwrap
from sfseg.engine.training.trainer import peak_memory
from sfseg.fileio import atomic_write_bytes, atomic_write_text
from sfseg.models import load_checkpoint


class RoundLosses(Hook):
    """Each step's loss parts to TensorBoard; their mean over a round to the metrics log."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.t0 = time.time()

    def before_stage(self) -> None:
        self.t0 = time.time()

    def after_step(self) -> None:
        t = self.trainer
        self.steps += 1
        for k, v in t.last_values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        t.monitor.losses(t.last_values, t.last_loss, t.optimizer.param_groups[0]["lr"], t.step)

    def after_stage(self) -> None:
        t, r, n = self.trainer, self.trainer.finished_stage, max(self.steps, 1)
        t.log.write(
            {
                "phase": "train",
                "round": r,
                "steps": self.steps,
                "seconds": round(time.time() - self.t0, 1),
                "lr_scale": t.cfg.schedule.lr_round_decay ** (-r),
                **{f"loss_{k}": v / n for k, v in self.sums.items()},
            }
        )
        self.sums, self.steps = {}, 0

    def state_dict(self) -> dict:
        return {"sums": dict(self.sums), "round_steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums, self.steps = dict(state["sums"]), int(state["round_steps"])


class RoundEvaluation(Hook):
    """The target-val scores of the starting model and after each round, the weights checked first."""

    def __init__(self) -> None:
        self.history: list[dict | None] = []

    def evaluate(self, r: int, phase: str) -> None:
        t = self.trainer
        t.method.set_mode(t.model, "label")
        self.history.append(t.monitor.evaluate(r, phase, t.step))

    def after_stage(self) -> None:
        t = self.trainer
        t.guard.weights(t.step, t.last_good())  # before anything computes with them
        self.evaluate(t.finished_stage, "round")

    def state_dict(self) -> dict:
        return {"history": json.dumps(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history = json.loads(state["history"])


class RoundCheckpoints(Hook):
    """``round_<r>.pt`` after each round, ``final.pt`` (the model scored last) at the end."""

    def after_stage(self) -> None:
        t = self.trainer
        t.save_model(t.dir.round_checkpoint(t.finished_stage), round=t.finished_stage)

    def after_train(self) -> None:
        t = self.trainer
        t.final_path = t.save_model(t.dir.final, rounds=t.cfg.schedule.rounds)


class RoundPictures(Hook):
    """Fixed target images with their pseudo-labels and predictions, per round (and the diagnostics)."""

    def before_train(self) -> None:
        t = self.trainer
        if not t.resumed:
            t.monitor.look(-1, None, t.round_stats, t.step)

    def after_stage(self) -> None:
        t = self.trainer
        t.monitor.look(t.finished_stage, t.pseudo_paths, t.round_stats, t.step)


class LabelFreeSelection(Hook):
    """With ``select.validator``: every round's model (and the starting one) scored without a target
    label, and the one the validator prefers kept as ``selected.pt``."""

    def __init__(self, validator: str, max_images: int):
        self.validator, self.max_images = validator, max_images
        self.unlabelled = False  # chosen by the run because the target has no labels
        self.scores: list[dict] = []
        self.best: dict | None = None

    def score(self, r: int) -> None:
        # Building the reference models initialises their weights from the global random stream, which
        # training also draws from (a transformer's stochastic depth): scoring leaves it as it found it,
        # so a recipe trains the same model with or without a validator.
        t = self.trainer
        with torch.random.fork_rng(devices=[t.device] if t.device.type == "cuda" else []):
            source = t.ckpt.build().to(t.device)
            previous = {-1: None, 0: source}.get(r)
            if r > 0:
                previous = load_checkpoint(t.dir.round_checkpoint(r - 1), root=t.out).build().to(t.device)
            references = {"previous": previous, "source": source}
            score = t.monitor.validator_score(
                self.validator, r, unwrap(t.model), references, self.max_images, t.step
            )
        self.scores.append(score)

    def before_train(self) -> None:
        if self.validator and not self.trainer.resumed:
            self.score(-1)

    def after_stage(self) -> None:
        if self.validator:
            self.score(self.trainer.finished_stage)

    def after_train(self) -> None:
        if not self.scores:
            return
        t = self.trainer
        self.best = max(self.scores, key=lambda s: s["score"] if math.isfinite(s["score"]) else -math.inf)
        if t.dist.is_main:
            if self.best["round"] >= 0:
                data = t.dir.read_bytes(t.dir.round_checkpoint(self.best["round"]))
                atomic_write_bytes(t.dir.selected, lambda p: p.write_bytes(data), root=t.dir.path)
            else:
                source = t.ckpt
                source.provenance = {**source.provenance, "selected_by": self.best["validator"]}
                source.save(t.dir.selected, root=t.dir.path)
        distributed.barrier()
        t.log.write({"phase": "selected", **self.best})

    def state_dict(self) -> dict:
        return {"selection": json.dumps(self.scores)}

    def load_state_dict(self, state: dict) -> None:
        self.scores = json.loads(state.get("selection", "[]"))


class PseudoLabelCleanup(Hook):
    """Delete a round's pseudo-label PNGs once the round is over, unless the recipe keeps them."""

    def __init__(self, keep: bool):
        self.keep = keep

    def after_stage(self) -> None:
        t = self.trainer
        if not self.keep and t.pseudo_paths and t.dist.is_main:
            for p in t.pseudo_paths:
                p.unlink(missing_ok=True)


class RunSummary(Hook):
    """The end of the run, after ``final.pt`` and ``selected.pt``: the adapted model's own class shares
    (BatchNorm buffers restored afterwards), ``summary.json`` and the finished state."""

    def after_train(self) -> None:
        t = self.trainer
        end = None
        if t.cfg.schedule.rounds > 0:
            t.method.set_mode(t.model, "label")
            end = t.shares()
            end["collapsed"] = collapse_check(
                t.start_share, end, t.method.collapse_warning, "after the last round", t.monitor.warn
            )
            t.log.write({"phase": "final_shares", **end})
        history, final = t.evals.history, t.evals.history[-1]
        t.summary = {
            "method": t.cfg.name,
            **peak_memory(),
            "seed": t.cfg.seed,
            "final": final,
            "final_checkpoint": str(t.final_path),
            "val_miou_per_round": [h["miou"] if h else None for h in history],
            "round_stats": t.round_stats,
            "final_shares": end,
            "selected": t.selection.best,
            "validator": t.selection.validator,
            "validator_scores": t.selection.scores,
            "scored_by": "target labels"
            if final is not None
            else f"label-free validator {t.selection.validator}",
            "seconds": round(t.seconds, 1),
        }
        done = {"phase": "done", "method": t.cfg.name, "miou": None if final is None else final["miou"]}
        t.log.write({**done, "seconds": t.summary["seconds"], **peak_memory()})
        if t.dist.is_main:
            atomic_write_text(t.dir.summary, json.dumps(t.summary, indent=1), root=t.dir.path)
            t.monitor.close()
        t.save_done()
