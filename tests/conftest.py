from dataclasses import replace

import pytest
import torch

from sfseg.data.toycity import ToyCitySpec, generate

torch.set_num_threads(2)

TINY = replace(ToyCitySpec(), height=32, width=64, source_train=8, source_val=4, target_train=8, target_val=4)


@pytest.fixture(scope="session")
def tiny_toycity(tmp_path_factory):
    """A tiny ToyCity tree (32x64 pixels, a few images per split), generated once per session."""
    root = tmp_path_factory.mktemp("toycity")
    generate(root, TINY, progress=False)
    return root
