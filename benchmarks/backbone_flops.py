"""FLOPs of the recipes' networks, counted (not timed) with PyTorch's FlopCounterMode on the meta device:
no memory, no data, the same numbers on any machine (1 FLOP = 2 MAC; attention through SDPA counted by its
registered formula).

For each network at its recipe's sizes: parameters, one training step (forward and backward at the
recipe's batch and crop) and one pseudo-labelled image (a forward pass at the labelling input size, plus
the upsampling of its logits to the 2048x1024 label resolution).

    python benchmarks/backbone_flops.py --json docs/measurements/cpu/backbone_flops.json
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sfseg.models import create_model

# name, arch, kwargs, (batch, crop H, crop W) of a training step, labelling input (H, W)
NETWORKS = [
    ("DeepLab-v2 R-101 (LD reference)", "deeplabv2_r101", {}, (3, 600, 600), (512, 1024)),
    ("MiT-B5 + DAFormer head", "daformer_mit", {"variant": "b5"}, (2, 512, 512), (512, 1024)),
    ("MiT-B5 + SegFormer head", "segformer_mit", {"variant": "b5"}, (2, 512, 512), (512, 1024)),
    ("DINOv2 ViT-B/14 + linear head", "dinov2_vit", {"variant": "b"}, (2, 518, 518), (512, 1024)),
    ("DINOv2 ViT-L/14 + linear head", "dinov2_vit", {"variant": "l"}, (2, 518, 518), (512, 1024)),
    (
        "DINOv2 ViT-L/14, LoRA rank 16",
        "dinov2_vit",
        {"variant": "l", "lora_rank": 16},
        (2, 518, 518),
        (512, 1024),
    ),
]


def count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(arch: str, kwargs: dict, step: tuple[int, int, int], label_hw: tuple[int, int]) -> dict:
    with torch.device("meta"):
        model = create_model(arch, 19, **kwargs)
        b, h, w = step
        x = torch.randn(b, 3, h, w)

        def train_step():
            logits = F.interpolate(model(x), size=(h, w), mode="bilinear", align_corners=False)
            F.cross_entropy(logits, torch.zeros(b, h, w, dtype=torch.long)).backward()

        def label_image():
            with torch.no_grad():
                logits = model(torch.randn(1, 3, *label_hw))
                F.interpolate(logits, size=(1024, 2048), mode="bilinear", align_corners=False)

        params = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return {
            "parameters": params,
            "trainable": trainable,
            "train_step_tflop": count(train_step) / 1e12,
            "labelled_image_tflop": count(label_image) / 1e12,
        }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--json", help="write the table here")
    args = p.parse_args()
    rows = []
    print("| network | parameters | trainable | train step (TFLOP) | step | labelled image (TFLOP) |")
    print("|---|---:|---:|---:|---|---:|")
    for name, arch, kwargs, step, label_hw in NETWORKS:
        r = measure(arch, kwargs, step, label_hw)
        rows.append(
            {"network": name, "arch": arch, "kwargs": kwargs, "step": step, "label_input": label_hw, **r}
        )
        b, h, w = step
        print(
            f"| {name} | {r['parameters']:,} | {r['trainable']:,} | {r['train_step_tflop']:.2f} | "
            f"{b} x {h}x{w} | {r['labelled_image_tflop']:.3f} |",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
