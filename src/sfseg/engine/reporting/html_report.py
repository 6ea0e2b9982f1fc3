"""``sfseg report RUN_DIR...``: one self-contained HTML page comparing runs.

Everything is embedded (figures as base64 PNG, styles inline): the page can be mailed or archived and opens
without a network. It shows, per run, the final target-val scores and the round that a validator
selected (where the recipe asked for one); the per-class IoU table and bars; target-val mIoU after each
round; each class's share of the pseudo-labels (or predictions) per round; and the prediction grids the
run drew (image, pseudo-label, prediction, ground truth).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np

from sfseg.data.classes import PROTOCOLS, ClassProtocol, protocol_of
from sfseg.data.registry import dataset_protocol
from sfseg.engine.reporting.report import has_diagnostics, per_class_table, pl_diagnostics_figure
from sfseg.engine.reporting.studies import collapsed_classes, gap_share
from sfseg.engine.runtime.rundir import RunDir
from sfseg.engine.runtime.runlog import read_records
from sfseg.errors import RunDirError, SfsegError
from sfseg.fileio import Place, atomic_write_text, check_outputs

MAX_FIGURE_BYTES = 64 * 2**20

STYLE = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; margin-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
.note { color: #666; font-size: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 16px; }
.grid figure { margin: 0; } figcaption { font-size: 13px; font-weight: 600; color: #333; margin: 4px 0; }
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img_tag(b64: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _file_b64(path: Path, run: Path) -> str:
    """A figure of a run, embedded: a regular file that lives inside the run directory (no link followed,
    none larger than a figure can be), never whatever a planted link points to."""
    return base64.b64encode(RunDir(run).read_bytes(path, MAX_FIGURE_BYTES, "figure")).decode()


def markdown_table_to_html(md: str) -> str:
    """Our markdown tables (``| a | b |`` rows, a ``|---|`` rule) as an HTML table."""
    rows = [ln.strip() for ln in md.strip().splitlines() if ln.strip().startswith("|")]
    out = ["<table>"]
    for i, row in enumerate(rows):
        if set(row) <= set("|-: "):
            continue
        cells = [c.strip() for c in row.strip("|").split("|")]
        tag = "th" if i == 0 else "td"
        rendered = []
        for c in cells:
            text = html.escape(c)
            if text.startswith("**") and text.endswith("**") and len(text) > 4:
                text = f"<b>{text[2:-2]}</b>"
            rendered.append(f"<{tag}>{text}</{tag}>")
        out.append("<tr>" + "".join(rendered) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def read_run_records(run: Path) -> list[dict]:
    """The records of a run's ``metrics.jsonl``; a folder that is not a run, or a damaged file, is one
    error naming it."""
    rd = RunDir(run)
    if not os.path.lexists(rd.metrics):
        raise RunDirError(
            f"{run} is not an sfseg run directory (no {rd.METRICS}); give the directory of a run"
        )
    return read_records(rd.metrics, rd.path)


def load_run(run: Path) -> dict:
    """What the report needs from a run directory (read without following links inside it)."""
    rd = RunDir(run)
    records = read_run_records(run)
    start = next((r for r in records if r["phase"] == "start"), {})
    cfg = start.get("config", {})
    summary = rd.read_json(rd.summary) if os.path.lexists(rd.summary) else None
    evals = [r for r in records if r["phase"] in ("source_model", "adabn", "round")]
    pls = [r for r in records if r["phase"] == "pseudo_labels"]
    return {
        "dir": run,
        "name": cfg.get("name", run.name),
        "protocol": cfg.get("data", {}).get("protocol", ""),
        "classes": start.get("classes"),
        "dataset": cfg.get("data", {}).get("dataset", ""),
        "summary": summary,
        "evals": evals,
        "pseudo_labels": pls,
        "selected": next((r for r in records if r["phase"] == "selected"), None),
        "figures": [p for _, p in RunDir(run).prediction_grids()],
    }


def _protocol(run: dict) -> ClassProtocol:
    if run["classes"]:  # the classes the run adapted to, as it recorded them
        return protocol_of(run["classes"])
    if run["protocol"] in PROTOCOLS:
        return PROTOCOLS[run["protocol"]]
    return dataset_protocol(run["dataset"] or "toycity")


def _labels(runs: list[dict]) -> list[str]:
    """Unique, readable column names: the method name, with the directory when names repeat."""
    names = [r["name"] for r in runs]
    return [n if names.count(n) == 1 else f"{n} ({r['dir'].name})" for n, r in zip(names, runs)]


def write_report(
    run_dirs: list[Path], out: Path, title: str = "sfseg runs", limit: tuple[Path, Path] | None = None
) -> Path:
    """Write one self-contained HTML page comparing ``run_dirs``; every run is read (and checked) before
    anything is written, and the page may not overwrite any of the runs' files. ``limit``: the
    source-only run and the oracle run of the same world and seed, for the distance to the limit."""
    import matplotlib

    matplotlib.use("Agg")
    check_outputs(
        [Place("--out", Path(out))],
        [Place(f"run {r}", p) for r in [*run_dirs, *(limit or ())] for p in RunDir(r).input_files()],
    )
    runs = [load_run(r) for r in run_dirs]
    bounds = [_final_scores(Path(r)) for r in limit] if limit else None
    labels = _labels(runs)
    protocol = _protocol(runs[0])
    listing = ", ".join(html.escape(str(r["dir"])) for r in runs)
    parts = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{len(runs)} run(s): {listing}. Scores are on the target val split after each '
        "run's last round; a validator's choice, where a recipe asked for one, is listed beside it (chosen "
        "without target labels).</p>",
    ]
    finals = {lab: r["evals"][-1] for lab, r in zip(labels, runs) if r["evals"]}
    parts += _summary_section(labels, runs)
    parts += _limit_section(labels, runs, bounds) if bounds else []
    parts += _per_class_section(finals, protocol)
    parts += _miou_section(labels, runs)
    parts += _shares_section(labels, runs, protocol)
    parts += _diagnostics_section(labels, runs, protocol)
    parts += _grids_section(labels, runs)
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>'
        f"{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )
    atomic_write_text(out, page)
    return out


def _final_scores(run: Path) -> dict:
    """A finished run's target-val scores (``final`` of its summary): a source-only or an oracle run."""
    rd = RunDir(run)
    final = rd.read_json(rd.summary).get("final") if os.path.lexists(rd.summary) else None
    if not final:
        raise SfsegError(f"--limit {run}: no target-val scores in {rd.summary} (a finished run evaluated on "
                         "the target val split is needed)")  # fmt: skip
    return final


def _limit_section(labels: list[str], runs: list[dict], bounds: list[dict]) -> list[str]:
    """The share of the source-only -> oracle gap each run closes, and the classes it lost (source-only
    IoU >= 5 and below half of it after adaptation)."""
    source, oracle = bounds
    s, o = source["miou"], oracle["miou"]
    rows = ["| run | mIoU | gap closed | classes lost |", "|---|---:|---:|---|"]
    rows.append(f"| source-only | {s:.1f} | 0 % | |")
    rows.append(f"| oracle | {o:.1f} | 100 % | |")
    for lab, r in zip(labels, runs):
        final = r["evals"][-1] if r["evals"] else None
        if not final or "per_class" not in final:
            continue
        share = gap_share(final["miou"], s, o)
        gap = f"{100 * share:.0f} %" if share is not None else "-"
        lost = collapsed_classes({"final": final}, {"final": source})
        rows.append(f"| {lab} | {final['miou']:.1f} | {gap} | {', '.join(lost) or 'none'} |")
    return ["<h2>Distance to the limit</h2>", markdown_table_to_html("\n".join(rows))]


def _number(v) -> str:
    return f"{v:.1f}" if isinstance(v, int | float) else "-"


def _summary_section(labels: list[str], runs: list[dict]) -> list[str]:
    rows = [
        "| run | final mIoU | majority | minority | rounds | selected round (validator) | seconds |",
        "|---|---:|---:|---:|---:|---|---:|",
    ]
    for lab, r in zip(labels, runs):
        final = r["evals"][-1] if r["evals"] else {}
        sel = r["selected"]
        sel_text = f"{sel['round']} ({sel['validator']})" if sel else "-"
        secs = r["summary"]["seconds"] if r["summary"] else "-"
        rounds = sum(1 for e in r["evals"] if e["phase"] == "round")
        scores = " | ".join(_number(final.get(k)) for k in ("miou", "majority_miou", "minority_miou"))
        rows.append(f"| {lab} | {scores} | {rounds} | {sel_text} | {secs} |")
    return ["<h2>Summary</h2>", markdown_table_to_html("\n".join(rows))]


def _per_class_section(finals: dict[str, dict], protocol: ClassProtocol) -> list[str]:
    if not finals:
        return []
    import matplotlib.pyplot as plt

    classes = list(next(iter(finals.values()))["per_class"])
    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(classes)), 3.8))
    x, width = np.arange(len(classes)), 0.85 / len(finals)
    for i, (lab, res) in enumerate(finals.items()):
        vals = [np.nan if res["per_class"][c] is None else res["per_class"][c] for c in classes]
        ax.bar(x + (i - (len(finals) - 1) / 2) * width, vals, width, label=lab)
    ax.set_xticks(x, classes, rotation=35, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=min(4, len(finals)))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    table = markdown_table_to_html(per_class_table(finals, protocol))
    return ["<h2>Per-class IoU</h2>", table, _img_tag(_png(fig), "per-class IoU")]


def _miou_section(labels: list[str], runs: list[dict]) -> list[str]:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for lab, r in zip(labels, runs):
        ys = [e["miou"] for e in r["evals"]]
        ax.plot(range(len(ys)), ys, marker="o", label=lab)
    ax.set_xlabel("step (0 = starting model; AdaBN adds one; then one per round)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("target-val mIoU (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return ["<h2>Target-val mIoU per round</h2>", _img_tag(_png(fig), "mIoU per round")]


def _shares_section(labels: list[str], runs: list[dict], protocol: ClassProtocol) -> list[str]:
    import matplotlib.pyplot as plt

    parts = [
        "<h2>Class shares per round</h2>",
        '<p class="note">Each class\'s share of the pseudo-labels (or of the predictions, for methods '
        "without pseudo-labels), per round; dashed lines are minority classes. A line falling to zero is a "
        'class being swallowed (winner-takes-all).</p><div class="grid">',
    ]
    legend_drawn = False
    for lab, r in zip(labels, runs):
        if not r["pseudo_labels"]:
            continue
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        for c, n in enumerate(protocol.names):
            ys = [100 * s.get("pl_share", s["pred_share"])[n] for s in r["pseudo_labels"]]
            style = "-" if c in protocol.majority else "--"
            ax.plot(
                range(len(ys)),
                ys,
                marker="o",
                color=np.array(protocol.colors[c]) / 255,
                linestyle=style,
                label=n,
            )
        ax.set_yscale("log")
        ax.set_xlabel("round")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("share (%)")
        ax.set_title(lab, fontsize=10)
        ax.grid(alpha=0.3, which="both")
        if not legend_drawn:  # one legend for the page: the colours are the same in every panel
            fig.set_size_inches(7.5, 3.4)
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
            legend_drawn = True
        fig.tight_layout()
        parts.append(f"<figure>{_img_tag(_png(fig), lab)}</figure>")
    return [*parts, "</div>"]


def _diagnostics_section(labels: list[str], runs: list[dict], protocol: ClassProtocol) -> list[str]:
    """Pseudo-label diagnostics, for the runs whose split had labels."""
    diagnosed = [(lab, r) for lab, r in zip(labels, runs) if has_diagnostics(r["pseudo_labels"])]
    if not diagnosed:
        return []
    parts = [
        "<h2>Pseudo-label quality</h2>",
        '<p class="note">Measured against the target train labels, which no method ever trains on: each '
        "class's share of the pseudo-labels against its true share (blue: the class is being swallowed; red: "
        "it swallows others), the pseudo-labels' accuracy and recall per class, and how often a "
        'complementary label ("not this class") is wrong. For seeing why a recipe wins or collapses; never '
        "used to choose anything.</p>",
    ]
    for lab, r in diagnosed:
        fig = pl_diagnostics_figure(r["pseudo_labels"], protocol, lab)
        parts.append(f"<figure>{_img_tag(_png(fig), f'{lab}: pseudo-label quality')}</figure>")
    return parts


def _grids_section(labels: list[str], runs: list[dict]) -> list[str]:
    parts = [
        "<h2>Predictions</h2>",
        '<p class="note">Per round, fixed target train images: image | pseudo-label | prediction | ground '
        "truth (where the split has labels; for looking only). Black: no pseudo-label.</p>",
    ]
    for lab, r in zip(labels, runs):
        if not r["figures"]:
            continue
        parts.append(f'<h3>{html.escape(lab)}</h3><div class="grid">')
        for f in r["figures"]:
            caption = html.escape(f.stem.replace("_", " "))
            image = _img_tag(_file_b64(f, r["dir"]), f.stem)
            parts.append(f"<figure><figcaption>{caption}</figcaption>{image}</figure>")
        parts.append("</div>")
    return parts
