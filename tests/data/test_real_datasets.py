"""Real-benchmark loaders on tiny fake trees with the real names and encodings, checked pixel for pixel."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfseg.data.classes import (
    CITYSCAPES19,
    CITYSCAPES_LABELS,
    SYNTHIA16,
    cityscapes_lut,
)
from sfseg.data.fake_trees import write_cityscapes, write_gta5, write_synthia
from sfseg.data.registry import build_dataset, list_datasets
from sfseg.errors import DatasetError

# labelId -> trainId, written out from the facts file (not derived from our table).
CS_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
               26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}  # fmt: skip
# 16-class protocol: Cityscapes labelId -> index, SYNTHIA id -> index.
CS_16 = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 23: 9, 24: 10, 25: 11, 26: 12, 28: 13,
         32: 14, 33: 15}  # fmt: skip
SYN_16 = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 1: 9, 10: 10, 17: 11, 8: 12, 19: 13, 12: 14,
          11: 15}  # fmt: skip


def _expected(raw: np.ndarray, table: dict[int, int]) -> np.ndarray:
    out = np.full(raw.shape, 255, dtype=np.int64)
    for k, v in table.items():
        out[raw == k] = v
    return out


def test_registry_lists_every_benchmark():
    assert {"cityscapes", "gta5", "synthia", "folder", "toycity"} <= set(list_datasets())


def test_label_table_matches_cityscapesscripts():
    from cityscapesscripts.helpers.labels import labels

    official = [(lab.name, lab.id, lab.trainId) for lab in labels if lab.id >= 0]
    assert list(CITYSCAPES_LABELS) == official
    evaluated = sorted((lab.trainId, lab.name, lab.color) for lab in labels if 0 <= lab.trainId < 255)
    assert [(i, n) for i, n, _ in evaluated] == list(enumerate(CITYSCAPES19.names))
    assert [tuple(c) for _, _, c in evaluated] == CITYSCAPES19.colors
    assert CITYSCAPES19.label_ids() == [lab.id for lab in sorted(labels, key=lambda x: x.trainId)
                                        if 0 <= lab.trainId < 255]  # fmt: skip


@pytest.mark.parametrize("protocol, table", [("cityscapes19", CS_TRAIN_ID), ("synthia16", CS_16)])
def test_cityscapes_decodes_labelids(tmp_path, protocol, table):
    written = write_cityscapes(tmp_path, per_split=3)
    ds = build_dataset("cityscapes", tmp_path, "val", protocol=protocol)
    assert len(ds) == 3 and ds.names[0].startswith("frankfurt/frankfurt_000000_000019")
    for item, name in zip(ds, ds.names):
        lab = tmp_path / "gtFine" / "val" / name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
        np.testing.assert_array_equal(item["label"].numpy(), _expected(written[str(lab)], table))
        assert item["image"].shape == (3, 32, 64) and item["image"].dtype == torch.uint8


def test_cityscapes_errors_show_layout_and_missing_labels(tmp_path):
    (tmp_path / "leftImg8bit").mkdir()
    with pytest.raises(DatasetError, match=r"Expected layout:(.|\n)*gtFine_labelIds"):
        build_dataset("cityscapes", tmp_path, "val")
    written = write_cityscapes(tmp_path / "cs", per_split=2)
    Path(next(iter(k for k in written if "/val/" in k))).unlink()
    with pytest.raises(DatasetError, match="1 gtFine label file"):
        build_dataset("cityscapes", tmp_path / "cs", "val")
    assert not build_dataset("cityscapes", tmp_path / "cs", "val", labels=False).has_labels


def test_cityscapes_rejects_values_that_are_not_labelids(tmp_path):
    write_cityscapes(tmp_path, splits=("val",), per_split=1)
    lab = next((tmp_path / "gtFine").rglob("*.png"))
    Image.fromarray(np.full((32, 64), 200, np.uint8), mode="L").save(lab)
    with pytest.raises(DatasetError, match=str(lab)):
        build_dataset("cityscapes", tmp_path, "val")[0]


def test_gta5_palette_labels_size_repair_and_missing(tmp_path):
    written = write_gta5(tmp_path, n=4, mismatched=(2,))
    with pytest.warns(UserWarning, match=r"1 label\(s\) differ in size.*00002.png"):
        ds = build_dataset("gta5", tmp_path, "all")
    for item, name in zip(ds, ds.names):
        raw = written[str(tmp_path / "labels" / name)]
        if name == "00002.png":
            assert item["label"].shape == item["image"].shape[1:]
            raw = np.asarray(Image.fromarray(raw).resize((64, 36), Image.NEAREST))
        np.testing.assert_array_equal(item["label"].numpy(), _expected(raw, CS_TRAIN_ID))
    # A palette PNG converted to L would give luminance, not ids: the ids must round-trip exactly.
    assert (
        np.asarray(Image.open(tmp_path / "labels" / "00001.png"))
        == written[str(tmp_path / "labels/00001.png")]
    ).all()

    (tmp_path / "labels" / "00003.png").unlink()
    with pytest.raises(DatasetError, match=r"1 file\(s\)(.|\n)*labels/00003.png"):
        build_dataset("gta5", tmp_path, "all", check_sizes=False)


def test_gta5_numbering_gaps_are_reported(tmp_path):
    write_gta5(tmp_path, n=5)
    for d in ("images", "labels"):
        (tmp_path / d / "00003.png").unlink()
    with pytest.warns(UserWarning, match="1 id.*00003"):
        ds = build_dataset("gta5", tmp_path, "all")
    assert ds.names == ["00001.png", "00002.png", "00004.png", "00005.png"]


def test_synthia_16bit_labels_decoded_with_opencv(tmp_path):
    written = write_synthia(tmp_path, n=3)
    ds = build_dataset("synthia", tmp_path, "all")
    assert ds.protocol is SYNTHIA16
    for item, name in zip(ds, ds.names):
        raw = written[str(tmp_path / "GT" / "LABELS" / name)]
        np.testing.assert_array_equal(item["label"].numpy(), _expected(raw, SYN_16))
    with pytest.raises(DatasetError, match="16-class"):
        build_dataset("synthia", tmp_path, "all", protocol="cityscapes19")


def test_pillow_is_refused_for_16bit_labels(tmp_path):
    write_synthia(tmp_path / "syn", n=1)
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "labels").mkdir(parents=True)
    Image.new("RGB", (64, 38)).save(tmp_path / "f" / "images" / "a.png")
    (tmp_path / "f" / "labels" / "a.png").write_bytes(
        (tmp_path / "syn" / "GT" / "LABELS" / "0000000.png").read_bytes()
    )
    with pytest.raises(DatasetError, match="16-bit PNG"):
        build_dataset("folder", tmp_path / "f", "all", "cityscapes19")[0]


def test_folder_dataset_with_mapping(tmp_path):
    (tmp_path / "images" / "a").mkdir(parents=True)
    (tmp_path / "labels" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 4)).save(tmp_path / "images" / "a" / "x.jpg")
    raw = np.array([[0, 1, 2, 9] * 2] * 4, np.uint8)
    Image.fromarray(raw, mode="L").save(tmp_path / "labels" / "a" / "x.png")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("0: ignore\n1: road\n2: car\n9: sky\n")
    ds = build_dataset("folder", tmp_path, "all", "cityscapes19", mapping=str(mapping))
    np.testing.assert_array_equal(ds[0]["label"].numpy(), _expected(raw, {1: 0, 2: 13, 9: 10}))
    mapping.write_text("1: road\n2: car\n9: sky\n")
    with pytest.raises(DatasetError, match=r"values \[0\]"):
        build_dataset("folder", tmp_path, "all", "cityscapes19", mapping=str(mapping))[0]
    mapping.write_text("1: roads\n")
    with pytest.raises(DatasetError, match="not a class of cityscapes19"):
        build_dataset("folder", tmp_path, "all", "cityscapes19", mapping=str(mapping))
    # Without a mapping, labels must already be class indices.
    Image.fromarray(np.full((4, 8), 19, np.uint8), mode="L").save(tmp_path / "labels" / "a" / "x.png")
    with pytest.raises(DatasetError, match=r"values \[19\] are not class indices 0..18"):
        build_dataset("folder", tmp_path, "all", "cityscapes19")[0]


def test_cityscapes_lut_sends_unlisted_ids_to_ignore():
    lut = cityscapes_lut(CITYSCAPES19)
    assert all(lut[i] == CS_TRAIN_ID.get(i, 255) for i in range(34))
