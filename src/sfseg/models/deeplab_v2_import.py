"""Importing the community's DeepLab-v2 checkpoints (registered beside ``deeplabv2_r101``): detect the
family by keys and shapes, convert, record. The generic dispatcher is :mod:`sfseg.models.foreign`.

Families (never detected by file name):

================================  ====================================  ==================  ==========
family                            keys (after ``module.``/``_orig_mod.``)  predicting head     branches
================================  ====================================  ==================  ==========
``deeplab_caffe_init``            ``Scale.*`` (layer5 = 21 VOC classes)  none (new head)     4
``torchvision_imagenet``          torchvision ResNet-101 with ``fc.*``    none (new head)     4
``adaptsegnet_single``            ``layer5`` in 2048                     layer5              2
``adaptsegnet_multi``             ``layer5`` in 1024, ``layer6`` in 2048    layer6              2
``ldbe``                          ``layer5`` and ``layer6`` in 2048          layer5              4
``crst``                          ``layer5`` in 2048                     layer5              4
``tllib``                         ``backbone.*``, ``classifier.*``        classifier          4
================================  ====================================  ==================  ==========

AdaptSegNet's classifier returned inside its loop, so only branches 0 and 1 were ever trained: those
checkpoints become a 2-branch head and branches 2 and 3 are reported as unused. AdaptSegNet single-level and
CRST files have identical keys and shapes (they differ in branches used and in input normalisation), so
such a file needs ``family=`` to say which it is. Each family's input normalisation is attached to the
imported checkpoint; keys not loaded are listed in its provenance. Missing ``num_batches_tracked`` entries
(older files) are filled with zeros; ``fc.*`` is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sfseg.data.classes import ClassProtocol
from sfseg.data.normalization import CAFFE_BGR, IMAGENET, Normalization
from sfseg.models.checkpoint import Checkpoint, CheckpointFormatError
from sfseg.models.deeplab_v2 import DeepLabV2
from sfseg.models.foreign import Importer, fitting_weights, imported_class_names
from sfseg.registry import IMPORTERS

ARCH = "deeplabv2_r101"
CRST_BGR = Normalization("BGR", 1.0, (0.406, 0.456, 0.485), (0.225, 0.224, 0.229))


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    normalization: Normalization
    backbone: str = "caffe"
    branches: int = 4
    head: str = "layer5"  # the predicting head's key prefix after prefix stripping; "" = none (new head)


FAMILIES = {
    f.name: f
    for f in (
        Family("deeplab_caffe_init", "DeepLab-v2 Caffe init (ImageNet+COCO backbone)", CAFFE_BGR, head=""),
        Family("torchvision_imagenet", "torchvision ImageNet ResNet-101", IMAGENET, "torchvision", head=""),
        Family("adaptsegnet_single", "AdaptSegNet single-level", CAFFE_BGR, branches=2),
        Family("adaptsegnet_multi", "AdaptSegNet multi-level", CAFFE_BGR, branches=2, head="layer6"),
        Family("ldbe", "LDBE / CCM (layer5 predicts, layer6 unused)", CAFFE_BGR),
        Family("crst", "CRST", CRST_BGR),
        Family("tllib", "Transfer-Learning-Library DeepLab-v2", CAFFE_BGR, head="classifier"),
    )
}


def _head_in(sd: dict[str, torch.Tensor], prefix: str) -> int | None:
    w = sd.get(f"{prefix}.conv2d_list.0.weight")
    return None if w is None else int(w.shape[1])


def detect_family(sd: dict[str, torch.Tensor]) -> str | tuple[str, ...] | None:
    """The family of a cleaned state dict, the tuple of candidates when keys cannot tell them apart, or
    None when it is not a DeepLab-v2 file."""
    keys = set(sd)
    if any(k.startswith("layer5.bottleneck") or k.startswith("layer5.head") for k in keys):
        raise CheckpointFormatError(
            "ProDA checkpoint (SE + GroupNorm head 'layer5.bottleneck'/'layer5.head'): not supported; its "
            "head is not a DeepLab-v2 classifier. Only its backbone could be reused."
        )
    if any(k.startswith("Scale.") for k in keys):
        return "deeplab_caffe_init"
    if "backbone.conv1.weight" in keys and any(k.startswith("classifier.conv2d_list.") for k in keys):
        return "tllib"
    l5, l6 = _head_in(sd, "layer5"), _head_in(sd, "layer6")
    if "fc.weight" in keys and l5 is None:
        return "torchvision_imagenet"
    if l5 == 1024 and l6 == 2048:
        return "adaptsegnet_multi"
    if l5 == 2048 and l6 == 2048:
        return "ldbe"
    if l5 == 2048 and l6 is None:
        return ("adaptsegnet_single", "crst")
    return None


def convert(sd: dict[str, torch.Tensor], family: Family) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename a cleaned state dict into :class:`DeepLabV2` keys; returns (converted, unused keys)."""
    renamed: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if family.name == "deeplab_caffe_init":
            k = k.removeprefix("Scale.")
        elif family.name == "tllib":
            k = k.removeprefix("backbone.")
        renamed[k] = v
    out, unused = {}, []
    head = family.head
    for k, v in renamed.items():
        m = re.match(rf"^{head}\.conv2d_list\.(\d+)\.(weight|bias)$", k) if head else None
        if m:
            if int(m.group(1)) < family.branches:
                out[f"layer5.conv2d_list.{m.group(1)}.{m.group(2)}"] = v
            else:
                unused.append(k)
        elif k.startswith(("layer5.", "layer6.", "fc.")):
            unused.append(k)
        else:
            out[k] = v
    return out, unused


def import_family(
    sd: dict[str, torch.Tensor], family: str, protocol: ClassProtocol | None, where: str
) -> Checkpoint:
    """Convert a cleaned DeepLab-v2 state dict of ``family`` into an sfseg :class:`Checkpoint`.

    Args:
        protocol: the class protocol (required for files without a usable head; checked otherwise).
        where: a name for messages (the file).
    """
    fam = FAMILIES[family]
    weights, unused = convert(sd, fam)
    head = weights["layer5.conv2d_list.0.weight"] if fam.head else None
    class_names = imported_class_names(head, protocol, fam.description, where)
    num_classes = len(class_names)
    model = DeepLabV2(num_classes, backbone=fam.backbone, branches=fam.branches)
    reference = model.state_dict()
    filled = 0
    for k, v in reference.items():
        if k not in weights and k.endswith("num_batches_tracked"):
            weights[k] = torch.zeros_like(v)
            filled += 1
        elif k not in weights and k.startswith("layer5.") and not fam.head:
            weights[k] = v  # the new head keeps its N(0, 0.01) initialisation
    missing = sorted(set(reference) - set(weights))
    if missing:
        raise CheckpointFormatError(
            f"{where}: detected as {fam.description}, but {len(missing)} DeepLab-v2 R-101 keys are missing, "
            f"e.g. {missing[:8]}"
        )
    extra = sorted(set(weights) - set(reference))
    unused += extra
    model.load_state_dict(fitting_weights(weights, reference, where), strict=True)
    return Checkpoint(
        arch=ARCH,
        arch_kwargs={"backbone": fam.backbone, "branches": fam.branches},
        class_names=class_names,
        normalization=fam.normalization,
        state_dict=model.state_dict(),
        provenance={
            "stage": "import",
            "imported_from": where,
            "family": fam.name,
            "predicting_head": fam.head or "new (initialised N(0, 0.01))",
            "unused_keys": sorted(unused),
            "filled_num_batches_tracked": filled,
        },
    )


IMPORTERS.register(
    "deeplab_v2",
    Importer(
        families={name: f.description for name, f in FAMILIES.items()},
        detect=detect_family,
        convert=import_family,
        ambiguity={
            (
                "adaptsegnet_single",
                "crst",
            ): "(same layer5, no layer6). AdaptSegNet single-level predicts with "
            "branches 0-1 and BGR mean subtraction; CRST with all 4 branches and BGR mean/std in 0-1. Say "
            "which: family=adaptsegnet_single or family=crst."
        },
    ),
)
