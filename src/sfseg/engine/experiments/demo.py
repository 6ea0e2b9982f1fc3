"""``sfseg demo``: the whole story on the embedded ToyCity benchmark, on a CPU, in minutes.

It runs on the suite's majority-biased variant (``small_objects``, test world 0), the situation the paper
is about: the source model under-predicts small objects on the target. Generate the world if absent ->
take the source model (the shipped checkpoint when it is what the recipe would train, else train it) ->
source-only, LD and the recommended recipe (the shipped recipes; others on request), two at a time on a
2-core CPU -> a per-class table, the time of each phase, figures and a run directory.

The shipped source checkpoint (``sfseg/assets/demo_source.pt``) was made by::

    sfseg toycity generate --variant small_objects --seed 0 --out data/toycity-small_objects-w0
    sfseg train-source --config configs/toycity/source.yaml data.root=data/toycity-small_objects-w0 \\
        seed=0 out=src/sfseg/assets/demo_source.pt

Its provenance records that recipe and the data's generator spec; when either differs from what the
demo would train (an edited recipe, a new generator version), it is stale and the demo trains its own.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch

from sfseg.data.classes import TOYCITY
from sfseg.data.toycity import ToyCitySpec, generate, is_generated
from sfseg.engine.experiments.bench import check_recipes, run_bench, source_config, train_or_reuse_source
from sfseg.engine.reporting.report import per_class_table, plot_pl_share
from sfseg.engine.training.recipe import config_dir
from sfseg.engine.training.source import same_training
from sfseg.fileio import Place, atomic_write_bytes, check_outputs
from sfseg.models import load_checkpoint

# The shipped recipes, unchanged: the recommended one beside source-only and LD. The recommended recipe
# is two stages (ld_balanced, then BE), so the baselines (AdaBN, naive self-training) were cut to keep the
# demo near its 3-minute budget on a 2-core CPU: ``sfseg demo --methods source_only adabn naive_st ld ...``.
DEMO_METHODS = ["source_only", "ld", "recommended"]
DEMO_SPEC = ToyCitySpec(variant="small_objects", seed=0)
SHIPPED_SOURCE = Path(__file__).resolve().parents[2] / "assets" / "demo_source.pt"


def _source_model(data_root: Path, out: Path, seed: int, overrides: list[str] | None) -> tuple[Path, str]:
    """The demo's source checkpoint: the shipped one copied when it is current, else trained."""
    cfg = source_config(data_root, out, seed, config_dir(None), overrides)
    path = Path(cfg.out)
    if SHIPPED_SOURCE.is_file() and not os.path.lexists(path):
        if same_training(load_checkpoint(SHIPPED_SOURCE).provenance, cfg):
            atomic_write_bytes(path, lambda p: shutil.copyfile(SHIPPED_SOURCE, p))
            return path, f"shipped checkpoint ({SHIPPED_SOURCE.name}, current with the recipe and data)"
    res = train_or_reuse_source(cfg, progress=True)
    return path, "reused from an earlier demo" if res["reused"] else "trained (the shipped one is stale)"


def run_demo(
    data_root: str | Path | None = None,
    out: str | Path = "runs/demo",
    seed: int = 0,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    source_overrides: list[str] | None = None,
    spec: ToyCitySpec | None = None,
    jobs: int | None = None,
) -> dict:
    """Run the demo; ``overrides``/``source_overrides``/``spec`` shrink it for tests."""
    t0 = time.time()
    phases: list[tuple[str, float, str]] = []
    spec = spec or DEMO_SPEC
    data_root = Path(data_root or f"data/toycity-{spec.variant}-w{spec.seed}")
    out = Path(out)
    if jobs is None:
        jobs = 1 if torch.cuda.is_available() else min(2, len(os.sched_getaffinity(0)))
    methods = methods or DEMO_METHODS
    check_recipes(methods, config_dir(None), list(overrides or []))  # before any work
    check_outputs([Place("--out", out)], [Place("--data", data_root, tree=True)])
    t = time.time()
    if not is_generated(data_root, spec):
        print(f"Generating ToyCity ({spec.variant}, world {spec.seed}) in {data_root} ...", flush=True)
        generate(data_root, spec)
        phases.append(("generate the data", time.time() - t, str(data_root)))
    else:
        phases.append(("generate the data", time.time() - t, f"already in {data_root}"))
    t = time.time()
    _, how = _source_model(data_root, out, seed, source_overrides)
    phases.append(("source model", time.time() - t, how))
    t = time.time()
    print(f"Adapting with {len(methods)} methods, {jobs} at a time ...", flush=True)
    res = run_bench(
        data_root,
        out,
        methods=methods,
        seeds=[seed],
        overrides=overrides,
        source_overrides=source_overrides,
        jobs=jobs,
    )
    phases.append(("adaptation runs", time.time() - t, f"{len(methods)} methods, {jobs} at a time"))
    _show(res, methods, spec, out, phases)
    print(f"Demo finished in {time.time() - t0:.0f} s")
    return res


def _show(res: dict, methods: list[str], spec: ToyCitySpec, out: Path, phases: list) -> None:
    """The demo's figures, per-class table, winner-takes-all lines and time per phase."""
    figures = [out / "per_class_iou.png"]
    for m in methods:
        stats = res["runs"][m][0]["round_stats"]
        if stats:
            figures.append(
                plot_pl_share(
                    stats,
                    out / f"pl_share_{m}.png",
                    TOYCITY,
                    title=f"{m}: class shares of the pseudo-labels per round",
                )
            )
    print()
    print(
        f"ToyCity {spec.variant} (world {spec.seed}) target val, IoU % "
        "(one seed; docs/RESULTS.md has the 3-seed suite)"
    )
    print(per_class_table({m: r[0] for m, r in res["results"].items()}, TOYCITY))
    print()
    minority = [TOYCITY.names[i] for i in TOYCITY.minority]
    for m in methods:
        run = res["runs"][m][0]
        if run["final_shares"]:
            start = sum(run["round_stats"][0]["pred_share"][n] for n in minority) * 100
            end = sum(run["final_shares"]["pred_share"][n] for n in minority) * 100
            warned = run["final_shares"]["collapsed"] or "none"
            print(
                f"{m}: minority classes hold {start:.1f}% of the starting model's target predictions, "
                f"{end:.1f}% after adaptation; collapse warnings: {warned}"
            )
    for m in methods:
        chosen = res["runs"][m][0].get("selected")
        if chosen:
            print(
                f"{m}: its label-free validator ({chosen['validator']}) chose round {chosen['round']} as "
                f"selected.pt (the table shows the last round, final.pt)"
            )
    more = [m for m in ("adabn", "naive_st", "ldbe") if m not in methods]
    if more:
        print("\nMore methods (minutes each): sfseg demo --methods " + " ".join(methods + more))
    print(f"\nRun directory: {out}  (config.yaml, metrics.jsonl, checkpoints, pseudo_labels/ per method)")
    print("Figures: " + ", ".join(str(f) for f in figures))
    print(f"\nTime per phase (this machine now: {matmul_gflops():.0f} GFLOP/s fp32 matmul):")
    for name, seconds, note in phases:
        print(f"  {name:<20} {seconds:6.1f} s  ({note})")
        if name == "adaptation runs":
            for m in methods:
                print(f"    {m:<18} {res['runs'][m][0]['seconds']:6.1f} s")


def matmul_gflops(seconds: float = 0.5) -> float:
    """How fast this machine is right now: fp32 1024x1024 matmuls per second, in GFLOP/s (times of a
    shared machine vary from hour to hour; this says which hour)."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return n * 2 * 1024**3 / (time.perf_counter() - t0) / 1e9
