"""How many pseudo-labels bfloat16 inference changes, with a trained model (ToyCity, CPU).

Labels the ToyCity target train split twice with the shipped demo source model (BatchNorm in train mode,
as LD labels), in float32 and with ``runtime.amp_inference`` (bfloat16 autocast), and counts the pixels
whose pseudo-label differs, and the change of each class's threshold.

    python benchmarks/bf16_labels.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from common import machine
from PIL import Image

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.adapt.pseudo_labels import build_pseudo_labeller
from sfseg.data.classes import TOYCITY
from sfseg.data.toycity import ToyCitySpec, generate, is_generated
from sfseg.data.toycity.dataset import toycity
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.experiments.demo import SHIPPED_SOURCE
from sfseg.engine.training.labelling import label_round
from sfseg.models import load_checkpoint


def main() -> None:
    root = Path("runs/bench_data/toycity-small_objects-w0")
    spec = ToyCitySpec(variant="small_objects", seed=0)
    if not is_generated(root, spec):
        generate(root, spec, progress=False)
    data = toycity(root, "train", TOYCITY, labels=False)
    ckpt = load_checkpoint(SHIPPED_SOURCE)
    out, stats = {}, {}
    for amp in (False, True):
        model = ckpt.build()
        model.train()
        inf = Inference(model, ckpt.normalization, amp=amp)
        lab = build_pseudo_labeller(PseudoLabelConfig(), TOYCITY.num_classes, 0.1)
        tmp = Path(tempfile.mkdtemp())
        paths, stats[amp] = label_round(inf, data, lab, tmp / "pl", TOYCITY, 16)
        out[amp] = np.stack([np.asarray(Image.open(p)) for p in paths])
    thr = [
        abs(stats[True]["thresholds"][n] - stats[False]["thresholds"][n])
        for n in TOYCITY.names
        if stats[False]["thresholds"][n] is not None and stats[True]["thresholds"][n] is not None
    ]
    report = {
        "machine": machine(),
        "model": "shipped demo source model (trained), small_objects world 0 target train (300 images)",
        "pixels_differing_pct": round(100 * float((out[False] != out[True]).mean()), 3),
        "selected_fraction": [round(stats[a]["selected_fraction"], 4) for a in (False, True)],
        "max_threshold_change": float(max(thr)),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
