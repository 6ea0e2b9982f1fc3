"""ToyCity source training: float32 against bfloat16 autocast and channels-last memory on this CPU.

Times training steps of the ToyCity source recipe's network on the same batches in each mode,
interleaved, and trains each mode for the same number of steps from the same initialisation to compare
the losses reached. ``runtime.amp: auto`` turns bfloat16 on where the CPU has native bfloat16
AMX tiles; ``runtime.channels_last: auto`` is on. The script reports which the CPU has.

    python benchmarks/source_amp.py
"""

from __future__ import annotations

import argparse
import copy
import json

import torch
import torch.nn.functional as F
from common import interleaved, machine, median

from sfseg.data.classes import TOYCITY
from sfseg.data.normalization import Normalization
from sfseg.data.toycity import ToyCitySpec, generate, is_generated
from sfseg.data.toycity.dataset import toycity
from sfseg.engine.runtime.config import cpu_has_amx
from sfseg.engine.training.optim import OptimConfig, build_optimizer
from sfseg.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="runs/bench_data/toycity")
    p.add_argument("--steps", type=int, default=60, help="training steps per mode for the loss comparison")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    if not is_generated(args.data, ToyCitySpec()):
        generate(args.data, ToyCitySpec(), progress=False)
    data = toycity(args.data, "source_train", TOYCITY)
    norm = Normalization()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=g).tolist()
    batches = []
    for i in range(0, 8 * args.steps, 8):
        idx = [order[j % len(data)] for j in range(i, i + 8)]
        batches.append(
            (
                norm(torch.stack([data.image(j) for j in idx])),
                torch.stack([data.label(j) for j in idx]).long(),
            )
        )
    torch.manual_seed(0)
    base = create_model("deeplab_small", TOYCITY.num_classes, width=16, output_stride=2)

    def trainer(amp: bool, channels_last: bool):
        model = copy.deepcopy(base)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = build_optimizer(model, OptimConfig(lr=0.01, head_lr_mult=1.0))
        state = {"i": 0, "losses": []}

        def step():
            x, y = batches[state["i"] % len(batches)]
            state["i"] += 1
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["losses"].append(loss.item())

        return step, state

    modes = {
        "fp32": (False, False),
        "fp32_channels_last": (False, True),
        "bf16": (True, False),
        "bf16_channels_last": (True, True),
    }
    timers = {k: trainer(*v) for k, v in modes.items()}
    for step, _ in timers.values():
        step()
    times = interleaved({k: v[0] for k, v in timers.items()}, args.repeats)
    # Same steps from the same initialisation: the losses reached.
    final = {}
    for k, v in modes.items():
        step, state = trainer(*v)
        for _ in range(args.steps):
            step()
        final[k] = round(sum(state["losses"][-10:]) / 10, 4)
    f = median(times["fp32"])
    report = {
        "machine": machine(),
        "cpu_amx_bf16": cpu_has_amx(),
        "cpu_avx512_bf16": " avx512_bf16" in open("/proc/cpuinfo").read(),
        "step_ms": {k: round(median(t) * 1e3, 1) for k, t in times.items()},
        "speedup_vs_fp32": {k: round(f / median(t), 2) for k, t in times.items()},
        f"mean_loss_last_10_of_{args.steps}_steps": final,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
