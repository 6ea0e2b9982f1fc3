"""Does a method help one backbone the way it helps another? Gains over a baseline (default: the source
model), world by world, for several ``sfseg bench toycity`` outputs, one per backbone, in mIoU and in
minority mIoU (:func:`sfseg.engine.reporting.studies.gains_table`)::

    python scripts/compare_backbones.py --root cnn=runs/test --root mit=runs/mit \\
        --methods adabn naive_st tent ld ldbe
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sfseg.engine.reporting.studies import complete_worlds, gains_table, load_runs, minority_miou, miou


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", action="append", required=True, help="NAME=DIR, one per backbone")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--baseline", default="source_only")
    args = ap.parse_args(argv)
    roots = {name: load_runs(Path(d)) for name, d in (r.split("=", 1) for r in args.root)}
    needed = [args.baseline, *args.methods]
    worlds = sorted(set.intersection(*(set(complete_worlds(r, needed)) for r in roots.values())))
    if not worlds:
        raise SystemExit("no world where every root finished every method")
    for title, metric in (("mIoU", lambda rs: float(miou(rs).mean())), ("Minority mIoU", minority_miou)):
        print(f"{title} gain over {args.baseline} (points; positive = the method helps):\n")
        print(gains_table(roots, worlds, args.methods, args.baseline, metric), "\n")


if __name__ == "__main__":
    main()
