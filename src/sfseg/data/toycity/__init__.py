"""ToyCity: the embedded, procedurally generated sim -> photo street-scene benchmark (scene layouts,
rendering, the worlds of the suite, their files on disk, and the dataset that reads them).

``sfseg toycity generate --variant NAME --seed S`` writes a world; generator seed 1 of each variant is its
development world (recipe choices are made there), seeds 0, 2 and 3 test worlds (reported).
"""

from sfseg.data.toycity.layout import data_spec, generate, is_generated, toycity_domain, toycity_signature
from sfseg.data.toycity.worlds import GENERATOR_VERSION, VARIANTS, ToyCitySpec, Variant, generate_sample

__all__ = [
    "GENERATOR_VERSION",
    "VARIANTS",
    "ToyCitySpec",
    "Variant",
    "data_spec",
    "generate",
    "generate_sample",
    "is_generated",
    "toycity_domain",
    "toycity_signature",
]
