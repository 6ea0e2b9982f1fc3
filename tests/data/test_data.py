import numpy as np
import pytest
from PIL import Image

from sfseg.data.toycity.dataset import ToyCitySplit, toycity_split
from sfseg.errors import DatasetError


def test_missing_data_directory_names_the_path_and_the_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as e:
        toycity_split(missing, "target", "train")
    msg = str(e.value)
    assert str(missing) in msg and "<root>/{source,target}_{train,val}.txt" in msg
    assert "sfseg toycity generate" in msg


def test_incomplete_tree_lists_what_is_missing(tmp_path):
    (tmp_path / "source_train.txt").write_text("")
    with pytest.raises(DatasetError, match=r"missing \['toycity.json'.*found \['source_train.txt'\]"):
        toycity_split(tmp_path, "source", "train")


def test_missing_files_are_listed_before_loading(tmp_path):
    (tmp_path / "l.txt").write_text("a.png a_lbl.png\n")
    with pytest.raises(DatasetError, match=r"2 file\(s\)(.|\n)*a.png(.|\n)*a_lbl.png"):
        ToyCitySplit(tmp_path, tmp_path / "l.txt", num_classes=3)


def test_unmapped_label_value_names_the_file(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "i.png")
    lbl = np.zeros((4, 4), np.uint8)
    lbl[0, 0] = 26  # a Cityscapes labelId (car), not a trainId
    lbl[1, 1] = 255
    Image.fromarray(lbl).save(tmp_path / "l.png")
    (tmp_path / "list.txt").write_text("i.png l.png\n")
    with pytest.raises(DatasetError, match=r"l.png.*\[26\]"):
        ToyCitySplit(tmp_path, tmp_path / "list.txt", num_classes=19)


def test_toycity_split_loads(tiny_toycity):
    ds = toycity_split(tiny_toycity, "target", "val")
    item = ds[0]
    assert item["image"].shape == (3, 32, 64) and item["label"].shape == (32, 64)
