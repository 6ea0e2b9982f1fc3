"""Does a method help one backbone the way it helps another? Gains over a baseline (default: the source
model), world by world, for several ``sfseg bench toycity`` outputs, one per backbone.

Reads ``ROOT/<variant>-w<world>/<method>/seed<s>/summary.json`` (seed means) and keeps the worlds that
every root has finished for every method. Prints, as Markdown, the gain in mIoU and in minority mIoU over
the baseline per world and on average, and in how many worlds the gain is positive::

    python scripts/compare_backbones.py --root cnn=runs/test --root mit=runs/mit \\
        --methods adabn naive_st tent ld ldbe
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ablation_table import load, minority_miou, miou
from suite_tables import world_order


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", action="append", required=True, help="NAME=DIR, one per backbone")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--baseline", default="source_only")
    args = ap.parse_args(argv)
    roots = dict(r.split("=", 1) for r in args.root)
    runs = {name: load(Path(d)) for name, d in roots.items()}
    needed = [args.baseline, *args.methods]
    worlds = sorted(
        set.intersection(*(set(w for w in r if all(m in r[w] for m in needed)) for r in runs.values())),
        key=world_order,
    )
    if not worlds:
        raise SystemExit("no world where every root finished every method")
    seeds = {name: sorted({len(r[w][m]) for w in worlds for m in needed}) for name, r in runs.items()}
    print(
        "Seeds per cell: "
        + ", ".join(f"{n} {'/'.join(map(str, s))}" for n, s in seeds.items())
        + f". Baseline: {args.baseline} (its own score per world in the first rows).\n"
    )
    for title, metric in (("mIoU", lambda rs: float(miou(rs).mean())), ("Minority mIoU", minority_miou)):
        print(f"{title} gain over {args.baseline} (points; positive = the method helps):\n")
        print("| method | backbone | " + " | ".join(worlds) + " | mean | worlds helped |")
        print("|---|---|" + "---:|" * (len(worlds) + 2))
        for name, r in runs.items():
            base = [metric(r[w][args.baseline]) for w in worlds]
            cells = " | ".join(f"{b:.1f}" for b in base)
            print(f"| *{args.baseline}* | {name} | {cells} | {np.mean(base):.1f} | |")
        for m in args.methods:
            for name, r in runs.items():
                gain = [metric(r[w][m]) - metric(r[w][args.baseline]) for w in worlds]
                cells = " | ".join(f"{g:+.1f}" for g in gain)
                helped = sum(g > 0 for g in gain)
                print(f"| {m} | {name} | {cells} | {np.mean(gain):+.1f} | {helped}/{len(worlds)} |")
        print()


if __name__ == "__main__":
    main()
