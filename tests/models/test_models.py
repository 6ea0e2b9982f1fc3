import pytest
import torch

from sfseg.data.normalization import CAFFE_BGR, IMAGENET, Normalization
from sfseg.errors import ConfigError
from sfseg.models import Checkpoint, create_model, list_models, load_checkpoint


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_gives_logits_at_output_stride_8_or_finer(name):
    # Models return logits at their own resolution; the engine upsamples them to the label size.
    model = create_model(name, num_classes=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 64))
    assert out.shape[:2] == (2, 5) and out.shape[2] >= 32 // 8 and out.shape[3] >= 64 // 8


def test_unknown_model_lists_the_registry():
    with pytest.raises(ConfigError, match="deeplab_small"):
        create_model("resnet9000", 3)


def _save_tiny(path, normalization, **provenance):
    model = create_model("deeplab_small", 3, width=8)
    return model, Checkpoint.of(model, ["a", "b", "c"], normalization, provenance=provenance).save(path)


def test_checkpoint_round_trip_keeps_metadata(tmp_path):
    model, path = _save_tiny(tmp_path / "m.pt", CAFFE_BGR, source_val_miou=88.0)
    ck = load_checkpoint(path)
    assert ck.class_names == ["a", "b", "c"] and ck.normalization == CAFFE_BGR
    assert ck.provenance["source_val_miou"] == 88.0 and "code_version" in ck.provenance
    x = torch.randn(1, 3, 16, 16)
    assert torch.allclose(ck.build().eval()(x), model.eval()(x))


def test_class_count_mismatch_is_a_clear_error(tmp_path):
    _, path = _save_tiny(tmp_path / "m.pt", IMAGENET)
    with pytest.raises(ValueError, match=r"checkpoint predicts 3 classes.*data at /some/where has 4"):
        load_checkpoint(path).check_classes(["a", "b", "c", "d"], "/some/where")


def test_foreign_file_is_refused_with_its_keys(tmp_path):
    torch.save({"layer5.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(ValueError, match="layer5.weight"):
        load_checkpoint(tmp_path / "x.pth")


def test_normalization_closed_form():
    img = torch.tensor([10, 20, 30], dtype=torch.uint8).view(3, 1, 1)
    bgr = CAFFE_BGR(img).flatten().tolist()
    assert bgr == pytest.approx([30 - 104.00698793, 20 - 116.66876762, 10 - 122.67891434])
    rgb = Normalization("RGB", 1.0, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))(img).flatten().tolist()
    assert rgb == pytest.approx([(v / 255 - 0.5) / 0.5 for v in (10, 20, 30)])
