"""Where and how fast a run goes (shared by source training and adaptation)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from sfseg.config import MAX_BATCH, MAX_WORKERS, in_range, require


@dataclass
class RuntimeConfig:
    """Where and how fast a run goes. Nothing here changes what is computed, except where stated.

    Attributes:
        device: ``auto`` (the local rank's CUDA device when there is one, else the CPU), ``cpu``, ``cuda``
            or ``cuda:N``.
        amp: bfloat16 autocast for the training steps: true, false, or ``auto`` (on CUDA and on CPUs with
            native bfloat16 instructions, where it is about twice as fast; measured in docs/BENCHMARKS.md).
        amp_inference: bfloat16 autocast for pseudo-labelling, evaluation and AdaBN too. Changes the
            selected pixels slightly (measured in docs/BENCHMARKS.md); off by default.
        channels_last: channels-last memory format for convolutions (``auto``: on CUDA and on CPUs with
            bfloat16 support).
        num_workers: data-loading processes.
        eval_batch_size: batch size for pseudo-labelling, evaluation and AdaBN. With ``bn_mode: train``
            the labels depend on it (batch statistics), never on the number of processes.
        save_every: also save the resumable state every this many training steps (0 = at round
            boundaries only).
        logit_cache_gib: pseudo-labelling runs the network once per image and keeps its output for the
            selection pass, in memory up to this size, beyond it in a memory-mapped file in the run
            directory.
        save_pseudo_labels: keep each round's pseudo-label PNGs after the round.
        sync_bn: under ``torchrun``, SyncBatchNorm across processes (CUDA only).
        tensorboard: write TensorBoard event files to ``<out>/tensorboard``.
    """

    device: str = "auto"
    amp: bool | Literal["auto"] = False
    amp_inference: bool = False
    channels_last: Literal["auto", "on", "off"] = "auto"
    num_workers: int = 0
    eval_batch_size: int = 16
    save_every: int = 0
    logit_cache_gib: float = 4.0
    save_pseudo_labels: bool = True
    sync_bn: bool = False
    tensorboard: bool = True

    def check(self) -> None:
        in_range(self.num_workers, 0, MAX_WORKERS, "num_workers")
        in_range(self.eval_batch_size, 1, MAX_BATCH, "eval_batch_size")
        in_range(self.save_every, 0, 10**9, "save_every")
        in_range(self.logit_cache_gib, 0, 1024, "logit_cache_gib")
        require(
            re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", self.device) is not None,
            "device",
            f"must be auto, cpu, cuda or cuda:N, got {self.device!r}",
        )
        if self.device.startswith("cuda"):
            import torch

            require(
                torch.cuda.is_available(),
                "device",
                f"is {self.device!r} but CUDA is not available here (a CPU build of PyTorch, or no GPU); "
                "use auto or cpu",
            )


def use_channels_last(setting: str, device: torch.device) -> bool:
    """``auto``: on, on CUDA and on CPUs (oneDNN's convolutions prefer NHWC: 1.4x faster training steps
    of the ToyCity network on this project's 2-core machine, docs/BENCHMARKS.md)."""
    return setting != "off"


def use_amp(setting: bool | str, device: torch.device) -> bool:
    """``auto``: bfloat16 autocast on CUDA and on CPUs with AMX tiles; else as set. (On a CPU with
    AVX512-BF16 but no AMX, bf16 autocast measured 0.99x float32 for ToyCity training: not worth it.)"""
    if setting == "auto":
        return device.type == "cuda" or (device.type == "cpu" and cpu_has_amx())
    return bool(setting)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX bfloat16 tiles, where bfloat16 autocast speeds up convolutions ~2x."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags
