"""One LD round of the GTA5->Cityscapes recipe at real size: time per phase and peak memory.

Writes a fake Cityscapes tree of 2048x1024 images (random pixels: the numbers are about cost, not accuracy),
a randomly initialised DeepLab-v2 R-101 checkpoint, and runs `configs/gta5_to_cityscapes/ld.yaml` for one
round: pseudo-labels from 1024x512 inputs at 2048x1024, training on 600x600 crops in batches of 3,
evaluation at 1024x512 -> 2048x1024.

    python benchmarks/real_size_round.py --train 3 --val 2            # CPU
    python benchmarks/real_size_round.py --train 60 --val 10 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from sfseg.adapt.config import AdaptConfig
from sfseg.config import load_config
from sfseg.data.classes import CITYSCAPES19
from sfseg.data.fake_trees import write_cityscapes
from sfseg.data.normalization import CAFFE_BGR
from sfseg.engine.recipes import recipe_path
from sfseg.engine.run import run_adaptation
from sfseg.models import save_checkpoint
from sfseg.models.deeplab_v2 import DeepLabV2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/real_size_round")
    p.add_argument("--train", type=int, default=3, help="target train images (2048x1024)")
    p.add_argument("--val", type=int, default=2, help="target val images (2048x1024)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast for the training steps")
    args = p.parse_args()
    out = Path(args.out)
    data = out / "cityscapes"
    t = time.time()
    # The val split needs 3 cities' worth of names; both splits are random 2048x1024 images.
    if not (data / "leftImg8bit").is_dir():
        for split, n in (("train", args.train), ("val", args.val)):
            write_cityscapes(data, splits=(split,), per_split=n, size=(2048, 1024), seed=len(split))
    ckpt = save_checkpoint(
        out / "source.pt",
        DeepLabV2(CITYSCAPES19.num_classes),
        arch="deeplabv2_r101",
        arch_kwargs={},
        class_names=CITYSCAPES19.names,
        normalization=CAFFE_BGR,
        provenance={"stage": "random init (benchmark)"},
    )
    print(f"data and checkpoint written in {time.time() - t:.0f} s")
    cfg = load_config(
        AdaptConfig,
        recipe_path("gta5_to_cityscapes/ld"),
        [
            f"data.root={data}",
            f"checkpoint={ckpt}",
            f"out={out / 'run'}",
            "rounds=1",
            f"device={args.device}",
            f"num_workers={args.workers}",
            f"amp={str(args.amp).lower()}",
            "save_pseudo_labels=false",
        ],
    )
    summary = run_adaptation(cfg, progress=True, mode="overwrite")
    records = [json.loads(x) for x in (out / "run" / "metrics.jsonl").read_text().splitlines()]
    last_start = max(i for i, r in enumerate(records) if r["phase"] == "start")
    records = records[last_start:]
    pl = next(r for r in records if r["phase"] == "pseudo_labels")
    tr = next(r for r in records if r["phase"] == "train")
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    device = torch.cuda.get_device_name() if on_gpu else f"CPU ({len(os.sched_getaffinity(0))} cores)"
    report = {
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "amp_bf16": args.amp,
        "train_images": args.train,
        "val_images": args.val,
        "pseudo_label_seconds": pl["seconds"],
        "pseudo_label_seconds_per_image": round(pl["seconds"] / args.train, 2),
        "train_steps": tr["steps"],
        "train_seconds": tr["seconds"],
        "seconds_per_step": round(tr["seconds"] / max(tr["steps"], 1), 2),
        "total_seconds": summary["seconds"],
        "peak_rss_gib": summary["peak_rss_gib"],
        "peak_cuda_gib": summary.get("peak_cuda_gib"),
    }
    steps = 2975 // cfg.schedule.batch_size
    report["estimated_round_hours_full_cityscapes"] = round(
        (2975 * report["pseudo_label_seconds_per_image"] + steps * report["seconds_per_step"]) / 3600, 2
    )
    (out / f"report{'_amp' if args.amp else ''}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
