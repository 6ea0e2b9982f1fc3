"""The pseudo-labelling pass against a plain forward pass over the same images (ToyCity, CPU).

A class-balanced labelling round (one network forward per image, cached outputs, thresholds, selection,
diagnostics, PNG writing) is compared with the forward passes alone over the same batches, interleaved.
(The former two-pass labelling, which ran the network again for the selection pass, measured 2.08x a
forward pass where this one measured 1.06x: docs/BENCHMARKS.md; it is no longer in the code.)

    python benchmarks/pl_pass.py               # the ToyCity target train split (300 images), batch 16
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from common import interleaved, machine, median

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.adapt.pseudo_labels import build_pseudo_labeller
from sfseg.data.classes import TOYCITY
from sfseg.data.toycity import ToyCitySpec, generate, is_generated
from sfseg.data.toycity.dataset import toycity
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.engine.training.labelling import label_round
from sfseg.models import create_model
from sfseg.models.checkpoint import Normalization


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/bench_data/toycity")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if not is_generated(args.data, ToyCitySpec()):
        generate(args.data, ToyCitySpec(), progress=False)
    data = toycity(args.data, "train", TOYCITY, labels="auto")
    torch.manual_seed(0)
    model = create_model("deeplab_small", TOYCITY.num_classes, width=16, output_stride=2)
    model.train()  # the reference labels with BN in train mode
    inf = Inference(model, Normalization())
    labeller = build_pseudo_labeller(PseudoLabelConfig(), TOYCITY.num_classes, 0.1)
    tmp = Path(tempfile.mkdtemp())

    @torch.no_grad()
    def forward():
        for batch in sharded_loader(inf.view(data), args.batch_size):
            inf.raw(batch["image"])

    def pl():
        label_round(inf, data, labeller, tmp / "pl", TOYCITY, args.batch_size)

    times = interleaved({"forward": forward, "pl_one_forward": pl}, args.repeats)
    shutil.rmtree(tmp)
    f = median(times["forward"])
    report = {
        "machine": machine(),
        "images": len(data),
        "forward_s": round(f, 2),
        "pl_one_forward_s": round(median(times["pl_one_forward"]), 2),
        "pl_over_forward": round(median(times["pl_one_forward"]) / f, 3),
        "pl_over_forward_each_repeat": [
            round(a / b, 3) for a, b in zip(times["pl_one_forward"], times["forward"])
        ],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
