"""Tables of studies over ``sfseg bench toycity`` outputs: the suite's per-world scores with tied ranks and
wins, minority and majority mIoU, the distance to the limit (each method's share of the source-only ->
oracle gap, and the classes each run lost), the pseudo-label diagnostics that explain a difference, the
marginal effects of an ablation, and the gains of a method on several backbones.

Every table reads the same thing: ``ROOT/<world>/<method>/seed<s>/summary.json`` under each ROOT (what
the bench writes; the oracle's, where the bench trained one, under ``<world>/oracle/``), as
``{world: {method: [summary per seed]}}`` (:func:`load_runs`). A cell is the seed mean, ``± the sample
standard deviation over seeds`` where there are several; ranks and wins use the seed means.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sfseg.data.classes import TOYCITY, ClassProtocol

Runs = dict[str, dict[str, list[dict]]]
VARIANT_ORDER = ("materials", "small_objects", "fog")
COLLAPSE_MIN_IOU = 5.0
"""A class counts as collapsed in a run when its source-only IoU was at least this (a class the source
model had) and the run's IoU is below half of the source-only IoU."""


# -------------------------------------------------------------------------------------------- reading
def load_runs(*roots: Path) -> Runs:
    """``{world: {method: [summary per seed]}}`` for every finished run under the roots (merged)."""
    runs: Runs = {}
    for root in roots:
        for f in sorted(Path(root).glob("*/*/seed*/summary.json")):
            world, method = f.parts[-4], f.parts[-3]
            runs.setdefault(world, {}).setdefault(method, []).append(json.loads(f.read_text()))
        for f in sorted(Path(root).glob("*/oracle/oracle_seed*/summary.json")):  # a source-like run
            summary = json.loads(f.read_text())
            summary.setdefault("seed", int(f.parts[-2].removeprefix("oracle_seed")))
            runs.setdefault(f.parts[-4], {}).setdefault("oracle", []).append(summary)
    for methods in runs.values():
        for rs in methods.values():
            rs.sort(key=lambda r: r.get("seed", 0))
    return runs


def world_order(world: str) -> tuple[int, str]:
    """Sort key of ``<variant>-w<world>`` names: the suite's variant order, then the world."""
    variant = world.rsplit("-w", 1)[0]
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else len(VARIANT_ORDER)), world


def complete_worlds(runs: Runs, methods: list[str]) -> list[str]:
    """The worlds where every method finished, in the suite's order."""
    return sorted((w for w in runs if all(m in runs[w] for m in methods)), key=world_order)


# ------------------------------------------------------------------------------------------ statistics
def mean_std(values: list[float | None]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value), skipping None; NaN for none."""
    a = np.asarray([v for v in values if v is not None], dtype=float)
    if not len(a):
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def format_mean_std(values: list[float | None], digits: int = 1) -> str:
    """``mean ± std`` (the mean alone for one value, ``-`` for none): the one formatter of every table."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return "-"
    mu, sd = mean_std(finite)
    return f"{mu:.{digits}f}" if len(finite) == 1 else f"{mu:.{digits}f} ± {sd:.{digits}f}"


def miou(runs: list[dict]) -> np.ndarray:
    return np.array([r["final"]["miou"] for r in runs])


def class_miou(runs: list[dict], classes: list[str]) -> float:
    """Seed-mean IoU over ``classes``."""
    return float(np.mean([np.mean([r["final"]["per_class"][c] for c in classes]) for r in runs]))


def minority_miou(runs: list[dict], protocol: ClassProtocol = TOYCITY) -> float:
    return class_miou(runs, [protocol.names[i] for i in protocol.minority])


def ranks(runs: Runs, worlds: list[str], methods: list[str]) -> dict[str, float]:
    """Mean rank over worlds (1 = best seed-mean mIoU of ``methods`` in a world; ties share the mean rank)."""
    out: dict[str, list[float]] = {m: [] for m in methods}
    for w in worlds:
        score = {m: round(float(miou(runs[w][m]).mean()), 6) for m in methods}
        for m in methods:
            better = sum(v > score[m] for v in score.values())
            tied = sum(v == score[m] for v in score.values()) - 1
            out[m].append(1 + better + tied / 2)
    return {m: float(np.mean(v)) for m, v in out.items()}


def gap_share(score: float, source: float, oracle: float) -> float | None:
    """The share of the source-only -> oracle gap a score closes; None when the oracle is not ahead."""
    return float((score - source) / (oracle - source)) if oracle > source else None


def gap_closed(runs: Runs, world: str, method: str, source: str = "source_only", oracle: str = "oracle"):
    """The share of the source-only -> oracle gap ``method`` closes in ``world`` (seed means); None
    without an oracle."""
    if oracle not in runs[world] or source not in runs[world]:
        return None
    s, o = miou(runs[world][source]).mean(), miou(runs[world][oracle]).mean()
    return gap_share(miou(runs[world][method]).mean(), s, o)


def collapsed_classes(run: dict, source_only: dict, threshold: float = COLLAPSE_MIN_IOU) -> list[str]:
    """The classes ``run`` lost: source-only IoU >= ``threshold`` and the run's below half of it."""
    before, after = source_only["final"]["per_class"], run["final"]["per_class"]
    return [c for c, v in before.items() if v is not None and v >= threshold and (after[c] or 0) < v / 2]


def collapses(runs: Runs, worlds: list[str], method: str, source: str = "source_only") -> list[list[str]]:
    """Per (world, seed) run of ``method``: the classes it lost against the same seed's source-only run."""
    out = []
    for w in worlds:
        so = {r["seed"]: r for r in runs[w].get(source, [])}
        out += [collapsed_classes(r, so[r["seed"]]) for r in runs[w][method] if r["seed"] in so]
    return out


# ---------------------------------------------------------------------------------------------- tables
def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def score_table(runs: Runs, worlds: list[str], methods: list[str]) -> str:
    """mIoU per world (mean ± std, bold the best), mean, mean rank and wins."""
    rank = ranks(runs, worlds, methods)
    best = {w: max(miou(runs[w][m]).mean() for m in methods) for w in worlds}
    rows = []
    for m in methods:
        cells = []
        for w in worlds:
            cell = format_mean_std(list(miou(runs[w][m])))
            cells.append(f"**{cell}**" if miou(runs[w][m]).mean() == best[w] else cell)
        wins = sum(miou(runs[w][m]).mean() == best[w] for w in worlds)
        mean = np.mean([miou(runs[w][m]).mean() for w in worlds])
        rows.append([m, *cells, f"{mean:.1f}", f"{rank[m]:.1f}", str(wins)])
    return _table(["method", *worlds, "mean", "mean rank", "wins"], rows)


def class_table(runs: Runs, worlds: list[str], methods: list[str], classes: list[str]) -> str:
    """Seed-mean IoU over ``classes`` per world and its mean over worlds."""
    rows = []
    for m in methods:
        vals = [class_miou(runs[w][m], classes) for w in worlds]
        rows.append([m, *(f"{v:.1f}" for v in vals), f"{np.mean(vals):.1f}"])
    return _table(["method", *worlds, "mean"], rows)


def limit_table(runs: Runs, worlds: list[str], methods: list[str]) -> str:
    """The distance to the limit: the oracle's mIoU, each method's share of the source-only -> oracle
    gap per world and on average, its seed spread, and the classes its runs lost (count and which)."""
    head = ["method", *worlds, "mean gap closed", "seed spread", "collapsed (runs)", "classes lost"]
    rows = []
    if all("oracle" in runs[w] for w in worlds):
        oracle = [format_mean_std(list(miou(runs[w]["oracle"]))) for w in worlds]
        rows.append(["*oracle mIoU*", *oracle, "", "", "", ""])
    for m in methods:
        gaps = [gap_closed(runs, w, m) for w in worlds]
        shown = [f"{100 * g:.0f} %" if g is not None else "-" for g in gaps]
        known = [g for g in gaps if g is not None]
        spread = np.mean([mean_std(list(miou(runs[w][m])))[1] for w in worlds])
        lost = collapses(runs, worlds, m)
        names = sorted({c for run in lost for c in run})
        total = f"{sum(len(x) for x in lost)} in {sum(bool(x) for x in lost)}/{len(lost)}" if lost else "-"
        mean_gap = f"{100 * np.mean(known):.0f} %" if known else "-"
        rows.append([m, *shown, mean_gap, f"± {spread:.1f}", total, ", ".join(names) or "none"])
    return _table(head, rows)


def share_table(runs: dict[str, list[dict]], protocol: ClassProtocol) -> str:
    """The winner-takes-all view, label-free: minority classes' share of the target-train predictions
    of the starting model (the source model; for a two-stage method, its first stage's model) and of the
    adapted model, and the classes flagged as collapsed (per seed)."""
    minority = [protocol.names[i] for i in protocol.minority]
    lines = [
        "| method | minority share at start (%) | after (%) | collapsed classes (per seed) |",
        "|---|---:|---:|---|",
    ]
    for m, rs in runs.items():
        if not rs[0].get("final_shares"):
            continue
        before = [100 * sum(r["round_stats"][0]["pred_share"][n] for n in minority) for r in rs]
        after = [100 * sum(r["final_shares"]["pred_share"][n] for n in minority) for r in rs]
        flagged = "; ".join(", ".join(r["final_shares"]["collapsed"]) or "none" for r in rs)
        lines.append(f"| {m} | {format_mean_std(before)} | {format_mean_std(after)} | {flagged} |")
    return "\n".join(lines)


def suite_report(runs: Runs, methods: list[str], protocol: ClassProtocol = TOYCITY) -> str:
    """The suite's Markdown summary: scores, minority and majority mIoU, and the distance to the limit."""
    worlds = complete_worlds(runs, methods)
    if not worlds:
        return "no world where every method finished\n"
    methods = [m for m in methods if m != "oracle"]  # the limit, not a competitor: its own row below
    seeds = sorted({len(runs[w][m]) for w in worlds for m in methods})
    minority = [protocol.names[i] for i in protocol.minority]
    majority = [n for n in protocol.names if n not in minority]
    parts = [
        f"Target-val mIoU, {'/'.join(map(str, seeds))} training seed(s) per cell (mean ± std over seeds; "
        "rank 1 = best per world; bold = best):",
        score_table(runs, worlds, methods),
        f"Minority mIoU ({', '.join(minority)}):",
        class_table(runs, worlds, methods, minority),
        f"Majority mIoU ({', '.join(majority)}):",
        class_table(runs, worlds, methods, majority),
    ]
    for w in worlds:
        parts += [f"### Winner-takes-all view: {w}", share_table({m: runs[w][m] for m in methods}, protocol)]
    if any("source_only" in runs[w] for w in worlds):
        parts += [
            "Distance to the limit: the share of the source-only -> oracle gap closed (seed means), the mean "
            f"over worlds of the standard deviation over seeds, and the classes lost (source-only IoU >= "
            f"{COLLAPSE_MIN_IOU:g} and below half of it after adaptation, per run):",
            limit_table(runs, worlds, methods),
        ]
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------- diagnostics
def _class_means(runs: Runs, worlds: list[str], method: str, key: str) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for w in worlds:
        for r in runs[w][method]:
            src = r["final"]["per_class"] if key == "iou" else r["round_stats"][-1].get(key) or {}
            for c, v in src.items():
                if v is not None:  # None: nothing selected for the class, no accuracy to average
                    acc.setdefault(c, []).append(v if key == "iou" else 100 * v)
    return {c: float(np.mean(v)) for c, v in acc.items()}


def diagnostics_table(runs: Runs, worlds: list[str], a: str, b: str) -> str:
    """Per class, last round, means over worlds and seeds: true and selected share, recall and accuracy
    of the pseudo-labels, complementary labels' error, final IoU; ``a`` / ``b`` side by side."""
    cols = [
        ("true_share", "true share"),
        ("pl_share", "selected share"),
        ("pl_recall_per_class", "recall"),
        ("pl_accuracy_per_class", "accuracy"),
        ("nl_error_per_class", "NL error"),
        ("iou", "final IoU"),
    ]
    data = {(k, m): _class_means(runs, worlds, m, k) for k, _ in cols for m in (a, b)}
    rows = []
    for c in data[("iou", a)]:
        cells = []
        for k, _ in cols:
            x, y = data[(k, a)].get(c, float("nan")), data[(k, b)].get(c, float("nan"))
            cells.append(f"{x:.2f} / {y:.2f}" if k != "iou" else f"{x:.1f} / {y:.1f}")
        rows.append([c, *cells])
    return _table(["class", *(f"{t} {a} / {b}" for _, t in cols)], rows)


def round_summary(runs: Runs, worlds: list[str], method: str) -> str:
    """Per round: selected share, pseudo-label accuracy and recall, complementary labels' error (means)."""
    keys = {
        "selected_fraction": "selected",
        "pl_accuracy": "accuracy",
        "pl_recall": "recall",
        "nl_error": "NL error",
    }
    n = min(len(r["round_stats"]) for w in worlds for r in runs[w][method])
    cells = []
    for i in range(n):
        stats = [r["round_stats"][i] for w in worlds for r in runs[w][method]]
        vals = [
            f"{name} {np.mean([100 * st[k] for st in stats]):.{2 if k == 'nl_error' else 1}f} %"
            for k, name in keys.items()
            if all(st.get(k) is not None for st in stats)  # methods without negative labels have no NL error
        ]
        cells.append(f"round {i + 1}: " + ", ".join(vals))
    return "; ".join(cells)


def explain(runs: Runs, worlds: list[str], a: str, b: str) -> str:
    """Why ``a`` and ``b`` differ: mIoU after each round, then the last round's diagnostics.

    Both must be self-training methods (runs with pseudo-label rounds) finished in every world; anything
    else is a ValueError that names the method (source-only, AdaBN, TENT and the oracle have no rounds)."""
    for m in (a, b):
        missing = [w for w in worlds if not runs[w].get(m)]
        if missing:
            raise ValueError(
                f"{m!r} has no finished runs in {', '.join(missing)}; name a method these runs hold"
            )
        if not all(r.get("round_stats") for w in worlds for r in runs[w][m]):
            raise ValueError(
                f"{m!r} has no pseudo-label rounds to explain; name two self-training methods "
                "(e.g. ld ld_balanced)"
            )
    out = ["Target-val mIoU after each round (mean over worlds and seeds; round 0 = the start):", ""]
    for m in (a, b):
        curves = np.array([r["val_miou_per_round"] for w in worlds for r in runs[w][m]])
        out.append(f"- `{m}`: " + " -> ".join(f"{v:.1f}" for v in curves.mean(0)))
    out += [
        "",
        f"Pseudo-labels, last round, `{a}` / `{b}` (%):",
        "",
        diagnostics_table(runs, worlds, a, b),
        "",
    ]
    out += [f"- `{m}`: {round_summary(runs, worlds, m)}" for m in (a, b)]
    return "\n".join(out) + "\n"


def delta(runs: Runs, worlds: list[str], a: str, b: str) -> tuple[list[float], int, int]:
    """``a - b`` per world (seed means), and how many (world, seed) pairs agree with the mean's sign."""
    per_world = [float(miou(runs[w][a]).mean() - miou(runs[w][b]).mean()) for w in worlds]
    pairs = np.concatenate([miou(runs[w][a]) - miou(runs[w][b]) for w in worlds])
    sign = np.sign(np.mean(per_world))
    return per_world, int((np.sign(pairs) == sign).sum()), len(pairs)


def gains_table(
    roots: dict[str, Runs],
    worlds: list[str],
    methods: list[str],
    baseline: str,
    metric: Callable[[list[dict]], float],
) -> str:
    """Each method's gain over ``baseline`` per world and backbone (one ``Runs`` per backbone)."""
    rows = []
    for name, r in roots.items():
        base = [metric(r[w][baseline]) for w in worlds]
        rows.append([f"*{baseline}*", name, *(f"{b:.1f}" for b in base), f"{np.mean(base):.1f}", ""])
    for m in methods:
        for name, r in roots.items():
            gain = [metric(r[w][m]) - metric(r[w][baseline]) for w in worlds]
            helped = f"{sum(g > 0 for g in gain)}/{len(worlds)}"
            rows.append([m, name, *(f"{g:+.1f}" for g in gain), f"{np.mean(gain):+.1f}", helped])
    return _table(["method", "backbone", *worlds, "mean", "worlds helped"], rows)
