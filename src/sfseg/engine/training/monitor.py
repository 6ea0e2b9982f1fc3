"""What a run shows while it runs, none of which changes what it computes: target-val scores, the round's
pseudo-label statistics with the winner-takes-all warnings, prediction grids and the pseudo-label
diagnostics figure, label-free validator scores, and their TensorBoard views."""

from __future__ import annotations

import time
from pathlib import Path

from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from sfseg.data.classes import ClassProtocol
from sfseg.engine.evaluation.evaluate import evaluate
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.evaluation.validators import score_model
from sfseg.engine.reporting.board import Board, grid_indices, log_eval, log_pseudo_labels, prediction_grid
from sfseg.engine.reporting.report import figure_rgb, has_diagnostics, pl_diagnostics_figure
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.config import RuntimeConfig
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import MetricsLog
from sfseg.engine.training.labelling import collapse_check
from sfseg.fileio import atomic_write_bytes


class RunMonitor:
    """Scores, statistics, figures and TensorBoard of one run (rank 0 writes; every rank evaluates).

    Args:
        name: the method's name (figure titles).
        run_dir: the run directory.
        log: its metrics log.
        inference: the run's one inference path.
        splits: the target splits ``(train, val)`` (val may be None: no scoring).
        protocol: the class protocol.
        dist: the process layout.
        runtime: the recipe's runtime group (batch size and workers of the evaluation passes).
        progress: show progress bars.
    """

    def __init__(
        self,
        name: str,
        run_dir: RunDir,
        log: MetricsLog,
        inference: Inference,
        splits: tuple[Dataset, Dataset | None],
        protocol: ClassProtocol,
        dist: distributed.Dist,
        runtime: RuntimeConfig,
        progress: bool,
    ):
        self.name, self.dir, self.log, self.inference = name, run_dir, log, inference
        (self.train_set, self.val_set), self.protocol, self.dist = splits, protocol, dist
        self.batch_size, self.workers, self.progress = runtime.eval_batch_size, runtime.num_workers, progress
        self.board = Board(run_dir.tensorboard, enabled=False)
        self.grid_images = grid_indices(len(self.train_set))

    def open_board(self, enabled: bool, purge_step: int | None = None) -> None:
        """Start writing TensorBoard events (a resumed run purges those after its saved state)."""
        enabled = enabled and self.dist.is_main
        if enabled:
            self.dir.mkdir(self.dir.tensorboard)
        self.board = Board(self.dir.tensorboard, enabled, purge_step=purge_step)

    def warn(self, text: str) -> None:
        if self.dist.is_main:
            tqdm.write(text)

    def evaluate(self, round_index: int, phase: str, step: int) -> dict | None:
        """Target-val scores of the current model (monitoring only), logged; None without a val split."""
        if self.val_set is None:
            return None
        t0 = time.time()
        res = evaluate(
            self.inference,
            self.val_set,
            self.protocol,
            batch_size=self.batch_size,
            workers=self.workers,
            progress=self.progress,
            desc=f"eval ({phase})",
            dist=self.dist,
        )
        record = {"phase": phase, "round": round_index, "split": "target_val"}
        self.log.write({**record, "seconds": round(time.time() - t0, 2), **res})
        log_eval(self.board, res, step)
        return res

    def round_statistics(
        self, r: int, stats: dict, start_share: dict, collapse_warning: float, step: int
    ) -> dict:
        """Log a round's pseudo-label (or prediction-share) statistics with its collapse warnings."""
        if stats.get("alpha_capped"):
            self.warn(f"round {r}: alpha is above 1 (alpha + {r} x alpha_step); capped at 1")
        if stats.get("never_predicted") and "pl_share" in stats:
            self.warn(
                f"round {r}: classes never predicted, no pseudo-labels for them: {stats['never_predicted']}"
            )
        stats["collapsed"] = collapse_check(start_share, stats, collapse_warning, f"round {r}", self.warn)
        self.log.write({"phase": "pseudo_labels", "round": r, **stats})
        log_pseudo_labels(self.board, stats, step)
        return stats

    def look(self, r: int, pseudo_paths: list[Path] | None, round_stats: list[dict], step: int) -> None:
        """The round's pictures: fixed target images with pseudo-labels, predictions and labels; and the
        pseudo-label diagnostics of every round so far (where the split has labels)."""
        if not self.dist.is_main:
            return
        grid = prediction_grid(
            self.inference, self.train_set, self.grid_images, self.protocol, pseudo_paths, root=self.dir.path
        )
        self.dir.mkdir(self.dir.figures)
        atomic_write_bytes(
            self.dir.prediction_grid(r), lambda p: Image.fromarray(grid).save(p, "PNG"), root=self.dir.path
        )
        self.board.image("predictions", grid, step)
        if r >= 0 and has_diagnostics(round_stats):
            rgb = figure_rgb(pl_diagnostics_figure(round_stats, self.protocol, f"{self.name}: pseudo-labels"))
            atomic_write_bytes(
                self.dir.diagnostics_figure, lambda p: Image.fromarray(rgb).save(p, "PNG"), root=self.dir.path
            )
            self.board.image("pl_diagnostics", rgb, step)

    def validator_score(
        self,
        validator: str,
        r: int,
        model: nn.Module,
        references: dict[str, nn.Module | None],
        max_images: int,
        step: int,
    ) -> dict:
        """Score the current model with a label-free validator (no target label is read); logged."""
        score = score_model(
            model,
            self.inference.norm,
            self.train_set,
            self.protocol,
            [validator],
            references,
            self.inference.settings,
            batch_size=self.batch_size,
            max_images=max_images,
        )[validator]
        self.log.write({"phase": "select_score", "round": r, "validator": validator, "score": score})
        self.board.scalar(f"select/{validator}", score, step)
        return {"round": r, "validator": validator, "score": score}

    def losses(self, values: dict[str, float], total: float, lr: float, step: int) -> None:
        self.board.scalars("loss", {**values, "total": total}, step)
        self.board.scalar("lr", lr, step)

    def close(self) -> None:
        self.board.close()
