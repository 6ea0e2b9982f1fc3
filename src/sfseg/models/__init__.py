"""Networks, the model registry and checkpoints with their metadata."""

from sfseg.models import deeplab_small as _deeplab_small  # noqa: F401  (registers the model)
from sfseg.models import deeplab_v2 as _deeplab_v2  # noqa: F401  (registers the model)
from sfseg.models import deeplab_v2_import as _deeplab_v2_import  # noqa: F401  (registers its importer)
from sfseg.models import mit as _mit  # noqa: F401  (registers the models)
from sfseg.models import mit_import as _mit_import  # noqa: F401  (registers its importer)
from sfseg.models import vit as _vit  # noqa: F401  (registers the model)
from sfseg.models import vit_import as _vit_import  # noqa: F401  (registers its importer)
from sfseg.models.checkpoint import Checkpoint, InferenceSettings, Normalization, load_checkpoint
from sfseg.models.registry import create_model, list_models, register_model

__all__ = [
    "Checkpoint",
    "InferenceSettings",
    "Normalization",
    "create_model",
    "list_models",
    "load_checkpoint",
    "register_model",
]
