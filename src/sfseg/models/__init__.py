"""Networks, the model factory, and checkpoints with their metadata (the architectures and the importers
register themselves in :mod:`sfseg.registry`, loaded on first use)."""

from sfseg.models.checkpoint import Checkpoint, InferenceSettings, Normalization
from sfseg.models.loading import load_checkpoint, load_for_data
from sfseg.models.registry import ModelHooks, create_model, list_models

__all__ = [
    "Checkpoint",
    "InferenceSettings",
    "ModelHooks",
    "Normalization",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_for_data",
]
