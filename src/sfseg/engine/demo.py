"""``sfseg demo``: the whole story on the embedded ToyCity benchmark, on a CPU, in minutes.

Generate ToyCity if absent -> train (or reuse) the source model -> source-only, AdaBN, naive
self-training, LD and LDBE (BE from the LD run) -> a per-class table, figures and a run directory.
"""

from __future__ import annotations

import time
from pathlib import Path

from sfseg.data.classes import TOYCITY
from sfseg.data.toycity import ToyCitySpec, generate, is_generated
from sfseg.engine.bench import run_bench
from sfseg.engine.report import per_class_table, plot_pl_share

DEMO_METHODS = ["source_only", "adabn", "naive_st", "ld", "ldbe"]


def run_demo(
    data_root: str | Path = "data/toycity",
    out: str | Path = "runs/demo",
    seed: int = 0,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    source_overrides: list[str] | None = None,
    spec: ToyCitySpec | None = None,
) -> dict:
    """Run the demo; ``overrides``/``source_overrides``/``spec`` shrink it for tests."""
    t0 = time.time()
    data_root, out = Path(data_root), Path(out)
    spec = spec or ToyCitySpec()
    if not is_generated(data_root, spec):
        print(f"Generating ToyCity in {data_root} ...", flush=True)
        generate(data_root, spec)
    else:
        print(f"Using ToyCity in {data_root}", flush=True)
    methods = methods or DEMO_METHODS
    res = run_bench(
        data_root, out, methods=methods, seeds=[seed], overrides=overrides, source_overrides=source_overrides
    )
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
    print("ToyCity target val, IoU % (single seed; see docs/RESULTS.md for 3-seed means)")
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
    print(f"\nRun directory: {out}  (config.yaml, metrics.jsonl, checkpoints, pseudo_labels/ per method)")
    print("Figures: " + ", ".join(str(f) for f in figures))
    print(f"Demo finished in {time.time() - t0:.0f} s")
    return res
