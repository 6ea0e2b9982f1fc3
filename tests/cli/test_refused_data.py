"""Refused cleanly: data: images, labels, lists and folders (see :mod:`.adversarial`)."""

import numpy as np
import pytest

from .adversarial import bomb, folder_tree, replace_image, rewrite_list, sixteen_bit
from .probe import refused


def check_with_mapping(env, mapping: str) -> list[str]:
    """``sfseg check-data`` of a user's folder dataset with the mapping file ``mapping`` (its text)."""
    data = ["--dataset", "folder", "--protocol", "cityscapes19", "--data", str(folder_tree(env))]
    return ["check-data", *data, "--split", "all", "--mapping", str(env.file("m.yaml", mapping))]


CASES = [
    ("data-root-missing", lambda e: e.adapt(f"data.root={e.scratch / 'nowhere'}"), "not found"),
    ("data-root-a-file", lambda e: e.adapt(f"data.root={e.file('f.txt', 'x')}"), "f.txt"),
    (
        "list-not-utf8",
        lambda e: (e.toy / "target_val.txt").write_bytes(b"\xff\xfe\x00bad\n") and e.adapt(),
        "not UTF-8",
    ),
    (
        "list-three-fields",
        lambda e: rewrite_list(e, "target_val.txt", lambda ls: [ls[0] + " extra"] + ls[1:]) or e.adapt(),
        "line 1: 3 paths",
    ),
    ("list-empty", lambda e: (e.toy / "target_val.txt").write_text("\n") and e.adapt(), "is empty"),
    (
        "list-absolute-check-data",
        lambda e: (
            rewrite_list(e, "target_train.txt", lambda ls: ["/etc/hostname x.png"] + ls)
            or ["check-data", "--data", str(e.toy)]
        ),
        "leaves the dataset root",
    ),
    (
        "sixteen-bit-image-check-data",
        lambda e: sixteen_bit(e) or ["check-data", "--data", str(e.toy)],
        "16 bits per channel",
    ),
    (
        "sixteen-bit-image-adapt",
        lambda e: sixteen_bit(e) or e.adapt(),
        "00001.png: image has 16 bits per channel",
    ),
    (
        "rgb-label",
        lambda e: (
            replace_image(e, "target/labels/val/00001.png", np.zeros((32, 64, 3), np.uint8)) or e.adapt()
        ),
        "label PNG has mode 'RGB'",
    ),
    (
        "label-unremapped",
        lambda e: (
            replace_image(e, "target/labels/val/00001.png", np.full((32, 64), 26, np.uint8)) or e.adapt()
        ),
        "Un-remapped",
    ),
    (
        "mis-sized-train-image",
        lambda e: (
            [
                replace_image(
                    e,
                    f"target/{k}/train/00002.png",
                    np.zeros((16, 32, 3) if k == "images" else (16, 32), np.uint8),
                )
                for k in ("images", "labels")
            ]
            and e.adapt()
        ),
        "images of different sizes",
    ),
    (
        "unknown-dataset",
        lambda e: ["check-data", "--dataset", "kitti", "--data", str(e.toy)],
        "unknown dataset 'kitti'",
    ),
    (
        "mapping-alias-bomb",
        lambda e: check_with_mapping(e, bomb()),
        "m.yaml",
    ),
    (
        "mapping-not-a-mapping",
        lambda e: check_with_mapping(e, "- road\n"),
        "expected a mapping",
    ),
]


@pytest.mark.parametrize("build, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_data_refused_cleanly(env, capsys, build, expect):
    refused(capsys, env, build(env), expect)
