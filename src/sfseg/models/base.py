"""The model contract: what every segmentation network in sfseg provides, explicitly.

Every consumer of a network (the training step, pseudo-labelling, evaluation, validators, optimisers,
normalisation handling, checkpoints) relies on these methods and on nothing else, so a new architecture
is one file that subclasses :class:`SegmentationModel` and registers itself with
:func:`sfseg.models.registry.register_model`.

Shape conventions: inputs are normalised images (B, 3, H, W); logits are (B, C, h, w), at the network's
own output stride or at the input size (callers upsample to the label resolution through
``sfseg.engine.evaluation.inference``).
"""

from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

NORM_TYPES = (_BatchNorm, nn.LayerNorm, nn.GroupNorm)


class SegmentationModel(nn.Module):
    """Base class of every architecture.

    Subclasses implement :meth:`forward_with_features` and :meth:`head_parameters`; the rest has
    defaults they may refine. :func:`~sfseg.models.registry.create_model` sets ``arch`` and
    ``arch_kwargs`` (how to build the network again, recorded in its checkpoints).
    """

    arch: str = ""
    arch_kwargs: dict

    def forward(self, x):
        """Logits. Shape: (B, 3, H, W) -> (B, C, h, w)."""
        return self.forward_with_features(x)[0]

    def forward_with_features(self, x):
        """Logits and the features the classifier reads (for feature-based validators such as SND).

        Shape:
            (B, 3, H, W) -> logits (B, C, h, w), features (B, D, h', w').
        """
        raise NotImplementedError(f"{type(self).__name__} must implement forward_with_features")

    def head_parameters(self) -> list[nn.Parameter]:
        """The predicting head's parameters (trained at ``head_lr_mult`` times the learning rate)."""
        raise NotImplementedError(f"{type(self).__name__} must implement head_parameters")

    def no_weight_decay(self) -> set[str]:
        """Names of parameters AdamW should not decay beyond normalisation weights and biases (e.g.
        position embeddings, class and register tokens)."""
        return set()

    def norm_layers(self) -> list[nn.Module]:
        """The normalisation layers (BatchNorm, LayerNorm, GroupNorm), for the methods that act on them."""
        return [m for m in self.modules() if isinstance(m, NORM_TYPES)]

    def batch_norm_layers(self) -> list[_BatchNorm]:
        """The BatchNorm layers: the ones with running statistics (AdaBN, ``bn_mode``)."""
        return [m for m in self.modules() if isinstance(m, _BatchNorm)]
