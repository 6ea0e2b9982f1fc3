"""Methods x seeds on ToyCity: one source model per seed, every method adapted from it.

The seed changes the source model's initialisation and sampling as well as the adaptation's, so the
reported std covers both sources of variance (the ToyCity world itself is fixed by its generator seed).
:func:`run_bench` does one world; :func:`run_suite` does every (variant, world) of the ToyCity suite and
writes the cross-variant summary. Trainings run as jobs (``jobs`` at a time, see
:mod:`sfseg.engine.experiments.jobs`); a two-stage method (LDBE) starts from the same seed's run of its
first stage when that is in the method list.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from sfseg.config import load_config, to_dict
from sfseg.data.classes import TOYCITY
from sfseg.data.toycity import ToyCitySpec, generate, is_generated
from sfseg.data.toycity.dataset import check_toycity_root
from sfseg.engine.experiments.jobs import Job, run_jobs
from sfseg.engine.reporting.report import per_class_table, plot_per_class, trajectory_table
from sfseg.engine.reporting.studies import share_table, suite_report
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.training.recipe import AdaptConfig, SourceConfig, config_dir, recipe_path
from sfseg.engine.training.resume import describe_differences, read_state
from sfseg.engine.training.source import same_training, source_run_dir, train_source
from sfseg.engine.training.stages import run_adaptation, stage_chain
from sfseg.errors import ConfigError, SfsegError
from sfseg.fileio import Place, atomic_write_text, check_outputs
from sfseg.models import load_checkpoint

ORACLE = "oracle"
"""The method name that makes the bench train a world's oracle (``oracle.yaml``) instead of adapting."""


def source_config(
    data_root: str | Path,
    out: Path,
    seed: int,
    configs: Path,
    overrides: list[str] | None = None,
    oracle=False,
) -> SourceConfig:
    name = "oracle" if oracle else "source"
    return load_config(
        SourceConfig,
        configs / f"{name}.yaml",
        [
            f"data.root={data_root}",
            f"seed={seed}",
            f"out={out / f'{name}_seed{seed}.pt'}",
            *(overrides or []),
        ],
    )


def train_or_reuse_source(cfg: SourceConfig, progress: bool = False) -> dict:
    """Train the model of ``cfg`` unless ``cfg.out`` already holds one made by the same recipe; a killed
    run of the same recipe is resumed, anything else in its place trained again."""
    path, run = Path(cfg.out), source_run_dir(cfg.out)
    if path.is_file():
        prov = load_checkpoint(path).provenance
        if same_training(prov, cfg):
            key = next((k for k in prov if k.endswith("_val_miou")), None)
            return {"val_miou": prov.get(key) if key else None, "reused": True}
    mode = "overwrite" if path.exists() or run.path.exists() else "new"
    if run.state.is_file():
        state = read_state(run.path)
        if state.get("phase") != "done" and not describe_differences(state["config"], to_dict(cfg)):
            mode = "resume"
    summary = train_source(cfg, progress=progress, mode=mode)
    return {"val_miou": summary["val_miou"], "reused": False}


def train_or_reuse_oracle(cfg: SourceConfig, progress: bool = False) -> dict:
    """The oracle of a world: the source network and recipe trained on the target domain's labels
    (``oracle.yaml``), trained or reused like a source model. Returns a summary shaped like an adaptation
    run's (``final``: its target-val scores) so that the reports put it beside the methods."""
    train_or_reuse_source(cfg, progress)
    run = source_run_dir(cfg.out)
    summary = run.read_json(run.summary)
    if "final" not in summary:
        raise SfsegError(f"{run.summary} has no target-val scores; delete {run} to train the oracle again")
    return {"method": ORACLE, "seed": cfg.seed, "final": summary["final"], "checkpoint": str(cfg.out)}


def adapt_or_reuse(
    cfg: AdaptConfig, progress: bool = False, resume: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Run ``cfg``; with ``resume``, reuse a finished run of the same recipe and resume an unfinished one.

    A run of another recipe in ``cfg.out`` is run again (its directory replaced, as without ``resume``),
    and ``log`` says which keys differ, so that a changed flag is not mistaken for a reused result.
    """
    out = RunDir(cfg.out)
    if resume and out.state.is_file():
        state = read_state(out.path)
        shown = describe_differences(state["config"], to_dict(cfg))
        if not shown:
            if state.get("phase") == "done" and out.summary.is_file():
                return out.read_json(out.summary)
            return run_adaptation(cfg, progress=progress, mode="resume")
        log(f"{out}: its saved run is of another recipe (differs in {shown}); running it again")
    return run_adaptation(cfg, progress=progress, mode="overwrite")


@dataclass
class World:
    """One ToyCity world of the bench: its data, where its runs go, and a name for reports."""

    name: str
    data_root: Path
    out: Path
    source_dir: Path


def world_jobs(
    world: World,
    methods: list[str],
    seeds: list[int],
    configs: Path,
    overrides: list[str],
    source_overrides: list[str],
    resume: bool,
    progress: bool,
) -> tuple[list[Job], dict[tuple[str, int], str]]:
    """The source and adaptation jobs of one world; returns them and ``{(method, seed): job key}``."""
    jobs, keys = [], {}
    for seed in seeds:
        scfg = source_config(world.data_root, world.source_dir, seed, configs, source_overrides)
        skey = f"source:{scfg.out}"  # worlds that share a source directory share this job
        jobs.append(Job(skey, train_or_reuse_source, (scfg, progress)))
        for m in methods:
            if m == ORACLE:
                # Per (world, seed): the variants share a source domain but not a target domain.
                ocfg = source_config(world.data_root, world.out / m, seed, configs, source_overrides, True)
                keys[(m, seed)] = f"{world.name}/{m}/seed{seed}"
                jobs.append(Job(keys[(m, seed)], train_or_reuse_oracle, (ocfg, progress)))
                continue
            cfg = load_config(
                AdaptConfig,
                recipe_path(m, configs),
                [
                    f"data.root={world.data_root}",
                    f"checkpoint={scfg.out}",
                    f"seed={seed}",
                    f"out={world.out / m / f'seed{seed}'}",
                    *overrides,
                ],
            )
            after = [skey]
            first = _first_stage_in(cfg.init_from, methods, configs)
            if first:
                # A two-stage method (LDBE) starts from this seed's run of its first stage, not a rerun.
                cfg = replace(
                    cfg, checkpoint=str(RunDir(world.out / first / f"seed{seed}").final), init_from=""
                )
                after.append(f"{world.name}/{first}/seed{seed}")
            key = f"{world.name}/{m}/seed{seed}"
            # A second attempt (the Ray executor's, after its worker died) resumes the run it left.
            jobs.append(
                Job(key, adapt_or_reuse, (cfg, progress, resume), after, retry_args=(cfg, False, True))
            )
            keys[(m, seed)] = key
    return jobs, keys


def _first_stage_in(init_from: str, methods: list[str], configs: Path) -> str:
    """The method of ``methods`` whose recipe is the first stage ``init_from`` names (``ld``, or
    ``toycity/mit/ld`` for a recipe of another directory), or ``""``."""
    if not init_from:
        return ""
    first = recipe_path(init_from, configs).resolve()
    return next((m for m in methods if recipe_path(m, configs).resolve() == first), "")


def write_world_report(out: Path, runs: dict[str, list[dict]], seeds: list[int], title: str) -> dict:
    results = {m: [r["final"] for r in rs] for m, rs in runs.items()}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps({"results": results, "runs": runs}, indent=1))
    atomic_write_text(
        out / "results.md",
        f"{title}, target val, {len(seeds)} seed(s) {seeds}, mean ± std (IoU %)\n\n"
        f"{per_class_table(results, TOYCITY)}\n\n"
        "Target-val mIoU after each step (0 = source model; AdaBN adds a step; then one per round), "
        f"mean over seeds:\n\n{trajectory_table(runs)}\n\n"
        "Minority classes' share of the target-train predictions of the starting model and after "
        "adaptation:\n\n"
        f"{share_table(runs, TOYCITY)}\n",
    )
    plot_per_class(results, out / "per_class_iou.png", title=f"{title}, per-class IoU ({len(seeds)} seed(s))")
    return results


def check_recipes(
    methods: list[str],
    configs: Path,
    overrides: list[str],
    seeds: list[int] | None = None,
    source_overrides: list[str] | None = None,
) -> None:
    """Everything about a bench's recipes that can fail, before any training: a method or seed named
    twice, a missing recipe, an override that does not fit some method's recipe, a composition (of any
    stage of a chain) that cannot work, a source recipe override that does not fit."""
    for what, values in (("--methods", methods), ("--seeds", seeds or [])):
        repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
        if repeated:
            raise ConfigError(f"{what} names {repeated} more than once; name each once")
    if not methods:
        raise ConfigError("--methods names no method")
    for m in methods:
        if m == ORACLE:
            source_config(".", Path("."), 0, configs, source_overrides, oracle=True)
            continue
        try:
            stage_chain(load_config(AdaptConfig, recipe_path(m, configs), overrides))
        except SfsegError as e:
            raise type(e)(f"method {m}: {e}") from None
    if source_overrides:
        source_config(".", Path("."), 0, configs, source_overrides)


def run_bench(
    data_root: str | Path,
    out: str | Path,
    methods: list[str],
    seeds: list[int],
    recipes: str | Path | None = None,
    overrides: list[str] | None = None,
    source_overrides: list[str] | None = None,
    progress: bool = True,
    source_dir: str | Path | None = None,
    resume: bool = False,
    jobs: int | None = None,
    executor: str = "local",
    address: str = "",
    cpus_per_job: int = 1,
    gpus_per_job: float = 0,
) -> dict:
    """Run ``methods`` x ``seeds`` on one ToyCity world; write results.json, results.md and
    per_class_iou.png to ``out``.

    Source models are cached as ``source_seed<s>.pt`` in ``source_dir`` (default ``out``) and reused when
    their recipe matches, so several benches can share them. Each run directory is cleared and run again,
    unless ``resume``: then a finished run of the same recipe is reused and an unfinished one resumed.
    ``jobs``: runs at a time (default: one process locally; on Ray, every run whose inputs are ready).

    Returns:
        ``{"results": {method: [final eval per seed]}, "runs": {method: [summary per seed]}}``.
    """
    data_root = check_toycity_root(data_root)
    configs = config_dir(recipes)
    out = Path(out)
    overrides = list(overrides or [])
    check_recipes(methods, configs, overrides, seeds, source_overrides)
    check_outputs([Place("--out", out)], [Place("--data", Path(data_root), tree=True)])
    out.mkdir(parents=True, exist_ok=True)
    world = World("toycity", Path(data_root), out, Path(source_dir or out))
    t0 = time.time()
    job_list, keys = world_jobs(
        world,
        methods,
        seeds,
        configs,
        overrides,
        list(source_overrides or []),
        resume,
        progress and executor == "local" and (jobs or 1) == 1,
    )
    shared = [Path(data_root), Path(source_dir or out), out]
    done = _run(job_list, jobs, executor, address, (cpus_per_job, gpus_per_job), shared)
    runs = {m: [done[keys[(m, s)]] for s in seeds] for m in methods}
    for m in methods:
        print(f"{m}: target-val mIoU " + ", ".join(f"{r['final']['miou']:.1f}" for r in runs[m]), flush=True)
    results = write_world_report(out, runs, seeds, "ToyCity")
    print(f"bench finished in {time.time() - t0:.0f} s; results in {out}")
    return {"results": results, "runs": runs}


def world_root(data_dir: str | Path, variant: str, world: int) -> Path:
    """Where ``sfseg`` keeps a suite world's data: ``<data_dir>/toycity-<variant>-w<world>``."""
    return Path(data_dir) / f"toycity-{variant}-w{world}"


def ensure_world(data_dir: str | Path, variant: str, world: int, base: ToyCitySpec | None = None) -> Path:
    """Generate a suite world unless it is already there (``base``: sizes, for tests)."""
    root = world_root(data_dir, variant, world)
    spec = replace(base or ToyCitySpec(), seed=world, variant=variant)
    if not is_generated(root, spec):
        generate(root, spec, progress=False)
    return root


def run_suite(
    variants: list[str],
    worlds: list[int],
    methods: list[str],
    seeds: list[int],
    out: str | Path,
    data_dir: str | Path = "data",
    recipes: str | Path | None = None,
    overrides: list[str] | None = None,
    source_overrides: list[str] | None = None,
    resume: bool = False,
    jobs: int | None = None,
    base: ToyCitySpec | None = None,
    source_dir: str | Path | None = None,
    executor: str = "local",
    address: str = "",
    cpus_per_job: int = 1,
    gpus_per_job: float = 0,
) -> dict:
    """Every method x seed on every (variant, world) of the ToyCity suite, then per-world reports in
    ``<out>/<variant>-w<world>/`` and the suite summary (``<out>/suite.md``, ``suite.json``). Source
    models are cached in ``<source_dir>/sources-w<world>/`` (default ``source_dir``: ``out``), so several
    suites can share them."""
    configs = config_dir(recipes)
    out = Path(out)
    overrides = list(overrides or [])
    check_recipes(methods, configs, overrides, seeds, source_overrides)
    for what, values in (("--variants", variants), ("--worlds", worlds)):
        if len(set(values)) != len(values):
            raise ConfigError(f"{what} names {sorted({v for v in values if values.count(v) > 1})} twice")
    check_outputs(
        [Place("--out", out)],
        [Place(f"world {v}-w{w}", world_root(data_dir, v, w), tree=True) for v in variants for w in worlds],
    )
    t0 = time.time()
    all_jobs, keys = [], {}
    for v in variants:
        for w in worlds:
            root = ensure_world(data_dir, v, w, base)
            name = f"{v}-w{w}"
            # The variants share one source domain: one source model per (world, seed) serves them all.
            world = World(name, root, out / name, Path(source_dir or out) / f"sources-w{w}")
            job_list, k = world_jobs(
                world, methods, seeds, configs, overrides, list(source_overrides or []), resume, False
            )
            known = {x.key for x in all_jobs}  # a source model shared by the variants is one job
            all_jobs += [j for j in job_list if j.key not in known]
            keys[name] = k
    roots = [world_root(data_dir, v, w) for v in variants for w in worlds]
    shared = [*roots, Path(source_dir or out), out]
    done = _run(all_jobs, jobs, executor, address, (cpus_per_job, gpus_per_job), shared)
    per_world = {}
    for name, k in keys.items():
        runs = {m: [done[k[(m, s)]] for s in seeds] for m in methods}
        write_world_report(out / name, runs, seeds, f"ToyCity {name}")
        per_world[name] = runs
    summary = suite_report(per_world, methods, TOYCITY)
    atomic_write_text(out / "suite.json", json.dumps({"seeds": seeds, "worlds": per_world}, indent=1))
    atomic_write_text(out / "suite.md", summary)
    print(summary)
    print(f"suite finished in {time.time() - t0:.0f} s; results in {out}")
    return per_world


def _run(
    job_list: list[Job], jobs: int | None, executor: str, address: str, per_job: tuple, shared: list
) -> dict:
    """The jobs on the chosen executor: ``local`` (``jobs`` processes, default 1) or ``ray`` (at most
    ``jobs`` tasks at once, default as many as are ready; ``per_job``: each task's CPUs and GPUs;
    ``shared``: the paths every node must see)."""
    log = lambda s: print(s, flush=True)  # noqa: E731
    if executor == "local":
        if address:
            raise ConfigError("--address names a Ray cluster: use it with --executor ray")
        return run_jobs(job_list, jobs or 1, log=log)
    if executor != "ray":
        raise ConfigError(f"unknown executor {executor!r}; executors: ['local', 'ray']")
    from sfseg.engine.experiments.ray_executor import ray_executor

    cpus, gpus = per_job
    if not 0 <= gpus <= 64:
        raise ConfigError(f"--gpus-per-job: must be in [0, 64], got {gpus}")
    return run_jobs(job_list, log=log, executor=ray_executor(address, cpus, jobs or 0, shared, gpus))
