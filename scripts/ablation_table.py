"""The released-code ablation's tables, from the runs of ``sfseg bench toycity`` on the development worlds.

Reads ``ROOT/<world>/<recipe>/seed<s>/summary.json`` (what the bench writes) for the recipes of
``configs/toycity/ablation/`` and prints, as Markdown:

1. every recipe's target-val mIoU per world (mean ± std over seeds) and its mean rank over the worlds;
2. the marginal effect of each released-code behaviour: switched on alone from the paper-entropy recipe
   (``on_X - ld``) and switched off alone from the released recipe (``ld_refcode - off_X``, what the
   behaviour contributes there), per world and on average, with the number of (world, seed) pairs where
   the difference has the sign of the mean;
3. for the behaviours with the largest effects, the pseudo-label diagnostics that explain them: per class,
   the true share, the selected share, the recall and accuracy of the selected labels, the error rate of
   the complementary labels, and the final IoU, in the last round (mean over worlds and seeds).

    python scripts/ablation_table.py runs/ablation > ablation.md
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from sfseg.engine.reporting.studies import (
    delta,
    diagnostics_table,
    load_runs,
    minority_miou,
    miou,
    ranks,
    round_summary,
    score_table,
)

# behaviour: (description, recipe with it switched on from ld, recipe with it switched off from ld_refcode)
BEHAVIOURS = {
    "released entropy-style term": ("-Σp·log_softmax(p) on all pixels", "on_refterm", "off_refterm_paper"),
    "no entropy-style term": ("positive + negative only", "on_noterm", "off_refterm_none"),
    "any-channel test": ("a pixel is selected if any class passes", "on_any", "off_any"),
    "released rank rule": ("the released code's per-class rank", "on_rank", "off_rank"),
    "labelling batch 1": ("per-image BN statistics when labelling", "on_bs1", "off_bs1"),
    "downsample BN affine": ("downsample branches' BN scale/shift train", "on_dsaffine", "off_dsaffine"),
}


def decision_table(runs, worlds, candidates) -> str:
    """The candidates ranked among themselves: mean rank over worlds, mean and minority mIoU."""
    rk = ranks(runs, worlds, candidates)
    lines = [
        "| candidate | " + " | ".join(worlds) + " | mean | minority mIoU | mean rank |",
        "|---|" + "---:|" * (len(worlds) + 3),
    ]
    for m in sorted(candidates, key=lambda m: (rk[m], -np.mean([miou(runs[w][m]).mean() for w in worlds]))):
        cells = [f"{miou(runs[w][m]).mean():.1f}" for w in worlds]
        mean = np.mean([miou(runs[w][m]).mean() for w in worlds])
        mino = np.mean([minority_miou(runs[w][m]) for w in worlds])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {mean:.1f} | {mino:.1f} | {rk[m]:.1f} |")
    return "\n".join(lines)


def effect_table(runs, worlds) -> tuple[str, list[tuple[float, str]]]:
    head = "| behaviour | what | " + " | ".join(f"on: {w}" for w in worlds) + " | **on: mean** | agree | "
    head += " | ".join(f"off: {w}" for w in worlds) + " | **off: mean** | agree |"
    lines = [head, "|---|---|" + "---:|" * (2 * len(worlds) + 4)]
    sizes = []
    for name, (what, on, off) in BEHAVIOURS.items():
        d_on, a_on, n_on = delta(runs, worlds, on, "ld")
        d_off, a_off, n_off = delta(runs, worlds, "ld_refcode", off)
        lines.append(
            f"| {name} | {what} | "
            + " | ".join(f"{x:+.1f}" for x in d_on)
            + f" | **{np.mean(d_on):+.1f}** | {a_on}/{n_on} | "
            + " | ".join(f"{x:+.1f}" for x in d_off)
            + f" | **{np.mean(d_off):+.1f}** | {a_off}/{n_off} |"
        )
        sizes.append((abs(np.mean(d_on)) + abs(np.mean(d_off)), name))
    return "\n".join(lines), sorted(sizes, reverse=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", type=Path, help="the --out of the ablation's sfseg bench command")
    ap.add_argument(
        "--candidates", nargs="+", default=[], help="recipes to rank among themselves (the decision)"
    )
    ap.add_argument("--explain", type=int, default=2, help="how many of the largest effects to explain")
    args = ap.parse_args(argv)
    runs = load_runs(args.root)
    recipes = sorted(set.intersection(*(set(r) for r in runs.values())))
    worlds = [w for w in runs if all(m in runs[w] for m in recipes)]
    seeds = sorted({r["seed"] for w in worlds for m in recipes for r in runs[w][m]})
    print(f"Worlds: {', '.join(worlds)}; seeds {seeds}; target-val mIoU (%), mean ± std over seeds.\n")
    print(score_table(runs, worlds, recipes), "\n")
    if args.candidates:
        print("Decision candidates ranked among themselves (target-val mIoU, seed means):\n")
        print(decision_table(runs, worlds, args.candidates), "\n")
    needed = {"ld", "ld_refcode"} | {r for _, on, off in BEHAVIOURS.values() for r in (on, off)}
    if not needed <= set(recipes):
        print(f"(no marginal effects: {', '.join(sorted(needed - set(recipes)))} not run on every world)")
        return
    table, sizes = effect_table(runs, worlds)
    print("Marginal effects (mIoU points): on = recipe with the behaviour switched on from `ld` minus `ld`; ")
    print("off = `ld_refcode` minus the recipe with it switched off (the behaviour's contribution there).\n")
    print(table, "\n")
    for _, name in sizes[: args.explain]:
        _, on, off = BEHAVIOURS[name]
        for a, b in ((on, "ld"), ("ld_refcode", off)):
            print(f"Diagnostics, {name}: `{a}` vs `{b}`, last round, mean over worlds and seeds (%)")
            print(diagnostics_table(runs, worlds, a, b), "\n")
            for m in (a, b):
                print(f"- `{m}`: {round_summary(runs, worlds, m)}")
            print()


if __name__ == "__main__":
    main()
