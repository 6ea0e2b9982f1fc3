"""What the labelling pass keeps between its two passes and what it writes: the bounded logit cache (in
memory, or memory-mapped files in the run directory), and the pseudo-label PNG writer (palette PNGs
encoded on a thread pool while the network works)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch

from sfseg.fileio import make_dirs, open_fd, open_file


class LogitCache:
    """What each batch's selection needs, kept between the two passes of a labelling round: the network's
    outputs, or the pixels' (score, prediction) when those suffice and are smaller.

    Args:
        budget_gib: memory budget; when the first batch shows that all batches would exceed it, the
            tensors go to memory-mapped files in ``spill_dir`` (deleted by :meth:`close`).
        total_images: number of images this process will store (for the size estimate).
        spill_dir: where the files go.
        root: the run directory holding ``spill_dir`` (no link is followed below it).
    """

    def __init__(self, budget_gib: float, total_images: int, spill_dir: Path, root: Path | None = None):
        self.budget = budget_gib * 2**30
        self.total = total_images
        self.spill_dir = Path(spill_dir)
        self.root = Path(root) if root is not None else self.spill_dir.parent
        self.mem: dict[int, tuple[torch.Tensor, ...]] = {}
        self.files: list[np.memmap] = []
        self.paths: list[Path] = []
        self.specs: list[tuple[tuple, torch.dtype]] = []
        self.slots: dict[int, tuple[int, int]] = {}
        self.next_row = 0
        self.where: str | None = None

    def _plan(self, tensors: tuple[torch.Tensor, ...]) -> None:
        self.specs = [(tuple(t.shape[1:]), t.dtype) for t in tensors]
        need = sum(t[0].numel() * t.element_size() for t in tensors) * self.total
        if need > self.budget:
            self.where = "file"
            make_dirs(self.spill_dir, self.root)
            for i, (shape, dtype) in enumerate(self.specs):
                np_dtype = _np_storage(dtype)
                path = self.spill_dir / f"cache{i}.bin"
                self.paths.append(path)
                with open_file(path, "w+b", root=self.root) as f:
                    self.files.append(np.memmap(f, dtype=np_dtype, mode="w+", shape=(self.total, *shape)))
        elif tensors[0].device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(tensors[0].device)
            self.where = "device" if need < 0.25 * free else "host"
        else:
            self.where = "memory"

    def put(self, key: int, tensors: tuple[torch.Tensor, ...]) -> None:
        if self.where is None:
            self._plan(tensors)
        if self.where in ("device", "memory"):
            self.mem[key] = tensors
        elif self.where == "host":
            self.mem[key] = tuple(t.to("cpu", non_blocking=True) for t in tensors)
        else:
            n = tensors[0].shape[0]
            for f, t in zip(self.files, tensors):
                f[self.next_row : self.next_row + n] = _as_storage(t.detach().cpu())
            self.slots[key] = (self.next_row, n)
            self.next_row += n

    def get(self, key: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        if self.where != "file":
            return tuple(t.to(device, non_blocking=True) for t in self.mem.pop(key))
        row, n = self.slots.pop(key)
        out = []
        for f, (_, dtype) in zip(self.files, self.specs):
            t = torch.from_numpy(np.array(f[row : row + n]))
            out.append((t.view(dtype) if dtype in (torch.bfloat16, torch.float16) else t).to(device))
        return tuple(out)

    def close(self) -> None:
        self.mem.clear()
        for f, path in zip(self.files, self.paths):
            f._mmap.close()
            path.unlink(missing_ok=True)
        self.files, self.paths = [], []


def _np_storage(dtype: torch.dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return np.int16
    return torch.empty(0, dtype=dtype).numpy().dtype


def _as_storage(t: torch.Tensor) -> np.ndarray:
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.view(torch.int16)
    return t.numpy()


def palette_png(gray_png: bytes, palette: list[int]) -> bytes:
    """An 8-bit grayscale PNG turned into a palette PNG with the same pixel values (indices).

    The image data of an 8-bit grayscale PNG and of an 8-bit palette PNG are the same bytes: only the
    header's colour type (0 -> 3) and a ``PLTE`` chunk differ. This lets OpenCV, which encodes without
    holding Python's lock (so threads encode in parallel), write the palette PNGs that image viewers show
    in the classes' colours.
    """
    sig, rest = gray_png[:8], gray_png[8:]
    length = struct.unpack(">I", rest[:4])[0]
    if rest[4:8] != b"IHDR" or length != 13 or rest[8 + 8] != 8 or rest[8 + 9] != 0:
        raise ValueError("expected an 8-bit grayscale PNG")
    ihdr = bytearray(rest[8 : 8 + 13])
    ihdr[9] = 3  # colour type: palette

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    tail = rest[8 + 13 + 4 :]  # the chunks after IHDR (and its CRC)
    return sig + chunk(b"IHDR", bytes(ihdr)) + chunk(b"PLTE", bytes(palette[: 3 * 256])) + tail


class PseudoLabelWriter:
    """Writes pseudo-label PNGs (palette, the index is the class; 255 = not selected) on a thread pool,
    so that PNG encoding overlaps the network's work: OpenCV encodes (in parallel: it releases Python's
    lock), the palette is added by :func:`palette_png`. :meth:`close` waits and re-raises any error."""

    def __init__(
        self, out_dir: Path, palette: list[int], threads: int | None = None, root: Path | None = None
    ):
        self.out_dir = Path(out_dir)
        self.root = Path(root) if root is not None else self.out_dir
        if root is not None:
            make_dirs(self.out_dir, self.root)
        else:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.palette = list(palette) + [0] * (768 - len(palette))
        self.pool = cf.ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1))
        self.pending: list[cf.Future] = []

    def path(self, index: int) -> Path:
        return self.out_dir / f"{index:05d}.png"

    def _write(self, index: int, label: np.ndarray) -> None:
        # Fast zlib level (label maps compress well). No per-file rename: a round whose labelling did not
        # finish is labelled again on resume.
        ok, gray = cv2.imencode(".png", np.ascontiguousarray(label), [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError(f"could not encode pseudo-label {index}")
        fd = open_fd(self.path(index), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, root=self.root)
        with os.fdopen(fd, "wb") as f:
            f.write(palette_png(gray.tobytes(), self.palette))

    def submit(self, index: int, label: np.ndarray) -> None:
        self.pending.append(self.pool.submit(self._write, index, label))
        if len(self.pending) > 64:
            done = [f for f in self.pending if f.done()]
            for f in done:
                f.result()
            self.pending = [f for f in self.pending if not f.done()]

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pool.shutdown(wait=True)
            self.pending = []


def to_host(t: torch.Tensor) -> tuple:
    """Start copying ``t`` to (pinned) host memory; returns what :func:`submit_copy` needs to finish it."""
    if t.device.type != "cuda":
        return t, None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


def submit_copy(writer: PseudoLabelWriter, indices: list[int], copy: tuple) -> None:
    host, done = copy
    if done is not None:
        done.synchronize()
    for idx, lab in zip(indices, host.numpy()):
        writer.submit(idx, lab)
