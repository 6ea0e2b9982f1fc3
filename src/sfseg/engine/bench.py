"""Methods x seeds on ToyCity: one source model per seed, every method adapted from it.

The seed changes the source model's initialisation and sampling as well as the adaptation's, so the
reported std covers both sources of variance (the ToyCity data itself is fixed).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from sfseg.adapt.config import AdaptConfig
from sfseg.config import load_config, to_dict
from sfseg.data.classes import TOYCITY
from sfseg.data.datasets import check_toycity_root
from sfseg.engine.recipes import config_dir, recipe_path
from sfseg.engine.report import per_class_table, plot_per_class, share_table, trajectory_table
from sfseg.engine.run import read_state, recipe_differences, run_adaptation
from sfseg.engine.train_source import SourceConfig, train_source
from sfseg.models import load_checkpoint


def source_checkpoint(
    data_root: str | Path,
    out: Path,
    seed: int,
    configs: Path,
    progress: bool = True,
    overrides: list[str] | None = None,
) -> Path:
    """Train (or reuse) the source model for ``seed``; reused only if its recipe matches."""
    cfg = load_config(
        SourceConfig,
        configs / "source.yaml",
        [
            f"data.root={data_root}",
            f"seed={seed}",
            f"out={out / f'source_seed{seed}.pt'}",
            *(overrides or []),
        ],
    )
    path = Path(cfg.out)
    if path.is_file():
        prov = load_checkpoint(path).provenance
        if prov.get("recipe") == to_dict(cfg):
            return path
    train_source(cfg, progress=progress)
    return path


def _run_or_reuse(cfg: AdaptConfig, progress: bool, resume: bool) -> dict:
    out = Path(cfg.out)
    if resume and (out / "state.pt").is_file():
        state = read_state(out)
        if recipe_differences(state["config"], to_dict(cfg)) == []:
            if state.get("phase") == "done" and (out / "summary.json").is_file():
                return json.loads((out / "summary.json").read_text())
            return run_adaptation(cfg, progress=progress, mode="resume")
    return run_adaptation(cfg, progress=progress, mode="overwrite")


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
) -> dict:
    """Run ``methods`` x ``seeds``; write results.json, results.md and per_class_iou.png to ``out``.

    Source models are cached as ``source_seed<s>.pt`` in ``source_dir`` (default ``out``) and reused when
    their recipe matches, so several benches can share them. Each run directory is cleared and run again,
    unless ``resume``: then a finished run of the same recipe is reused and an unfinished one resumed.

    Returns:
        ``{"results": {method: [final eval per seed]}, "runs": {method: [summary per seed]}}``.
    """
    check_toycity_root(data_root)
    configs = config_dir(recipes)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for m in methods:
        # Fail before any training if a recipe is missing or an override does not fit it.
        load_config(AdaptConfig, recipe_path(m, configs), overrides or [])
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    t0 = time.time()
    for seed in seeds:
        ckpt = source_checkpoint(
            data_root, Path(source_dir or out), seed, configs, progress, source_overrides
        )
        finished: dict[str, Path] = {}
        for m in methods:
            cfg = load_config(
                AdaptConfig,
                configs / f"{m}.yaml",
                [
                    f"data.root={data_root}",
                    f"checkpoint={ckpt}",
                    f"seed={seed}",
                    f"out={out / m / f'seed{seed}'}",
                    *(overrides or []),
                ],
            )
            if cfg.init_from in finished:
                # A two-stage method (LDBE) starts from this seed's run of its first stage, not a rerun.
                cfg = replace(cfg, checkpoint=str(finished[cfg.init_from]), init_from="")
            runs[m].append(_run_or_reuse(cfg, progress, resume))
            finished[m] = Path(cfg.out) / "final.pt"
            print(f"[seed {seed}] {m}: target-val mIoU {runs[m][-1]['final']['miou']:.1f}", flush=True)
    results = {m: [r["final"] for r in rs] for m, rs in runs.items()}
    (out / "results.json").write_text(json.dumps({"results": results, "runs": runs}, indent=1))
    (out / "results.md").write_text(
        f"ToyCity target val, {len(seeds)} seed(s) {seeds}, mean ± std (IoU %)\n\n"
        f"{per_class_table(results, TOYCITY)}\n\n"
        "Target-val mIoU after each step (0 = source model; AdaBN adds a step; then one per round), "
        f"mean over seeds:\n\n{trajectory_table(runs)}\n\n"
        "Minority classes' share of the target-train predictions of the starting model and after "
        "adaptation:\n\n"
        f"{share_table(runs, TOYCITY)}\n"
    )
    plot_per_class(
        results, out / "per_class_iou.png", title=f"ToyCity target val, per-class IoU ({len(seeds)} seed(s))"
    )
    print(f"bench finished in {time.time() - t0:.0f} s; results in {out}")
    return {"results": results, "runs": runs}
