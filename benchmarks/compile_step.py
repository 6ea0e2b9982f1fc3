"""Does ``torch.compile`` pay on this machine? ToyCity training steps and labelling forwards, eager against
compiled, for the CNN of the ToyCity recipes and the tiny MiT (DAFormer head).

Each network runs the same batches (8 x 3 x 96 x 192, the ToyCity recipes' batch) in both modes,
interleaved; the compile time (the first calls) is reported apart, with the number of steps a recipe
would need to earn it back. Prints the machine's speed and writes ``--json``.

    python benchmarks/compile_step.py --json docs/measurements/cpu/compile_step.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
import torch.nn.functional as F
from common import interleaved, machine, median

from sfseg.models import create_model

# name: (arch, kwargs, channels-last): each network in the memory format sfseg runs it in on a CPU
# (channels-last convolutions for the CNN: docs/BENCHMARKS.md), eager and compiled alike.
NETWORKS = {
    "deeplab_small (ToyCity CNN)": ("deeplab_small", {"width": 16, "output_stride": 2}, True),
    "tiny MiT + DAFormer head": ("daformer_mit", {"variant": "tiny", "head_dim": 32}, False),
}


def step_fn(model, opt, x, y):
    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(F.interpolate(out, size=y.shape[-2:], mode="bilinear"), y)
        loss.backward()
        opt.step()

    return step


def forward_fn(model, x):
    def fwd():
        with torch.no_grad():
            model(x)

    return fwd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default="")
    args = p.parse_args()
    info = machine()
    print(f"machine: {info}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 96, 192, generator=g)
    y = torch.randint(0, 12, (8, 96, 192), generator=g)
    rows = []
    for name, (arch, kwargs, channels_last) in NETWORKS.items():
        torch.manual_seed(0)
        eager = create_model(arch, 12, **kwargs).train()
        if channels_last:
            eager = eager.to(memory_format=torch.channels_last)
        xb = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        compiled_model = copy.deepcopy(eager)
        compiled = torch.compile(compiled_model)
        opt_e = torch.optim.SGD(eager.parameters(), lr=1e-3, momentum=0.9)
        opt_c = torch.optim.SGD(compiled_model.parameters(), lr=1e-3, momentum=0.9)
        t0 = time.perf_counter()
        step_fn(compiled, opt_c, xb, y)()
        step_fn(compiled, opt_c, xb, y)()
        compile_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled.eval()
        forward_fn(compiled, xb)()
        forward_fn(compiled, xb)()
        compile_eval = time.perf_counter() - t0
        eager.eval()
        fwd = {"eager": forward_fn(eager, xb), "compiled": forward_fn(compiled, xb)}
        fwd = interleaved(fwd, args.repeats)
        eager.train()
        compiled.train()
        step_fn(eager, opt_e, xb, y)()  # warm
        train = interleaved(
            {"eager": step_fn(eager, opt_e, xb, y), "compiled": step_fn(compiled, opt_c, xb, y)}, args.repeats
        )
        r_train = median(train["eager"]) / median(train["compiled"])
        r_fwd = median(fwd["eager"]) / median(fwd["compiled"])
        saved = median(train["eager"]) - median(train["compiled"])
        payback = compile_train / saved if saved > 0 else float("inf")
        row = {
            "network": name,
            "train_step_ms": {k: round(median(v) * 1e3, 1) for k, v in train.items()},
            "forward_ms": {k: round(median(v) * 1e3, 1) for k, v in fwd.items()},
            "train_speedup": round(r_train, 3),
            "forward_speedup": round(r_fwd, 3),
            "compile_seconds": {"train": round(compile_train, 1), "eval": round(compile_eval, 1)},
            "steps_to_pay_back_compile": None if payback == float("inf") else round(payback),
        }
        rows.append(row)
        print(
            f"{name}: training step {r_train:.2f}x, labelling forward {r_fwd:.2f}x (compiled vs eager); "
            f"compile {compile_train:.0f} s (train) + {compile_eval:.0f} s (eval), "
            f"paid back after {row['steps_to_pay_back_compile']} steps"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "repeats": args.repeats, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
