"""Tables of a ToyCity test over several ``sfseg bench`` outputs: target-val mIoU per world with the mean
rank over worlds (ties share their rank) and wins, then minority and majority mIoU. With several seeds
a cell is the seed mean ± the sample standard deviation over seeds (ranks and wins use the means).

Reads ``ROOT/<variant>-w<world>/<method>/seed<s>/summary.json`` under every ROOT and keeps the worlds
where every method finished (seed means when there are several seeds)::

    python scripts/suite_tables.py runs/test-w2 runs/test-w0 --methods source_only adabn ld ldbe

``--explain A B`` adds, for two self-training methods, the target-val mIoU after each round and the
pseudo-label diagnostics of the last round per class (means over the worlds and seeds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ablation_table import (
    diagnostics_table,
    load,
    miou,
    ranks,
    round_summary,
    std,
)  # the same reading of bench outputs, the same tied ranks

from sfseg.data.classes import TOYCITY

VARIANTS = ("materials", "small_objects", "fog")


def world_order(world: str) -> tuple[int, str]:
    """Sort key of ``<variant>-w<world>`` names: the suite's variant order, then the world."""
    return VARIANTS.index(world.rsplit("-w", 1)[0]), world


def load_all(roots: list[Path]) -> dict[str, dict[str, list[dict]]]:
    runs: dict[str, dict[str, list[dict]]] = {}
    for root in roots:
        for world, recipes in load(root).items():
            for method, rs in recipes.items():
                runs.setdefault(world, {}).setdefault(method, []).extend(rs)
    return runs


def score(runs, world: str, method: str, classes: list[str] | None = None) -> float:
    rs = runs[world][method]
    if classes is None:
        return float(np.mean([r["final"]["miou"] for r in rs]))
    return float(np.mean([np.mean([r["final"]["per_class"][c] for c in classes]) for r in rs]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", type=Path, help="--out folders of sfseg bench toycity")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--explain", nargs=2, metavar=("A", "B"), help="two methods to explain by diagnostics")
    args = ap.parse_args(argv)
    runs, methods = load_all(args.roots), args.methods
    worlds = sorted((w for w in runs if all(m in runs[w] for m in methods)), key=world_order)
    if not worlds:
        raise SystemExit("no world where every method finished")
    rank = ranks(runs, worlds, methods)
    wins = {
        m: sum(score(runs, w, m) == max(score(runs, w, k) for k in methods) for w in worlds) for m in methods
    }
    seeds = sorted({len(runs[w][m]) for w in worlds for m in methods})
    spread = seeds != [1]
    print(f"Target-val mIoU, {'/'.join(map(str, seeds))} training seed(s) per cell", end="")
    print(" (mean ± std over seeds; " if spread else " (", end="")
    print("rank 1 = best per world; bold = best):\n")
    print("| method | " + " | ".join(worlds) + " | mean | mean rank | wins |")
    print("|---|" + "---:|" * (len(worlds) + 3))
    for m in methods:
        cells = []
        for w in worlds:
            x, best = score(runs, w, m), max(score(runs, w, k) for k in methods)
            cell = f"{x:.1f} ± {std(miou(runs[w][m])):.1f}" if spread else f"{x:.1f}"
            cells.append(f"**{cell}**" if x == best else cell)
        mean = np.mean([score(runs, w, m) for w in worlds])
        print(f"| {m} | " + " | ".join(cells) + f" | {mean:.1f} | {rank[m]:.1f} | {wins[m]} |")
    minority = [TOYCITY.names[i] for i in TOYCITY.minority]
    majority = [n for n in TOYCITY.names if n not in minority]
    for classes, title in ((minority, "Minority"), (majority, "Majority")):
        print(f"\n{title} mIoU ({', '.join(classes)}):\n")
        print("| method | " + " | ".join(worlds) + " | mean |")
        print("|---|" + "---:|" * (len(worlds) + 1))
        for m in methods:
            vals = [score(runs, w, m, classes) for w in worlds]
            print(f"| {m} | " + " | ".join(f"{v:.1f}" for v in vals) + f" | {np.mean(vals):.1f} |")
    if args.explain:
        explain(runs, worlds, *args.explain)


def explain(runs, worlds: list[str], a: str, b: str) -> None:
    print("\nTarget-val mIoU after each round (mean over worlds and seeds; round 0 = the start):\n")
    for m in (a, b):
        curves = np.array([r["val_miou_per_round"] for w in worlds for r in runs[w][m]])
        print(f"- `{m}`: " + " -> ".join(f"{v:.1f}" for v in curves.mean(0)))
    print(f"\nPseudo-labels, last round, `{a}` / `{b}` (%):\n")
    print(diagnostics_table(runs, worlds, a, b))
    print()
    for m in (a, b):
        print(f"- `{m}`: {round_summary(runs, worlds, m)}")


if __name__ == "__main__":
    main()
