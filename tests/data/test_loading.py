"""Training data: seeded epoch orders and crops, and the device-side crop path."""

import numpy as np
import torch
from PIL import Image

from sfseg.data.transforms import AugmentConfig
from sfseg.engine.runtime.distributed import Dist
from sfseg.engine.runtime.loading import TrainView, collate, epoch_batches, finish_crops


class Images:
    def __init__(self, n=6, h=60, w=90):
        g = torch.Generator().manual_seed(0)
        self.images = [torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g) for _ in range(n)]

    def __len__(self):
        return len(self.images)

    def image(self, i):
        return self.images[i]


def test_device_crops_equal_the_loader_crops(tmp_path):
    base = Images()
    paths = []
    for i in range(len(base)):
        p = tmp_path / f"{i:05d}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 12, (60, 90)).astype(np.uint8)).save(p)
        paths.append(p)
    aug = AugmentConfig(kind="scale_crop", short_side=48, scales=[0.5, 1.0, 1.5], crop=40)
    on_loader = TrainView(base, TrainView.pngs(paths), aug, seed=3, round_index=1)
    on_device = TrainView(base, TrainView.pngs(paths), aug, seed=3, round_index=1, crop_on_device=True)
    keys = [(0, 2), (1, 2), (1, 5)]
    a = collate([on_loader[k] for k in keys])
    b = collate([on_device[k] for k in keys])
    assert "crop" in b and "crop" not in a
    ia, pa = finish_crops(a, aug.crop, torch.device("cpu"))
    ib, pb = finish_crops(b, aug.crop, torch.device("cpu"))
    assert torch.equal(ia, ib) and torch.equal(pa, pb) and ia.shape == (3, 3, 40, 40)
    assert not torch.equal(ia[0], ia[1])  # another epoch draws another crop


def test_epoch_batches_are_seeded_and_split_by_rank():
    one = epoch_batches(20, 3, seed=0, round_index=0, epoch=0)
    assert one == epoch_batches(20, 3, seed=0, round_index=0, epoch=0)
    assert one != epoch_batches(20, 3, seed=0, round_index=0, epoch=1)
    assert len(one) == 6 and sorted(i for b in one for i in b) != list(range(18))  # shuffled, drop_last
    r0 = epoch_batches(20, 3, 0, 0, 0, Dist(0, 2))
    r1 = epoch_batches(20, 3, 0, 0, 0, Dist(1, 2))
    assert len(r0) == len(r1) == 3 and not set(sum(r0, [])) & set(sum(r1, []))
