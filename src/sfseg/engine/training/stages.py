"""Running a recipe: one stage, or a two-stage recipe (``init_from``: LDBE = LD, then BE from LD's final
checkpoint), into a run directory that is claimed, locked and checked before anything is written."""

from __future__ import annotations

from dataclasses import replace

from sfseg.adapt.method import build_method
from sfseg.config import load_config, save_config, to_dict
from sfseg.data.registry import dataset_protocol
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.training.recipe import AdaptConfig, recipe_path
from sfseg.engine.training.resume import check_same_recipe, read_state, resumable_state
from sfseg.engine.training.run import AdaptationRun
from sfseg.errors import ResumeError


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
        out=str(RunDir(cfg.out).stage(name).path),
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
    # Check this stage's method before the first stage spends any time.
    num_classes = dataset_protocol(cfg.data.dataset, cfg.data.protocol).num_classes
    build_method(cfg.method, num_classes, cfg.schedule.rounds)
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
