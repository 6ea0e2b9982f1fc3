"""Readable results: per-class tables (markdown, also fine in a terminal) and figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sfseg.data.classes import ClassProtocol
from sfseg.engine.reporting.studies import format_mean_std

ROWS_HEAD = (("mIoU", "miou"), ("majority mIoU", "majority_miou"), ("minority mIoU", "minority_miou"))


def per_class_table(results: dict[str, dict | list[dict]], protocol: ClassProtocol | None = None) -> str:
    """A markdown table: one column per method, rows mIoU / majority / minority then each class.

    Args:
        results: method -> one evaluation summary, or a list of them (one per seed: "mean ± std", sample std).
    """
    runs = {m: (r if isinstance(r, list) else [r]) for m, r in results.items()}
    first = next(iter(runs.values()))[0]
    classes = list(first["per_class"])
    majority = set(protocol.names[i] for i in protocol.majority) if protocol else set()
    header = "| | " + " | ".join(runs) + " |"
    lines = [header, "|---|" + "---:|" * len(runs)]
    subsets = (
        tuple((f"mIoU, {len(members)} classes", name) for name, members in protocol.subsets)
        if protocol
        else ()
    )
    for title, key in ROWS_HEAD + subsets:
        if key in first:
            lines.append(
                f"| **{title}** | "
                + " | ".join(format_mean_std([r[key] for r in rs]) for rs in runs.values())
                + " |"
            )
    for c in classes:
        tag = " (maj.)" if c in majority else ""
        lines.append(
            f"| {c}{tag} | "
            + " | ".join(format_mean_std([r["per_class"][c] for r in rs]) for rs in runs.values())
            + " |"
        )
    return "\n".join(lines)


def plot_per_class(results: dict[str, dict | list[dict]], path: str | Path, title: str = "") -> Path:
    """Grouped bars: per-class IoU (mean over seeds, std as error bars) for each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {m: (r if isinstance(r, list) else [r]) for m, r in results.items()}
    classes = list(next(iter(runs.values()))[0]["per_class"])
    x = np.arange(len(classes) + 1)
    width = 0.85 / len(runs)
    fig, ax = plt.subplots(figsize=(max(10, 0.9 * len(classes)), 4.5))
    for i, (m, rs) in enumerate(runs.items()):
        vals = np.array(
            [
                [np.nan if r["per_class"][c] is None else r["per_class"][c] for c in classes] + [r["miou"]]
                for r in rs
            ],
            dtype=float,
        )
        mean = np.nanmean(vals, 0)
        err = np.nanstd(vals, 0, ddof=1) if len(rs) > 1 else None
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, mean, width, yerr=err, label=m, capsize=1.5)
    ax.set_xticks(x, classes + ["mIoU"], rotation=35, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title or "per-class IoU on the target val split")
    ax.legend(ncol=min(4, len(runs)), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_pl_share(
    round_stats: list[dict], path: str | Path, protocol: ClassProtocol, title: str = ""
) -> Path:
    """Each class's share of the pseudo-labels per round, next to its share of the source model's predictions.

    A minority class whose line falls toward zero is being swallowed (winner-takes-all).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = protocol.names
    rounds = np.arange(len(round_stats))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for c, n in enumerate(names):
        share = [100 * s.get("pl_share", s["pred_share"])[n] for s in round_stats]
        colour = np.array(protocol.colors[c]) / 255
        ax.plot(
            rounds,
            share,
            marker="o",
            color=colour,
            label=n,
            linestyle="-" if c in protocol.majority else "--",
        )
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_xticks(rounds)
    kind = "pseudo-labels" if "pl_share" in round_stats[0] else "predictions"
    ax.set_ylabel(f"share of {kind} (%)")
    ax.set_title(title or "class shares of the pseudo-labels per round (dashed: minority)")
    ax.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


DIAGNOSTIC_PANELS = (
    ("share", "pseudo-label share / true share", "log2 ratio (blue: too few, red: too many)"),
    ("pl_accuracy_per_class", "pseudo-label accuracy", "share of the selected pixels that are right"),
    ("pl_recall_per_class", "pseudo-label recall", "share of the class's pixels selected, right"),
    ("nl_error_per_class", "complementary-label error", 'how often "not this class" is wrong'),
)


def has_diagnostics(round_stats: list[dict]) -> bool:
    """Whether the rounds carry the label-based pseudo-label diagnostics (the split had labels)."""
    return bool(round_stats) and all(s and "true_share" in s for s in round_stats)


def pl_diagnostics_figure(round_stats: list[dict], protocol: ClassProtocol, title: str = ""):
    """Pseudo-label quality per class and round, as heatmaps read at a glance (a matplotlib figure).

    Panels (rows: classes, columns: rounds): the pseudo-labels' share of each class against its true
    share (log2 ratio: a class being swallowed turns deep blue), their accuracy, their recall, and, where
    the method has negative learning, how often a complementary label is wrong. Built from the round
    statistics of ``sfseg.engine.training.labelling.label_round``, which exist only where the split has
    labels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(protocol.names)
    panels = [p for p in DIAGNOSTIC_PANELS if p[0] == "share" or p[0] in round_stats[0]]
    rounds = len(round_stats)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.6 + len(panels) * (1.2 + 0.55 * rounds), 0.95 + 0.3 * len(names)),
        squeeze=False,
    )  # fmt: skip
    for ax, (key, heading, note) in zip(axes[0], panels):
        grid = np.full((len(names), rounds), np.nan)
        for r, st in enumerate(round_stats):
            for c, n in enumerate(names):
                if key == "share":
                    true, sel = st["true_share"][n], st.get("pl_share", st["pred_share"])[n]
                    if true > 0:
                        grid[c, r] = np.log2(sel / true) if sel > 0 else -np.inf
                else:
                    v = st[key][n]
                    grid[c, r] = np.nan if v is None else v
        if key == "share":
            image = ax.imshow(np.nan_to_num(grid, neginf=-3), cmap="RdBu_r", vmin=-3, vmax=3, aspect="auto")
            text = [
                [f"{2**v:.2g}x" if np.isfinite(v) else ("none" if v < 0 else "") for v in row] for row in grid
            ]
        else:
            vmax = 1.0 if key != "nl_error_per_class" else max(0.05, float(np.nanmax(grid, initial=0.0)))
            image = ax.imshow(grid, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
            text = [[f"{v:.2f}" if np.isfinite(v) else "" for v in row] for row in grid]
        box = {"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.6}
        for c in range(len(names)):
            for r in range(rounds):
                ax.text(r, c, text[c][r], ha="center", va="center", fontsize=6.5, bbox=box)
        ax.set_xticks(range(rounds), [str(r) for r in range(rounds)])
        ax.set_xlabel("round")
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names), fontsize=8)
        ax.set_title(f"{heading}\n({note})", fontsize=8)
        fig.colorbar(image, ax=ax, fraction=0.08, pad=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def figure_rgb(fig) -> np.ndarray:
    """A matplotlib figure as (H, W, 3) uint8 (for TensorBoard), closed afterwards."""
    import matplotlib.pyplot as plt

    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def trajectory_table(runs: dict[str, list[dict]]) -> str:
    """Target-val mIoU after each phase (source model, AdaBN, each round), mean over seeds.

    Monitoring only: the reported model is always the last round's.
    """
    runs = {m: rs for m, rs in runs.items() if all("val_miou_per_round" in r for r in rs)}  # no oracle
    width = max((len(r["val_miou_per_round"]) for rs in runs.values() for r in rs), default=0)
    lines = ["| method | " + " | ".join(f"step {i}" for i in range(width)) + " |", "|---|" + "---:|" * width]
    for m, rs in runs.items():
        cells = []
        for i in range(width):
            vals = [r["val_miou_per_round"][i] for r in rs if i < len(r["val_miou_per_round"])]
            cells.append(f"{np.mean(vals):.1f}" if vals else "")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save(fig, path: str | Path) -> Path:
    """Lay out, write (folders made as needed) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
