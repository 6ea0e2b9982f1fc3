import numpy as np
import pytest
import torch

from sfseg.data.transforms import AugmentConfig, resize_image, resize_label, scale_crop


def _pair(h=100, w=200):
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
    label = torch.randint(0, 19, (h, w), generator=g)
    label[:10] = 255
    return image, label


@pytest.mark.parametrize("scale", [0.5, 1.0, 1.5])
def test_scale_crop_shapes_and_labels(scale):
    image, label = _pair()
    cfg = AugmentConfig("scale_crop", short_side=72, scales=[scale], crop=60)
    im, lab = scale_crop(image, label, cfg, np.random.default_rng(0))
    assert im.shape == (3, 60, 60) and im.dtype == torch.uint8 and lab.shape == (60, 60)
    assert set(lab.unique().tolist()) <= set(label.unique().tolist())  # nearest: no new values


def test_scale_crop_is_a_crop_of_the_rescaled_image():
    image, label = _pair()
    cfg = AugmentConfig("scale_crop", short_side=100, scales=[1.0], crop=50)
    _, lab = scale_crop(image, label, cfg, np.random.default_rng(3))
    # scale 1 and short side 100 = no resize: the crop must be found in the label
    windows = label.unfold(0, 50, 1).unfold(1, 50, 1)
    assert (windows == lab).flatten(2).all(-1).any()


def test_scale_crop_is_deterministic_per_rng_and_square_crops_small_images():
    image, label = _pair()
    cfg = AugmentConfig("scale_crop", short_side=72, scales=[0.5, 1.0], crop=60)
    a = scale_crop(image, label, cfg, np.random.default_rng([1, 2, 3]))
    b = scale_crop(image, label, cfg, np.random.default_rng([1, 2, 3]))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    small = AugmentConfig("scale_crop", short_side=72, scales=[0.5], crop=60)  # short side 36 < 60
    im, lab = scale_crop(image, label, small, np.random.default_rng(0))
    assert im.shape == (3, 60, 60) and lab.shape == (60, 60)


def test_resizes():
    image, label = _pair()
    assert resize_image(image, (50, 25)).shape == (3, 25, 50)
    assert resize_image(image[None], (400, 200)).shape == (1, 3, 200, 400)
    flat = torch.full((3, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(resize_image(flat, (5, 3)), torch.full((3, 3, 5), 77, dtype=torch.uint8))
    assert torch.equal(resize_label(label, (400, 200))[::2, ::2], label)
