"""Running a recipe: one stage, or a chain of stages (``init_from``: LDBE = LD, then BE from LD's final
checkpoint; a recipe whose ``init_from`` names a two-stage recipe runs all three), into a run directory
that is claimed, locked and checked before anything is written."""

from __future__ import annotations

from dataclasses import replace

from sfseg.adapt.method import build_method
from sfseg.config import load_config, save_config, to_dict
from sfseg.data.classes import ClassProtocol
from sfseg.data.registry import dataset_protocol
from sfseg.engine.runtime import distributed
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.training.recipe import AdaptConfig, recipe_path
from sfseg.engine.training.resume import check_same_recipe, read_state, resumable_state
from sfseg.engine.training.run import AdaptationRun
from sfseg.errors import ConfigError, ResumeError
from sfseg.fileio import Place, check_outputs
from sfseg.models import load_for_data
from sfseg.registry import DATASETS

MAX_STAGES = 8


def init_stage_config(cfg: AdaptConfig) -> AdaptConfig:
    """The ``init_from`` recipe as this run runs it: its own method, schedule and ``init_from``; this run's
    checkpoint, seed, data and runtime; written into ``<out>/<recipe name>``."""
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


def stage_chain(cfg: AdaptConfig) -> list[AdaptConfig]:
    """Every stage of ``cfg``, first stage first (one element without ``init_from``); each stage's
    method is checked. A chain that loops or is absurdly long is refused."""
    chain, names = [cfg], [cfg.name]
    while chain[0].init_from:
        if len(chain) >= MAX_STAGES:
            raise ConfigError(f"init_from: a chain of more than {MAX_STAGES} stages ({' <- '.join(names)})")
        first = init_stage_config(chain[0])
        if first.init_from and recipe_path(first.init_from).resolve() in {
            recipe_path(c.init_from).resolve() for c in chain if c.init_from
        }:
            raise ConfigError(f"init_from loops: {' <- '.join([*names, first.name, first.init_from])}")
        chain.insert(0, first)
        names.append(first.name)
    num_classes = run_protocol(chain[0]).num_classes
    for stage in chain:
        build_method(stage.method, num_classes, stage.schedule.rounds)
    return chain


def run_protocol(cfg: AdaptConfig) -> ClassProtocol:
    """The classes a recipe adapts to: ``data.protocol``, the dataset's own, or (a folder of images) its
    checkpoint's."""
    data = cfg.data
    DATASETS.check(data.dataset, "data.dataset")
    if data.protocol or DATASETS.meta(data.dataset)["protocol"] is not None:
        return dataset_protocol(data.dataset, data.protocol)
    return load_for_data(cfg.checkpoint, data.dataset, family=cfg.checkpoint_family)[1]


def check_adapt_places(cfg: AdaptConfig) -> None:
    """The run directory must not be, contain or lie inside the run's inputs (the checkpoint, the data)."""
    check_outputs(
        [Place("out", RunDir(cfg.out).path)],
        [Place("checkpoint", cfg.checkpoint), Place("data.root", cfg.data.root, tree=True)],
    )


def run_adaptation(cfg: AdaptConfig, progress: bool = True, mode: str = "new") -> dict:
    """Adapt ``cfg.checkpoint`` to the target domain; write the run directory; return the summary.

    A recipe with ``init_from`` runs its first stage (itself possibly of several stages) into
    ``<out>/<name>`` and starts from its ``final.pt``; on resume, a finished first stage is kept and an
    unfinished one resumed. Every input of every stage is checked before anything in ``out`` is cleared or
    written, and the run directory is locked for the whole run (one process per run directory).

    Args:
        mode: ``new`` (``out`` must be empty), ``overwrite`` (clear an earlier sfseg run there first) or
            ``resume`` (continue the run in ``out`` from its last saved state).
    """
    out = RunDir(cfg.out)
    check_adapt_places(cfg)
    stage_chain(cfg)  # every stage's method, before any stage spends time
    d, _ = distributed.init(cfg.runtime.device)
    if mode == "resume":
        if not out.path.is_dir():
            raise ResumeError(f"{out} does not exist: there is no run to resume")
        if not out.is_run():
            raise ResumeError(f"{out} holds no sfseg run to resume (no {out.MARKER} or {out.STATE})")
        out.refuse_planted_links()
        if d.is_main:
            out.lock()  # before the state is read: no other process is writing it
    try:
        return _run(cfg, out, d, progress, mode)
    finally:
        if d.is_main:
            out.unlock()


def _run(cfg: AdaptConfig, out: RunDir, d, progress: bool, mode: str, first_run=None) -> dict:
    """Run ``cfg`` (all its stages) in ``mode``: ``new``, ``overwrite``, ``resume`` or ``claimed`` (the
    caller claimed ``out``)."""
    if not cfg.init_from:
        if first_run is not None:
            return first_run.run(mode)
        state = resumable_state(out.path, cfg) if mode == "resume" else None  # before any loading
        return AdaptationRun(cfg, progress).run(mode, state)
    first = init_stage_config(cfg)
    first_dir = RunDir(first.out)
    second = replace(cfg, checkpoint=str(first_dir.final), init_from="")
    if mode == "resume":
        if out.state.is_file():
            # The last stage has started: its state decides.
            state = resumable_state(out.path, cfg)
            return AdaptationRun(second, progress, recipe=cfg).run("resume", state)
        if not out.config.is_file():
            raise ResumeError(f"{out} holds no run to resume (no {out.CONFIG})")
        check_same_recipe(to_dict(load_config(AdaptConfig, out.check(out.config))), to_dict(cfg), out.path)
        if first_dir.state.is_file():
            if read_state(first_dir.path).get("phase") != "done":
                _run(first, first_dir, d, progress, "resume")
        else:
            _run(first, first_dir, d, progress, "overwrite" if first_dir.path.exists() else "new")
        return AdaptationRun(second, progress, recipe=cfg).run("claimed")
    # The innermost stage checks the checkpoint and the data now, before anything in ``out`` is cleared.
    prebuilt = first_run
    if prebuilt is None:
        innermost = stage_chain(cfg)[0]
        prebuilt = AdaptationRun(replace(innermost, out=str(_innermost_out(cfg))), progress)
    if d.is_main:
        if mode == "claimed":
            out.lock()
        else:
            out.claim(mode)
        save_config(cfg, out.config, root=out.path)
    distributed.barrier()
    _run(first, first_dir, d, progress, "new", prebuilt)
    return AdaptationRun(second, progress, recipe=cfg).run("claimed")


def _innermost_out(cfg: AdaptConfig):
    """Where the first stage of ``cfg``'s chain runs: ``<out>/<name>/<name>/...``."""
    out = RunDir(cfg.out).path
    while cfg.init_from:
        cfg = init_stage_config(replace(cfg, out=str(out)))
        out = RunDir(cfg.out).path
    return out
