"""Evaluation speed: sfseg's file evaluation vs the official cityscapesscripts, on the same files.

A fake Cityscapes val split of 2048x1024 label PNGs (blocky labelIds, compressible like real ones) and
predictions that agree with them on most pixels; both evaluators score the same prediction PNGs, the
official one with its pure-Python fallback (the PyPI wheel ships no C extension here), ours with
``sfseg eval --predictions`` on one thread and on one thread per core. The per-class IoUs must be
identical.

    python benchmarks/eval_vs_official.py            # 20 pairs, as in the issue
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from common import machine
from PIL import Image

from sfseg.data.classes import CITYSCAPES19
from sfseg.data.fake_trees import write_cityscapes
from sfseg.data.registry import build_dataset
from sfseg.engine.evaluation.evaluate import evaluate_files
from sfseg.engine.evaluation.predict import output_name


def official(preds: list[Path], gts: list[Path]) -> dict:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as ev
    from cityscapesscripts.helpers.labels import labels

    args = ev.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    args.evalLabels = [lab.id for lab in labels if lab.id >= 0]
    return ev.evaluateImgLists([str(p) for p in preds], [str(g) for g in gts], args)["classScores"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=20)
    p.add_argument("--out", default="runs/bench_eval")
    args = p.parse_args()
    root = Path(args.out)
    write_cityscapes(root / "cs", splits=("val",), per_split=args.pairs, size=(2048, 1024))
    ds = build_dataset("cityscapes", root / "cs", "val")
    rng = np.random.default_rng(1)
    ids = np.asarray(CITYSCAPES19.label_ids(), dtype=np.uint8)
    preds = []
    for name in ds.names:
        gt_path = root / "cs" / "gtFine" / "val" / name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        gt = np.asarray(Image.open(gt_path))
        pred = np.where(np.isin(gt, ids), gt, ids[0]).astype(np.uint8)
        # Wrong in blobs, as a segmentation model is: 32x32 blocks with another class, ~10 % of pixels.
        wrong = np.kron(rng.random((32, 64)) < 0.1, np.ones((32, 32), dtype=bool))
        pred[wrong] = rng.choice(ids, 32 * 64)[
            np.cumsum(wrong.ravel()).reshape(wrong.shape)[wrong] % (32 * 64)
        ]
        path = root / "pred" / output_name(name, "cityscapes")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pred, mode="L").save(path)
        preds.append(path)
    gts = [
        root / "cs" / "gtFine" / "val" / n.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        for n in ds.names
    ]
    t0 = time.perf_counter()
    ref = official(preds, gts)
    t_official = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours1 = evaluate_files(ds, root / "pred", CITYSCAPES19, "cityscapes", workers=1)
    t_ours1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = evaluate_files(ds, root / "pred", CITYSCAPES19, "cityscapes")
    t_ours = time.perf_counter() - t0
    assert ours1["per_class"] == ours["per_class"]
    diff = max(abs(ours["per_class"][n] / 100 - ref[n]) for n in CITYSCAPES19.names if not math.isnan(ref[n]))
    report = {
        "machine": machine(),
        "pairs": args.pairs,
        "official_s": round(t_official, 2),
        "sfseg_one_thread_s": round(t_ours1, 2),
        "speedup_one_thread": round(t_official / t_ours1, 2),
        "sfseg_s": round(t_ours, 2),
        "speedup": round(t_official / t_ours, 2),
        "max_iou_difference": diff,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
