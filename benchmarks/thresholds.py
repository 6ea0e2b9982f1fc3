"""Intra-class thresholds: sfseg's streaming histogram vs the released code's every-5th-value lists.

The released ``gene_thres`` keeps, per image and class, every 5th sorted confidence in Python lists and
sorts them at the end: memory grows with the dataset. sfseg's histogram is ``C x 65536`` counters.
Both run on the same logits (random, with class structure: per-pixel winners drawn with uneven class
frequencies, so some classes are rare), interleaved; the forward pass is not part of either.

    python benchmarks/thresholds.py                  # 40 maps of 19 x 512 x 1024 (the issue's setting)
    python benchmarks/thresholds.py --maps 10 --height 256 --width 512
"""

from __future__ import annotations

import argparse
import json
import tracemalloc

import numpy as np
import torch
import torch.nn.functional as F
from common import interleaved, machine, median

from sfseg.adapt.pseudo_labels import ConfidenceHistogram, confidence_scores, score_to_confidence


def make_logits(n: int, c: int, h: int, w: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = []
    freq = torch.linspace(3, 0.2, c)  # uneven class frequencies
    for _ in range(n):
        logits = torch.randn(1, c, h // 8, w // 8, generator=g) * 2 + freq.view(1, c, 1, 1)
        maps.append(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False))
    return maps


def released(maps: list[torch.Tensor], c: int, alpha: float) -> dict[int, float]:
    """The released gene_thres on the same logits (its loop body as published)."""
    probs: dict[int, list[float]] = {}
    for logits in maps:
        pred = F.softmax(logits, dim=1)
        pred_probs = pred.max(dim=1)[0].squeeze()
        pred_label = torch.argmax(pred, dim=1).squeeze()
        for i in range(c):
            cls_mask = pred_label == i
            if cls_mask.sum() == 0:
                continue
            cls_probs = torch.masked_select(pred_probs, cls_mask).numpy().tolist()
            cls_probs.sort()
            probs.setdefault(i, []).extend(cls_probs[::5])
    thres = {}
    for k, v in probs.items():
        arr = np.sort(np.array(v))
        thres[k] = float(arr[-int(len(arr) * alpha)])
    return thres


def ours(maps: list[torch.Tensor], c: int, alpha: float) -> dict[int, float]:
    hist = ConfidenceHistogram(c)
    for logits in maps:
        hist.update(*confidence_scores(logits))
    thr = score_to_confidence(hist.thresholds(alpha).double())
    return {i: float(t) for i, t in enumerate(thr) if np.isfinite(t)}


def peak_python_mib(fn) -> float:
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--maps", type=int, default=40)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    maps = make_logits(args.maps, args.classes, args.height, args.width)
    c, a = args.classes, args.alpha
    times = interleaved(
        {"released": lambda: released(maps, c, a), "sfseg": lambda: ours(maps, c, a)}, args.repeats
    )
    ref, mine = released(maps, c, a), ours(maps, c, a)
    diff = max(abs(ref[k] - mine[k]) for k in ref)
    mem = {
        "released": peak_python_mib(lambda: released(maps, c, a)),
        "sfseg": peak_python_mib(lambda: ours(maps, c, a)),
    }
    report = {
        "machine": machine(),
        "setting": f"{args.maps} maps of {c}x{args.height}x{args.width}, alpha {a}",
        "released_s": round(median(times["released"]), 3),
        "sfseg_s": round(median(times["sfseg"]), 3),
        "speedup": round(median(times["released"]) / median(times["sfseg"]), 2),
        "max_threshold_difference": diff,
        "peak_python_heap_mib": {k: round(v, 1) for k, v in mem.items()},
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
