"""Where a GPU labelling pass and an evaluation spend their time (a diagnostic for gpu_round.py).

Writes (or reuses) the fake Cityscapes tree of gpu_round.py, then times, per image at the recipe's batch
of one: waiting for the loader, the forward pass, the rest of the GPU work, and host synchronisations;
and prints PyTorch profiler tables (self CPU time and device time) for a labelling pass and an
evaluation.

    PYTHONPATH=src python3 benchmarks/gpu_profile.py --images 48
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import gpu_round
import torch
from torch.profiler import ProfilerActivity, profile

from sfseg.adapt.config import PseudoLabelConfig
from sfseg.adapt.pseudo_labels import build_pseudo_labeller
from sfseg.data.classes import CITYSCAPES19
from sfseg.data.file_dataset import FileListDataset
from sfseg.data.normalization import CAFFE_BGR
from sfseg.data.registry import build_dataset
from sfseg.engine.evaluation.evaluate import evaluate
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.runtime.loading import sharded_loader
from sfseg.engine.training.labelling import label_round
from sfseg.models.deeplab_v2 import DeepLabV2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=48)
    p.add_argument("--workers", type=int, default=16)
    args = p.parse_args()
    data = Path("/tmp/gpu_round/cityscapes")
    if not (data / "leftImg8bit").is_dir():
        gpu_round.write_tree(data, args.images, args.images)
    torch.backends.cudnn.benchmark = True
    train = build_dataset("cityscapes", data, "train")
    sub = FileListDataset(train.samples[: args.images], train.protocol, train.codec)
    val = build_dataset("cityscapes", data, "val")
    torch.manual_seed(0)
    model = DeepLabV2(19).cuda().to(memory_format=torch.channels_last).train()
    inf = Inference(model, CAFFE_BGR, [1024, 512], channels_last=True)
    # Per-image split of the time, the loader's wait included.
    loader = sharded_loader(inf.view(sub), 1, args.workers)
    wait = fwd = 0.0
    it = iter(loader)
    t_all = time.perf_counter()
    for _ in range(len(sub)):
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        with torch.no_grad():
            inf.raw(batch["image"])
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        wait, fwd = wait + t1 - t0, fwd + t2 - t1
    total = time.perf_counter() - t_all
    print(f"per image: loader wait {1e3 * wait / len(sub):.1f} ms, forward {1e3 * fwd / len(sub):.1f} ms, "
          f"total {1e3 * total / len(sub):.1f} ms", flush=True)  # fmt: skip
    lab = build_pseudo_labeller(PseudoLabelConfig(), 19, 0.1)
    label_round(inf, sub, lab, Path("/tmp/prof_pl0"), CITYSCAPES19, 1, args.workers)  # warm-up
    t0 = time.perf_counter()
    label_round(inf, sub, lab, Path("/tmp/prof_pl1"), CITYSCAPES19, 1, args.workers)
    print(f"label_round: {1e3 * (time.perf_counter() - t0) / len(sub):.1f} ms per image", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        label_round(inf, sub, lab, Path("/tmp/prof_pl2"), CITYSCAPES19, 1, args.workers)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=40))
    print(prof.key_averages().table(sort_by="device_time_total", row_limit=12, max_name_column_width=40))
    t0 = time.perf_counter()
    evaluate(inf, val, CITYSCAPES19, batch_size=1, workers=args.workers)
    print(f"evaluate: {1e3 * (time.perf_counter() - t0) / len(val):.1f} ms per image", flush=True)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        evaluate(inf, val, CITYSCAPES19, batch_size=1, workers=args.workers)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))


if __name__ == "__main__":
    main()
