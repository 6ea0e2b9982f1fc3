"""The one path from uint8 images to logits: resize -> normalise -> forward -> upsample.

Used by pseudo-labelling, evaluation, prediction, AdaBN and the validators, so that they all see the
network the same way. What can vary is stated by :class:`sfseg.data.config.DataConfig` (and stored with
every checkpoint as its :class:`~sfseg.models.checkpoint.InferenceSettings`, so ``sfseg eval`` scores a
model the way its run did):

* ``input_size`` and ``resize``: the network input is the image resized to ``input_size`` bicubically,
  either with torch on the device (default, antialiased when shrinking) or with PIL on the loader workers
  (``pil``, as the released LDBE code);
* ``align_corners`` of the bilinear upsampling of logits;
* ``upsample``: ``direct`` (network output -> label resolution) or ``two_step`` (network output -> input
  size -> label resolution, the released code's path; its intra-class thresholds are measured at the
  input size).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from sfseg.data.config import DataConfig
from sfseg.data.normalization import Normalization
from sfseg.data.transforms import resize_image
from sfseg.engine.runtime.config import RuntimeConfig, use_channels_last
from sfseg.engine.runtime.guard import NonFiniteOutput
from sfseg.errors import DatasetError
from sfseg.models.checkpoint import InferenceSettings
from sfseg.models.ops import upsample_logits


def inference_settings(data: DataConfig, runtime: RuntimeConfig, device: torch.device) -> InferenceSettings:
    """The inference of a recipe: its data pipeline, and the runtime's memory layout and precision."""
    return InferenceSettings(
        tuple(data.input_size),
        data.resize,
        data.align_corners,
        data.upsample,
        use_channels_last(runtime.channels_last, device),
        bool(runtime.amp_inference),
    )


class InferenceView(Dataset):
    """A split as the network reads it.

    Items: ``image`` (3, H', W') uint8 (resized by PIL to ``input_size`` when ``resize`` is ``pil``,
    otherwise as on disk), ``size`` (H, W) of the image on disk (the label resolution), ``index``, and
    ``label`` when ``labels`` is set and the split has them.
    """

    def __init__(
        self, base: Dataset, input_size: list[int] | tuple = (), resize: str = "torch", labels: bool = False
    ):
        self.base, self.input_size, self.resize = base, tuple(input_size or ()), resize
        self.labels = labels and getattr(base, "has_labels", False)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        if self.labels:
            item = self.base[i]
            image = item["image"]
        else:
            image = self.base.image(i)
            item = {"index": i}
        size = torch.tensor(image.shape[-2:])
        if self.resize == "pil" and self.input_size:
            image = pil_resize(image, self.input_size)
        return {**item, "image": image, "size": size, "index": i}


def pil_resize(image: torch.Tensor, input_size: tuple[int, int]) -> torch.Tensor:
    """Resize an image with PIL's bicubic filter to ``input_size`` (W, H), as the released LDBE code does.

    Shape:
        image (3, H, W) uint8 -> (3, input H, input W) uint8.
    """
    pil = Image.fromarray(image.permute(1, 2, 0).numpy()).resize(tuple(input_size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)


class LabelsView(Dataset):
    """A labelled split's labels alone (no image decoding): ``label``, ``index``."""

    def __init__(self, base: Dataset):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {"label": self.base.label(i), "index": i}


class Inference:
    """A network ready for inference on uint8 images.

    Args:
        model: the network (possibly DDP-wrapped); its mode (eval, BN train) is the caller's business.
        normalization: the checkpoint's input normalisation.
        input_size: (W, H) network input size, or empty for the native size.
        resize: ``torch`` (resize here, on the device) or ``pil`` (done by :class:`InferenceView`).
        align_corners: bilinear upsampling mode of logits.
        upsample: ``direct`` or ``two_step``.
        amp: bfloat16 autocast for the forward pass.
        channels_last: feed the network channels-last tensors.
    """

    def __init__(
        self,
        model: nn.Module,
        normalization: Normalization,
        input_size: list[int] | tuple = (),
        resize: str = "torch",
        align_corners: bool = False,
        upsample: str = "direct",
        amp: bool = False,
        channels_last: bool = False,
    ):
        self.model, self.norm = model, normalization
        self.input_size = tuple(input_size or ())
        self.resize, self.align_corners, self.upsample = resize, align_corners, upsample
        self.amp, self.channels_last = amp, channels_last
        self.device = next(model.parameters()).device
        self._finite: torch.Tensor | None = None

    @classmethod
    def from_settings(
        cls, model: nn.Module, normalization: Normalization, settings: InferenceSettings
    ) -> Inference:
        """The inference a checkpoint was scored with (its ``InferenceSettings``)."""
        return cls(
            model,
            normalization,
            settings.input_size,
            settings.resize,
            settings.align_corners,
            settings.upsample,
            amp=settings.amp,
            channels_last=settings.channels_last,
        )

    @property
    def settings(self) -> InferenceSettings:
        """What this inference does, to store with the checkpoints it scores."""
        return InferenceSettings(
            tuple(self.input_size),
            self.resize,
            self.align_corners,
            self.upsample,
            self.channels_last,
            self.amp,
        )

    def view(self, dataset: Dataset, labels: bool = False) -> InferenceView:
        """The dataset view this inference expects (PIL resizing on the workers when ``resize`` is pil)."""
        return InferenceView(dataset, self.input_size, self.resize, labels)

    def network_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> normalised float input on the device, resized to ``input_size``."""
        images = images.to(self.device, non_blocking=True)
        if self.input_size and self.resize == "torch":
            images = resize_image(images, self.input_size)
        x = self.norm(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if not self.amp:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def raw(self, images: torch.Tensor) -> torch.Tensor:
        """The network's own output (its stride, its dtype) for uint8 images. Whether every value is
        finite is recorded on the device (no host synchronisation); :meth:`check_finite` reads it."""
        x = self.network_input(images)
        with self.autocast():
            out = self.model(x)
        # The sum is finite exactly when every value is (or overflows, for logits no sane model has).
        finite = torch.isfinite(out.sum(dtype=torch.float32))
        self._finite = finite if self._finite is None else self._finite & finite
        return out

    def check_finite(self, what: str, all_reduce_sum=None) -> None:
        """Raise :class:`~sfseg.engine.runtime.guard.NonFiniteOutput` if any output since the last check
        held a NaN or an infinity (one host synchronisation); callers check before they write or score
        anything computed from the outputs. With ``all_reduce_sum`` (a sharded pass), every process
        raises when any process saw one, so none waits for the others forever."""
        finite, self._finite = self._finite, None
        bad = torch.zeros(1, dtype=torch.int64, device=self.device)
        if finite is not None:
            bad += (~finite).long()
        if all_reduce_sum is not None:
            all_reduce_sum(bad)
        if int(bad.item()):
            raise NonFiniteOutput(what)

    def input_hw(self, raw: torch.Tensor, size: tuple[int, int]) -> tuple[int, int]:
        """The network input's (H, W) for images of label size ``size``."""
        return (self.input_size[1], self.input_size[0]) if self.input_size else tuple(size)

    def threshold_logits(self, raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Float32 logits at the resolution where intra-class statistics are measured: the label
        resolution (``direct``) or the network input size (``two_step``)."""
        target = self.input_hw(raw, size) if self.upsample == "two_step" else tuple(size)
        return upsample_logits(raw.float(), target, self.align_corners)

    def label_logits(self, raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Float32 logits at the label resolution ``size`` = (H, W)."""
        logits = raw.float()
        if self.upsample == "two_step":
            logits = upsample_logits(logits, self.input_hw(raw, size), self.align_corners)
        return upsample_logits(logits, tuple(size), self.align_corners)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """Logits at the label resolution (``size``, default the images' own) for uint8 images."""
        size = tuple(size) if size is not None else tuple(images.shape[-2:])
        return self.label_logits(self.raw(images), size)


def batch_size_hw(batch: dict) -> tuple[int, int]:
    """The label resolution (H, W) of a batch from :class:`InferenceView` (one size per batch)."""
    sizes = batch["size"]
    if not bool((sizes == sizes[0]).all()):
        raise DatasetError(
            "images of different sizes in one batch; set runtime.eval_batch_size: 1 (or --batch-size 1) "
            "or an input size for this split"
        )
    return int(sizes[0, 0]), int(sizes[0, 1])
