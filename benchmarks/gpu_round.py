"""One LD round of the GTA5->Cityscapes recipe on a GPU at real size: where the time goes, and what a full
round costs.

Writes a fake Cityscapes tree of 2048x1024 images that compress like photos (ToyCity street scenes
rendered at 256x512 and upsampled, with sensor noise; labels mapped to Cityscapes ids), a randomly
initialised DeepLab-v2 R-101 in the LDBE family's format, then, for float32 and for bfloat16:

* the training step alone (LD loss, batch 3, 600x600 crops drawn by the recipe's scale_crop and applied
  on the device), timed with CUDA events; its FLOPs counted with ``FlopCounterMode``: achieved TFLOP/s;
* one real round with ``configs/gta5_to_cityscapes/ld.yaml`` (pseudo-labels of every train image with
  16 loader workers, one epoch of training, evaluation), phase times from the run's metrics;
* the extrapolated time of a full Cityscapes round (2,975 train, 500 val images);
* how many pseudo-label pixels bfloat16 inference changes against float32 (random weights: an upper
  bound for a trained model, whose confidences are far from ties);
* the device-side crops against the CPU path's for the same draws.

    PYTHONPATH=src python3 benchmarks/gpu_round.py --train 120 --val 20 --out $OUT
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sfseg.adapt.config import MethodConfig, PseudoLabelConfig
from sfseg.adapt.parts import StepInputs, build_loss_parts, total_loss
from sfseg.adapt.pseudo_labels import build_pseudo_labeller
from sfseg.config import load_config
from sfseg.data.classes import CITYSCAPES19, CITYSCAPES_LABELS, TOYCITY
from sfseg.data.normalization import CAFFE_BGR
from sfseg.data.toycity import ToyCitySpec, generate_sample
from sfseg.data.transforms import AugmentConfig, apply_scale_crop, scale_crop_params
from sfseg.engine.evaluation.inference import Inference
from sfseg.engine.training.labelling import label_round
from sfseg.engine.training.optim import OptimConfig, build_optimizer
from sfseg.engine.training.recipe import AdaptConfig, recipe_path
from sfseg.engine.training.stages import run_adaptation
from sfseg.models import Checkpoint, create_model
from sfseg.models.deeplab_v2 import DeepLabV2
from sfseg.models.ops import upsample_logits

TOY_TO_LABELID = {n: lid for n, lid, tid in CITYSCAPES_LABELS if tid != 255 and n in TOYCITY.names}


SCALE = 1  # --scale: divide every size by this (a CPU smoke test of the script uses 8)


def _write_one(args) -> None:
    root, split, city, i, scale = args
    spec = ToyCitySpec(height=256, width=512, variant="materials", seed=7)
    img, lbl = generate_sample(spec, "target", "train", i)
    rng = np.random.default_rng(i)
    w, h = 2048 // scale, 1024 // scale
    big = np.asarray(Image.fromarray(img).resize((w, h), Image.BICUBIC), np.float32)
    big = np.clip(big + rng.normal(0, 2.0, big.shape), 0, 255).astype(np.uint8)
    lut = np.full(256, 0, np.uint8)
    for c, name in enumerate(TOYCITY.names):
        lut[c] = TOY_TO_LABELID[name]
    ids = np.asarray(Image.fromarray(lut[lbl]).resize((w, h), Image.NEAREST))
    stem = f"{city}_{i:06d}_000019"
    (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
    (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
    Image.fromarray(big).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
    Image.fromarray(ids, mode="L").save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")


def write_tree(root: Path, n_train: int, n_val: int) -> None:
    tasks = [(root, "train", "aachen", i, SCALE) for i in range(n_train)]
    tasks += [
        (root, "val", ("frankfurt", "lindau", "munster")[i % 3], 10_000 + i, SCALE) for i in range(n_val)
    ]
    with mp.get_context("fork").Pool(min(16, os.cpu_count() or 1)) as pool:
        pool.map(_write_one, tasks)


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_time(fn, warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds per call: CUDA events on a GPU, the host clock (after a sync) otherwise."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def train_step_benchmark(amp: bool, images: list[torch.Tensor], repeats: int) -> dict:
    """The LD step alone on device-resident full images (crop on the device), no data loading."""
    torch.manual_seed(0)
    model = DeepLabV2(19).to(DEVICE).to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(model, OptimConfig(lr=1e-4, head_lr_mult=10.0))
    parts = build_loss_parts(MethodConfig(), 19)
    aug = AugmentConfig(kind="scale_crop", short_side=720 // SCALE, crop=600 // SCALE)
    rng = np.random.default_rng(0)
    dev = [im.to(DEVICE) for im in images]
    gen = torch.Generator().manual_seed(0)

    def step():
        batch = []
        for j in range(3):
            im = dev[(j + rng.integers(len(dev))) % len(dev)]
            params = scale_crop_params(im.shape[-2], im.shape[-1], aug, rng)
            batch.append(apply_scale_crop(im, None, params, aug.crop)[0])
        x = CAFFE_BGR(torch.stack(batch)).contiguous(memory_format=torch.channels_last)
        c = aug.crop
        pseudo = torch.randint(0, 19, (3, c, c), device=DEVICE)
        pseudo[:, : c // 2] = 255
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=amp):
            logits = upsample_logits(model(x), (c, c))
            loss, _ = total_loss(parts, StepInputs(logits, pseudo, gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = device_time(step, warmup=min(5, repeats), repeats=repeats)
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    return {"seconds_per_step": round(seconds, 4), "tflop_per_step": round(flops / 1e12, 3),
            "achieved_tflops": round(flops / seconds / 1e12, 1)}  # fmt: skip


def bf16_label_difference(data_root: Path, n: int, workers: int) -> dict:
    """Pixels whose round-0 pseudo-label differs between float32 and bfloat16 inference."""
    from sfseg.data.file_dataset import FileListDataset
    from sfseg.data.registry import build_dataset

    ds = build_dataset("cityscapes", data_root, "train", labels=False)
    sub = FileListDataset(ds.samples[:n], ds.protocol, None)
    torch.manual_seed(0)
    model = DeepLabV2(19).to(DEVICE).to(memory_format=torch.channels_last)
    model.train()
    out = {}
    for amp in (False, True):
        inf = Inference(model, CAFFE_BGR, [1024 // SCALE, 512 // SCALE], amp=amp, channels_last=True)
        lab = build_pseudo_labeller(PseudoLabelConfig(), 19, 0.1)
        paths, _ = label_round(inf, sub, lab, Path(f"/tmp/gpu_round/pl{int(amp)}"), CITYSCAPES19, 1, workers)
        out[amp] = np.stack([np.asarray(Image.open(p)) for p in paths])
    diff = 100 * float((out[False] != out[True]).mean())
    return {"images": len(out[False]), "pixels_differing_pct": round(diff, 3)}


def crop_difference(images: list[torch.Tensor]) -> dict:
    aug = AugmentConfig(kind="scale_crop", short_side=720 // SCALE, crop=600 // SCALE)
    diffs = []
    for i, im in enumerate(images[:6]):
        params = scale_crop_params(im.shape[-2], im.shape[-1], aug, np.random.default_rng(i))
        cpu = apply_scale_crop(im, None, params, aug.crop)[0].int()
        gpu = apply_scale_crop(im.to(DEVICE), None, params, aug.crop)[0].cpu().int()
        diffs.append(((cpu - gpu).abs().max().item(), float((cpu != gpu).float().mean())))
    return {"max_abs_level_difference": max(d[0] for d in diffs),
            "values_differing_pct": round(100 * float(np.mean([d[1] for d in diffs])), 3)}  # fmt: skip


def real_round(data_root: Path, ckpt: Path, out: Path, amp: bool, workers: int) -> dict:
    cfg = load_config(
        AdaptConfig,
        recipe_path("gta5_to_cityscapes/ld"),
        [
            f"data.root={data_root}",
            f"checkpoint={ckpt}",
            f"out={out}",
            "rounds=1",
            f"num_workers={workers}",
            f"amp={str(amp).lower()}",
            f"amp_inference={str(amp).lower()}",
            "save_pseudo_labels=false",
            "tensorboard=false",
            f"input_size=[{1024 // SCALE}, {512 // SCALE}]",
            f"augment.short_side={720 // SCALE}",
            f"augment.crop={600 // SCALE}",
        ],
    )
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    summary = run_adaptation(cfg, progress=False, mode="overwrite")
    total = time.time() - t0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    pl = next(r for r in records if r["phase"] == "pseudo_labels")
    tr = next(r for r in records if r["phase"] == "train")
    ev = [r for r in records if r["phase"] in ("source_model", "round")]
    return {"pl_seconds": pl["seconds"], "train_steps": tr["steps"], "train_seconds": tr["seconds"],
            "eval_seconds": [r["seconds"] for r in ev], "total_seconds": round(total, 1),
            "peak_cuda_gib": summary.get("peak_cuda_gib")}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/gpu_round")
    p.add_argument("--train", type=int, default=120)
    p.add_argument("--val", type=int, default=20)
    p.add_argument("--workers", type=int, default=16)
    p.add_argument("--repeats", type=int, default=20, help="timed training steps per mode")
    p.add_argument("--scale", type=int, default=1, help="divide every size by this (8: a CPU smoke test)")
    args = p.parse_args()
    global SCALE
    SCALE = args.scale
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if DEVICE.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    report = {"device": name, "torch": torch.__version__}
    log = out / "gpu_round.jsonl"

    def note(key, value):
        report[key] = value
        with log.open("a") as f:
            f.write(json.dumps({key: value}) + "\n")
        print(key, json.dumps(value), flush=True)

    t = time.time()
    data = Path("/tmp/gpu_round/cityscapes")
    import shutil

    shutil.rmtree(data, ignore_errors=True)
    write_tree(data, args.train, args.val)
    note("data_seconds", round(time.time() - t, 1))
    torch.backends.cudnn.benchmark = True
    ckpt = Checkpoint.of(create_model("deeplabv2_r101", 19), CITYSCAPES19.names, CAFFE_BGR).save(
        Path("/tmp/gpu_round/source.pt")
    )
    from sfseg.data.registry import build_dataset

    ds = build_dataset("cityscapes", data, "train", labels=False)
    images = [ds.image(i) for i in range(min(8, len(ds)))]
    note("crops_device_vs_cpu", crop_difference(images))
    for amp in (False, True):
        name = "bf16" if amp else "fp32"
        note(f"train_step_{name}", train_step_benchmark(amp, images, args.repeats))
    note("bf16_inference_label_change", bf16_label_difference(data, min(24, args.train), args.workers))
    for amp in (False, True):
        name = "bf16" if amp else "fp32"
        r = real_round(data, ckpt, Path(f"/tmp/gpu_round/run_{name}"), amp, args.workers)
        pl_img = r["pl_seconds"] / args.train
        step = r["train_seconds"] / max(r["train_steps"], 1)
        eval_img = r["eval_seconds"][-1] / args.val
        full = 2975 * pl_img + 991 * step + 500 * eval_img
        r.update(
            pl_images_per_s=round(1 / pl_img, 1),
            seconds_per_step=round(step, 3),
            eval_images_per_s=round(1 / eval_img, 1),
            full_round_hours=round(full / 3600, 3),
        )
        note(f"round_{name}", r)
    (out / "gpu_round.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
