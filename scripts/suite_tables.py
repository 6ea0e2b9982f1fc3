"""Tables of a ToyCity test over several ``sfseg bench`` outputs: target-val mIoU per world with the mean
rank over worlds (ties share their rank) and wins, minority and majority mIoU, the winner-takes-all view,
and the distance to the limit (share of the source-only -> oracle gap, classes lost). The tables are
:mod:`sfseg.engine.reporting.studies`'; this script only reads the command line::

    python scripts/suite_tables.py runs/test-w2 runs/test-w0 --methods source_only adabn ld ldbe

``--explain A B`` adds, for two self-training methods, the target-val mIoU after each round and the
pseudo-label diagnostics of the last round per class (means over the worlds and seeds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sfseg.engine.reporting.studies import complete_worlds, explain, load_runs, suite_report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("roots", nargs="+", type=Path, help="--out folders of sfseg bench toycity")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--explain", nargs=2, metavar=("A", "B"), help="two methods to explain by diagnostics")
    args = ap.parse_args(argv)
    runs = load_runs(*args.roots)
    print(suite_report(runs, args.methods))
    if args.explain:
        try:
            print(explain(runs, complete_worlds(runs, args.methods), *args.explain))
        except ValueError as e:
            ap.error(f"--explain: {e}")


if __name__ == "__main__":
    main()
