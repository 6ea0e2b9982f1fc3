"""The round loop shared by every self-training method (LD, naive and confidence self-training, ...).

Per round ``r`` (You et al., ACM MM 2021, Sec. 3):

1. run the current model over the whole target train set and choose pseudo-labels (written as PNGs);
2. train ``epochs_per_round`` epochs with the method's loss parts;
3. ``alpha += alpha_step``; learning rate ``/= lr_round_decay``; optimizer rebuilt (momentum reset).

Target-val scores are logged after every round for monitoring only: the returned model is always the one
after the last round — never the best round on the split it is reported on.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sfseg import IGNORE_INDEX
from sfseg.adapt.bn import adabn, freeze_bn_affine, set_bn_mode, train_only_bn_affine
from sfseg.adapt.config import AdaptConfig
from sfseg.adapt.mixing import class_mix, class_mix_masks
from sfseg.adapt.parts import StepInputs, build_loss_parts, total_loss
from sfseg.adapt.pseudo_labels import (
    ConfidenceHistogram,
    argmax_labels,
    class_balanced_labels,
    confidence_scores,
    global_threshold_labels,
    score_to_confidence,
)
from sfseg.adapt.teacher import EMATeacher
from sfseg.config import load_config, save_config, to_dict
from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import Normalization
from sfseg.data.registry import build_dataset, dataset_protocol
from sfseg.data.transforms import AugmentConfig, resize_image, scale_crop
from sfseg.engine.evaluate import evaluate
from sfseg.engine.optim import build_sgd, poly_step
from sfseg.engine.recipes import recipe_path
from sfseg.engine.runlog import MetricsLog, resolve_device, seed_everything
from sfseg.models import load_checkpoint, save_checkpoint
from sfseg.models.ops import upsample_logits


class ImagesOnly(Dataset):
    """A split's images without their labels (passes that need no labels skip decoding them)."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.base.image(i), "index": i}


def _batches(dataset: Dataset, batch_size: int, workers: int = 0, labels: bool = True):
    data = dataset if labels else ImagesOnly(dataset)
    return DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)


def peak_memory() -> dict:
    """Peak resident memory of this process and, on CUDA, peak allocated GPU memory (GiB)."""
    out = {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if torch.cuda.is_available():
        out["peak_cuda_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _prepare(images: torch.Tensor, norm: Normalization, input_size: list[int], device) -> torch.Tensor:
    """uint8 images -> network input on ``device``, resized to ``input_size`` (W, H) when one is set."""
    images = images.to(device, non_blocking=True)
    return norm(resize_image(images, tuple(input_size)) if input_size else images)


@torch.no_grad()
def _logits(model, images: torch.Tensor, norm: Normalization, input_size: list[int]) -> torch.Tensor:
    """Logits at the images' own (label) resolution, from an input resized to ``input_size``."""
    return upsample_logits(model(_prepare(images, norm, input_size, _device(model))), images.shape[-2:])


class TrainView(Dataset):
    """The target train set as one round trains on it: each image with its pseudo-label, jointly cropped.

    Args:
        base: the target train split.
        pseudo_paths: this round's pseudo-label PNGs (dataset order), or None for methods without them.
        augment: the crop recipe.
        seed, round_index: with the epoch and sample index, they fix each sample's crop.
    """

    def __init__(self, base: Dataset, pseudo_paths, augment: AugmentConfig, seed: int, round_index: int):
        self.base, self.pseudo_paths, self.augment = base, pseudo_paths, augment
        self.seed, self.round_index, self.epoch = seed, round_index, 0

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        # Only the image: target labels, where the split has them, never reach training.
        image = self.base.image(i)
        pseudo = None
        if self.pseudo_paths:
            pseudo = torch.from_numpy(np.asarray(Image.open(self.pseudo_paths[i])).astype(np.int64))
        if self.augment.kind == "scale_crop":
            rng = np.random.default_rng([self.seed, self.round_index, self.epoch, i])
            image, pseudo = scale_crop(image, pseudo, self.augment, rng)
        item = {"image": image, "index": i}
        if pseudo is not None:
            item["pseudo"] = pseudo
        return item


@torch.no_grad()
def make_pseudo_labels(
    model,
    dataset: Dataset,
    norm: Normalization,
    cfg: AdaptConfig,
    alpha: float,
    out_dir: Path,
    protocol: ClassProtocol,
    progress: bool,
) -> tuple[list[Path], dict]:
    """Label the target train set with the current model; write one PNG per image.

    Two passes when class-balanced (the first only fills the histogram), so memory stays bounded by
    one batch plus ``C x bins`` counters whatever the dataset size. With ``pseudo_labels.kind: none``
    nothing is selected or written: only each class's share of the argmax predictions is measured.

    Returns:
        the PNG paths (dataset order; None for kind none) and the round statistics (selection share,
        per-class share of the pseudo-labels and of the argmax predictions, thresholds and, where the
        split has labels, pseudo-label accuracy per class).
    """
    pl = cfg.pseudo_labels
    C = protocol.num_classes
    thresholds = None
    hist = ConfidenceHistogram(C, pl.bins)
    if pl.kind == "class_balanced":
        for batch in tqdm(
            _batches(dataset, cfg.eval_batch_size, cfg.num_workers, labels=False),
            desc="pseudo-labels: thresholds",
            disable=not progress,
            leave=False,
        ):
            hist.update(*confidence_scores(_logits(model, batch["image"], norm, cfg.input_size)))
        thresholds = hist.thresholds(alpha)

    selected = torch.zeros(C, dtype=torch.int64)
    correct = torch.zeros(C, dtype=torch.int64)
    predicted = torch.zeros(C, dtype=torch.int64)
    total_pixels = 0
    paths: list[Path] = []
    palette = protocol.palette()
    desc = "prediction shares" if pl.kind == "none" else "pseudo-labels: select"
    for batch in tqdm(
        _batches(dataset, cfg.eval_batch_size, cfg.num_workers, labels=pl.kind != "none"),
        desc=desc,
        disable=not progress,
        leave=False,
    ):
        logits = _logits(model, batch["image"], norm, cfg.input_size)
        predicted += torch.bincount(logits.argmax(1).reshape(-1), minlength=C).cpu()
        total_pixels += logits.shape[0] * logits.shape[2] * logits.shape[3]
        if pl.kind == "none":
            continue
        if pl.kind == "class_balanced":
            labels = class_balanced_labels(logits, thresholds, alpha, pl.local, pl.channel_test)
        elif pl.kind == "global_threshold":
            labels = global_threshold_labels(logits, pl.threshold)
        else:
            labels = argmax_labels(logits)
        sel = labels != IGNORE_INDEX
        selected += torch.bincount(labels[sel], minlength=C).cpu()
        if "label" in batch:
            gt = batch["label"].to(labels.device)
            hit = sel & (labels == gt)
            correct += torch.bincount(labels[hit], minlength=C).cpu()
        out_dir.mkdir(parents=True, exist_ok=True)
        for idx, lab in zip(batch["index"].tolist(), labels):
            path = out_dir / f"{idx:05d}.png"
            im = Image.fromarray(lab.to(torch.uint8).cpu().numpy(), mode="L").convert("P")
            im.putpalette(palette)
            im.save(path)
            paths.append(path)

    names = protocol.names
    stats = {
        "pred_share": {n: float(predicted[c]) / max(total_pixels, 1) for c, n in enumerate(names)},
        "never_predicted": [n for c, n in enumerate(names) if predicted[c] == 0],
    }
    if pl.kind == "none":
        return None, stats
    n_sel = int(selected.sum())
    stats["alpha"] = alpha
    stats["selected_fraction"] = n_sel / max(total_pixels, 1)
    stats["pl_share"] = {n: float(selected[c]) / max(n_sel, 1) for c, n in enumerate(names)}
    if thresholds is not None:
        conf_thr = score_to_confidence(thresholds.double()).tolist()
        stats["thresholds"] = {
            n: (t if math.isfinite(s) else None) for n, t, s in zip(names, conf_thr, thresholds.tolist())
        }
    if dataset.has_labels:
        stats["pl_accuracy"] = float(correct.sum()) / max(n_sel, 1)
        stats["pl_accuracy_per_class"] = {
            n: (float(correct[c]) / float(selected[c]) if selected[c] else None) for c, n in enumerate(names)
        }
    return paths, stats


def collapse_check(start_share: dict[str, float], stats: dict, fraction: float, when: str) -> list[str]:
    """Classes whose share fell below ``fraction`` x their share in the source model's predictions.

    The share compared is the pseudo-label share when the method selects pseudo-labels, else the
    prediction share. This is the winner-takes-all signal, and it needs no target labels. A warning is
    printed; the caller records the list in the metrics.
    """
    if fraction <= 0:
        return []
    share = stats.get("pl_share", stats["pred_share"])
    collapsed = [n for n, s0 in start_share.items() if s0 > 0 and share[n] < fraction * s0]
    if collapsed:
        detail = ", ".join(f"{n} {100 * share[n]:.2f}% (was {100 * start_share[n]:.2f}%)" for n in collapsed)
        tqdm.write(f"warning: {when}: class share collapsed below {fraction:g}x its start: {detail}")
    return collapsed


def _no_labels(cfg: AdaptConfig) -> AdaptConfig:
    return replace(cfg, pseudo_labels=replace(cfg.pseudo_labels, kind="none"))


def _step_inputs(model, teacher, x, pseudo, cfg: AdaptConfig, generator) -> StepInputs:
    """The student's forward pass, after the teacher's labels and ClassMix where the method has them."""
    t_conf = t_label = None
    if teacher is not None:
        t_conf, t_label = teacher.predict(x)
        if pseudo is not None:
            # Class-balanced pseudo-labels override the teacher, with confidence 1.
            chosen = pseudo != IGNORE_INDEX
            t_label = torch.where(chosen, pseudo, t_label)
            t_conf = torch.where(chosen, torch.ones_like(t_conf), t_conf)
    if cfg.mixing == "classmix":
        masks = class_mix_masks(t_label if t_label is not None else pseudo, generator)
        x = class_mix(masks, x)[0]
        pseudo, t_label, t_conf = (
            None if t is None else class_mix(masks, t)[0] for t in (pseudo, t_label, t_conf)
        )
    logits = upsample_logits(model(x), x.shape[-2:])
    return StepInputs(logits, pseudo, generator, teacher_labels=t_label, teacher_confidence=t_conf)


def train_round(
    model,
    dataset: Dataset,
    norm: Normalization,
    cfg: AdaptConfig,
    parts,
    pseudo_paths,
    round_index: int,
    step: int,
    generator: torch.Generator,
    progress: bool,
    log: MetricsLog,
    teacher: EMATeacher | None = None,
) -> int:
    """One round of training; returns the global step count after it."""
    t0 = time.time()
    lr_scale = cfg.lr_round_decay ** (-round_index)
    optimizer = build_sgd(model, cfg.optim, lr_scale=lr_scale)  # rebuilt: momentum reset every round
    view = TrainView(dataset, pseudo_paths, cfg.augment, cfg.seed, round_index)
    loader = DataLoader(
        view,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        generator=generator,
        num_workers=cfg.num_workers,
    )
    model.train()
    set_bn_mode(model, cfg.bn_mode)
    bar = tqdm(
        total=cfg.epochs_per_round * len(loader), desc=f"round {round_index} train", disable=not progress
    )
    sums: dict[str, float] = {}
    n = 0
    for epoch in range(cfg.epochs_per_round):
        view.epoch = epoch
        for batch in loader:
            device = _device(model)
            images = batch["image"].to(device, non_blocking=True)
            pseudo = batch["pseudo"].to(device, non_blocking=True) if "pseudo" in batch else None
            if cfg.hflip:
                flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(device)
                images[flip] = images[flip].flip(-1)
                if pseudo is not None:
                    pseudo[flip] = pseudo[flip].flip(-1)
            poly_step(optimizer, cfg.optim, step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                inputs = _step_inputs(model, teacher, norm(images), pseudo, cfg, generator)
                loss, values = total_loss(parts, inputs)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if teacher is not None:
                teacher.update(model, step)
            step += 1
            n += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    log.write(
        {
            "phase": "train",
            "round": round_index,
            "steps": n,
            "seconds": round(time.time() - t0, 1),
            "lr_scale": lr_scale,
            **{f"loss_{k}": v / max(n, 1) for k, v in sums.items()},
        }
    )
    return step


def _run_init_stage(cfg: AdaptConfig, progress: bool) -> AdaptConfig:
    """Run the ``init_from`` recipe (same data, seed and source checkpoint) into ``<out>/<name>``; return
    ``cfg`` starting from its final checkpoint."""
    first = load_config(
        AdaptConfig,
        recipe_path(cfg.init_from),
        [f"data_root={cfg.data_root}", f"checkpoint={cfg.checkpoint}", f"seed={cfg.seed}"],
    )
    # Where and how it runs follows this run; what it does follows its own recipe.
    first = replace(
        first,
        out=str(Path(cfg.out) / cfg.init_from),
        checkpoint_family=cfg.checkpoint_family,
        device=cfg.device,
        amp=cfg.amp,
        num_workers=cfg.num_workers,
    )
    run_adaptation(first, progress)
    return replace(cfg, checkpoint=str(Path(first.out) / "final.pt"), init_from="")


def run_adaptation(cfg: AdaptConfig, progress: bool = True) -> dict:
    """Adapt ``cfg.checkpoint`` to the target domain; write the run directory; return the summary."""
    # Reject a bad composition, a missing checkpoint or data before anything is written.
    protocol = dataset_protocol(cfg.dataset, cfg.protocol)
    parts = build_loss_parts(cfg, protocol.num_classes)
    if cfg.init_from:
        cfg = _run_init_stage(cfg, progress)
    ckpt = load_checkpoint(cfg.checkpoint, family=cfg.checkpoint_family, classes=protocol.name)
    ckpt.check_classes(protocol.names, cfg.data_root)
    # Target train labels (where the split has them) feed only the pseudo-label diagnostics, never a loss.
    target_train = build_dataset(
        cfg.dataset, cfg.data_root, cfg.train_split, protocol.name, labels="auto", progress=progress
    )
    target_val = build_dataset(cfg.dataset, cfg.data_root, cfg.val_split, protocol.name, progress=progress)
    seed_everything(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    log = MetricsLog(out / "metrics.jsonl")
    t0 = time.time()
    # Re-running into the same directory appends; each run starts with this record.
    log.write(
        {
            "phase": "start",
            "method": cfg.method,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "config": to_dict(cfg),
        }
    )

    model = ckpt.build().to(resolve_device(cfg.device))
    norm = ckpt.normalization
    if cfg.trainable == "bn_affine":
        train_only_bn_affine(model)
    else:
        freeze_bn_affine(model)
    generator = torch.Generator().manual_seed(cfg.seed)

    def evaluate_and_log(round_index: int, phase: str) -> dict:
        res = evaluate(
            model,
            target_val,
            norm,
            protocol,
            batch_size=cfg.eval_batch_size,
            input_size=cfg.input_size,
            workers=cfg.num_workers,
            progress=progress,
            desc=f"eval ({phase})",
        )
        log.write({"phase": phase, "round": round_index, "split": "target_val", **res})
        return res

    def save(name: str, **where) -> None:
        provenance = {
            "stage": "adapt",
            "method": cfg.method,
            **where,
            "recipe": to_dict(cfg),
            "parent": ckpt.provenance,
        }
        save_checkpoint(
            out / name,
            model,
            arch=ckpt.arch,
            arch_kwargs=ckpt.arch_kwargs,
            class_names=ckpt.class_names,
            normalization=norm,
            provenance=provenance,
        )

    history = [evaluate_and_log(-1, "source_model")]
    if cfg.adabn:
        batches = _batches(target_train, cfg.eval_batch_size, cfg.num_workers, labels=False)
        device = _device(model)
        adabn(model, (_prepare(b["image"], norm, cfg.input_size, device) for b in batches), progress=progress)
        history.append(evaluate_and_log(-1, "adabn"))

    teacher = EMATeacher(model, cfg.teacher.max_decay) if cfg.teacher.ema else None
    if teacher is not None:
        teacher.model.eval()
        set_bn_mode(teacher.model, cfg.bn_mode)
    step = 0
    round_stats = []
    start_share: dict[str, float] | None = None
    for r in range(cfg.rounds):
        alpha = min(1.0, cfg.pseudo_labels.alpha + r * cfg.pseudo_labels.alpha_step)
        # The reference labels with BN in the same mode as it trains.
        model.eval()
        set_bn_mode(model, cfg.bn_mode)
        t_round = time.time()
        pseudo_paths, stats = make_pseudo_labels(
            model, target_train, norm, cfg, alpha, out / "pseudo_labels" / f"round_{r}", protocol, progress
        )
        stats["seconds"] = round(time.time() - t_round, 1)
        if stats["never_predicted"]:
            tqdm.write(
                f"round {r}: classes never predicted, no pseudo-labels for them: {stats['never_predicted']}"
            )
        start_share = start_share or stats["pred_share"]
        stats["collapsed"] = collapse_check(start_share, stats, cfg.collapse_warning, f"round {r}")
        log.write({"phase": "pseudo_labels", "round": r, **stats})
        round_stats.append(stats)
        step = train_round(
            model, target_train, norm, cfg, parts, pseudo_paths, r, step, generator, progress, log, teacher
        )
        history.append(evaluate_and_log(r, "round"))
        save(f"round_{r}.pt", round=r)
        if not cfg.save_pseudo_labels and pseudo_paths:
            for p in pseudo_paths:
                p.unlink()

    end = None
    if cfg.rounds > 0:
        # The adapted model's own class shares: has training itself swallowed a class?
        model.eval()
        set_bn_mode(model, cfg.bn_mode)
        _, end = make_pseudo_labels(model, target_train, norm, _no_labels(cfg), 0.0, out, protocol, progress)
        end["collapsed"] = collapse_check(start_share, end, cfg.collapse_warning, "after the last round")
        log.write({"phase": "final_shares", **end})
    final = history[-1]
    save("final.pt", rounds=cfg.rounds)
    summary = {
        "method": cfg.method,
        **peak_memory(),
        "seed": cfg.seed,
        "final": final,
        "val_miou_per_round": [h["miou"] for h in history],
        "round_stats": round_stats,
        "final_shares": end,
        "seconds": round(time.time() - t0, 1),
    }
    log.write(
        {
            "phase": "done",
            "method": cfg.method,
            "miou": final["miou"],
            "seconds": summary["seconds"],
            **peak_memory(),
        }
    )
    return summary
