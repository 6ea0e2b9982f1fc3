"""Networks, the model registry and checkpoints with their metadata."""

from sfseg.models import deeplab_small as _deeplab_small  # noqa: F401  (registers the model)
from sfseg.models import deeplab_v2 as _deeplab_v2  # noqa: F401  (registers the model)
from sfseg.models.checkpoint import Checkpoint, Normalization, load_checkpoint, save_checkpoint
from sfseg.models.registry import create_model, list_models, register_model

__all__ = [
    "Checkpoint",
    "Normalization",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
    "save_checkpoint",
]
