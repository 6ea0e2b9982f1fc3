"""One LD training step against a plain cross-entropy step (ToyCity's network and batch, CPU).

Both steps: forward, loss, backward, SGD step, on the same batch (8 x 3 x 96 x 192, 12 classes, about
30 % of pixels without a pseudo-label). LD's loss is positive CE + negative learning (a medium-rank
complementary class per pixel, ``topk``) + entropy on the unselected pixels; the plain step is CE on the
same labels. Interleaved repetitions, after warm-up.

    python benchmarks/ld_step.py
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from common import interleaved, machine, median

from sfseg import IGNORE_INDEX
from sfseg.adapt.config import MethodConfig
from sfseg.adapt.parts import StepInputs, build_loss_parts, total_loss
from sfseg.engine.training.optim import OptimConfig, build_optimizer
from sfseg.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="steps per timed repetition")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model("deeplab_small", 12, width=16, output_stride=2)
    model.train()
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    x = torch.randn(args.batch, 3, 96, 192)
    labels = torch.randint(0, 12, (args.batch, 96, 192))
    labels[torch.rand(labels.shape) < 0.3] = IGNORE_INDEX
    parts = build_loss_parts(MethodConfig(losses=["positive", "negative", "entropy_unselected"]), 12)
    gen = torch.Generator().manual_seed(0)

    def step(loss_fn):
        def run():
            for _ in range(args.steps):
                logits = model(x)
                loss = loss_fn(logits)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

        return run

    ce = step(lambda logits: F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX))
    ld = step(lambda logits: total_loss(parts, StepInputs(logits, labels, gen))[0])
    ce(), ld()  # warm-up
    times = interleaved({"ce": ce, "ld": ld}, args.repeats)
    report = {
        "machine": machine(),
        "batch": f"{args.batch} x 3 x 96 x 192",
        "ce_step_ms": round(median(times["ce"]) / args.steps * 1e3, 1),
        "ld_step_ms": round(median(times["ld"]) / args.steps * 1e3, 1),
        "ld_over_ce": round(median(times["ld"]) / median(times["ce"]), 3),
        "ld_over_ce_all_repeats": [round(a / b, 3) for a, b in zip(times["ld"], times["ce"])],
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
