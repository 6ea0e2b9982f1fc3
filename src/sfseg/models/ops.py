"""Helpers every caller of a segmentation network shares, and one start-up step for reproducible numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample_logits(
    logits: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool = False
) -> torch.Tensor:
    """Bilinear upsampling of logits (never of argmax maps) to ``size`` = (H, W); a no-op when equal.

    ``align_corners=True`` reproduces older DeepLab-v2 code (and the LDBE release); sfseg's default is
    ``False``. At output stride 8 the two differ by a sub-pixel shift.

    Shape:
        logits (B, C, h, w) -> (B, C, H, W).
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def argmax_classes(logits: torch.Tensor, zmax: torch.Tensor | None = None) -> torch.Tensor:
    """``logits.argmax(1)`` (the first class on ties), computed from ``amax``: on CPUs PyTorch's
    ``argmax``/``max(dim)`` over the channel dimension of NCHW is 5-20x slower than ``amax``. A pixel
    holding a NaN gets what ``torch.argmax`` gives it (the first NaN): always a class index.

    Shape:
        logits (B, C, H, W) -> (B, H, W) int64; ``zmax`` (B, 1, H, W) if already computed.
    """
    if logits.is_cuda:
        return logits.argmax(1)
    c = logits.shape[1]
    if zmax is None:
        zmax = logits.amax(1, keepdim=True)
    if c > 255:
        return logits.argmax(1)
    # Weight each channel that reaches the maximum by C - c: the largest weight is the first such channel.
    weights = torch.arange(c, 0, -1, dtype=torch.uint8, device=logits.device).view(1, c, 1, 1)
    out = c - ((logits == zmax).to(torch.uint8) * weights).amax(1).long()
    nan = zmax.isnan().squeeze(1)  # NaN equals nothing, so such a pixel matched no channel (out == c)
    if bool(nan.any()):
        out = torch.where(nan, logits.argmax(1), out)
    return out


def count_into(counts: torch.Tensor, values: torch.Tensor) -> None:
    """``counts[v] += 1`` for every ``v`` in ``values`` (int64 indices below ``len(counts)``), in place.

    On CUDA, ``torch.bincount`` reads the maximum back to the host to size its output, which stalls the
    pipeline at every call; ``index_add_`` into preallocated counters does not (and on a CPU it is twice as
    fast as ``bincount`` for a 1.2-million-bin histogram).
    """
    values = values.reshape(-1)
    if counts.is_cuda or counts.numel() > 65536:
        # On a CPU too when the counters are many (a histogram): no counts-sized temporary to add.
        counts.index_add_(0, values, torch.ones_like(values, dtype=counts.dtype))
    else:
        counts += torch.bincount(values, minlength=counts.numel())[: counts.numel()].to(counts.dtype)


def kth_largest(rows: torch.Tensor, k: int, exact_radix: bool | None = None) -> torch.Tensor:
    """The ``k``-th largest value of each row of non-negative floats (``+inf`` allowed), exactly.

    On the CPU ``kthvalue``; on CUDA (where ``kthvalue`` of a 2-megapixel row takes ~10 ms) a two-level
    radix select on the float32 bit pattern, which is order-preserving for non-negative numbers: a
    histogram of the high 16 bits finds the bin holding the k-th largest, a histogram of the low 16 bits
    within that bin finds the value. No host synchronisation.

    Shape:
        rows (B, N) float32 >= 0 -> (B, 1).
    """
    b, n = rows.shape
    use_radix = rows.is_cuda if exact_radix is None else exact_radix
    if not use_radix:
        return rows.kthvalue(n - k + 1, dim=1, keepdim=True).values
    keys = rows.contiguous().float().view(torch.int32).long()
    hi, lo = keys >> 16, keys & 0xFFFF
    offsets = torch.arange(b, device=rows.device).view(b, 1) * 65536
    hist = torch.zeros(b * 65536, dtype=torch.int64, device=rows.device)
    count_into(hist, hi + offsets)
    above = hist.view(b, 65536).flip(1).cumsum(1)  # [i, j] = count with high bits >= 65535 - j
    need = torch.full((b, 1), k, dtype=torch.int64, device=rows.device)
    j1 = torch.searchsorted(above, need)  # first (from the top) bin where the count reaches k
    b1 = 65535 - j1  # (B, 1)
    higher = torch.where(j1 > 0, above.gather(1, (j1 - 1).clamp(min=0)), torch.zeros_like(j1))
    inside = hi == b1
    hist2 = torch.zeros(b * 65537, dtype=torch.int64, device=rows.device)
    rows2 = torch.arange(b, device=rows.device).view(b, 1) * 65537
    idx2 = torch.where(inside, lo, torch.full_like(lo, 65536)) + rows2
    count_into(hist2, idx2)
    above2 = hist2.view(b, 65537)[:, :65536].flip(1).cumsum(1)
    j2 = torch.searchsorted(above2, need - higher)
    key = (b1 << 16) | (65535 - j2)
    return key.to(torch.int32).view(torch.float32)


def warm_up_vector_maths() -> None:
    """Call, once and on one thread, every elementwise function PyTorch hands to MKL's vector maths on
    CPUs (exp, log, log2, log10, sqrt, tanh, erf).

    Why: a process's first call of such a function from two threads at once was seen to compute one
    thread's share ~1e-5 off (about 1 process in 40, more often under load; later calls were exact). In
    the pseudo-labelling pass that moved an intra-class threshold by a histogram bin, so the same run
    gave different labels from one process to the next. After this call, 150 runs in a row under load
    gave identical labels (docs/architecture.md, "Reproducible numbers")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.linspace(0.01, 1.0, 4096)
        for fn in (torch.exp, torch.log, torch.log2, torch.log10, torch.sqrt, torch.tanh, torch.erf):
            fn(x)
            fn(x.double())
    finally:
        torch.set_num_threads(threads)


warm_up_vector_maths()
