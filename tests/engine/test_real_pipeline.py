"""The GTA5 -> Cityscapes recipe end to end on CPU: a fake Cityscapes tree, a community-format R-101 file."""

import json

import pytest
import torch
from PIL import Image

from sfseg.config import load_config
from sfseg.data.fake_trees import write_cityscapes
from sfseg.engine.training.recipe import AdaptConfig, recipe_path
from sfseg.engine.training.stages import run_adaptation
from sfseg.models import load_checkpoint
from sfseg.models.deeplab_v2 import DeepLabV2


@pytest.mark.slow
@pytest.mark.parametrize("amp", [False, True])
def test_gta5_ld_recipe_smoke(tmp_path, amp):
    write_cityscapes(tmp_path / "cs", per_split=3, size=(128, 64))
    torch.manual_seed(0)
    sd = DeepLabV2(19).state_dict()
    # An LDBE-family source file: DataParallel prefix, an unused layer6, no num_batches_tracked.
    foreign = {f"module.{k}": v for k, v in sd.items() if "num_batches" not in k}
    foreign.update({f"module.layer6.{k[7:]}": v.clone() for k, v in sd.items() if k.startswith("layer5.")})
    torch.save({"state_dict": foreign}, tmp_path / "GTA5_source.pth")

    cfg = load_config(
        AdaptConfig,
        recipe_path("gta5_to_cityscapes/ld"),
        [
            f"data.root={tmp_path / 'cs'}",
            f"checkpoint={tmp_path / 'GTA5_source.pth'}",
            f"out={tmp_path / 'run'}",
            "input_size=[96, 48]",  # the recipe's 1024x512 / 600x600, scaled to the fake images
            "augment.short_side=48",
            "augment.crop=40",
            "num_workers=0",
            "eval_batch_size=3",
            f"amp={str(amp).lower()}",
        ],
    )
    assert cfg.schedule.batch_size == 3 and cfg.schedule.rounds == 2 and cfg.data.augment.kind == "scale_crop"
    summary = run_adaptation(cfg, progress=False)
    assert len(summary["val_miou_per_round"]) == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in records if r["phase"] == "pseudo_labels"]
    assert [r["alpha"] for r in rounds] == [0.10, pytest.approx(0.15)]
    assert all(r["phase"] != "train" or r["steps"] == 1 for r in records)
    pl = sorted((tmp_path / "run" / "pseudo_labels" / "round_0").glob("*.png"))
    assert len(pl) == 3 and all(Image.open(p).size == (128, 64) for p in pl)  # full label resolution
    final = load_checkpoint(tmp_path / "run" / "final.pt")
    assert final.arch == "deeplabv2_r101" and final.provenance["parent"]["family"] == "ldbe"
    assert final.normalization.order == "BGR" and final.normalization.std is None


@pytest.mark.slow
def test_train_source_on_gta5_from_the_caffe_init(tmp_path, capsys):
    from sfseg.cli.main import main
    from sfseg.data.fake_trees import write_gta5
    from sfseg.data.normalization import CAFFE_BGR

    write_gta5(tmp_path / "gta5", n=4, size=(96, 54), mismatched=(3,))
    torch.manual_seed(0)
    sd = DeepLabV2(21).state_dict()  # the Caffe init: 'Scale.' keys, a 21-class VOC head, no counters
    torch.save({f"Scale.{k}": v for k, v in sd.items() if "num_batches" not in k}, tmp_path / "init.pth")
    args = [
        "train-source",
        "--config",
        str(recipe_path("gta5_to_cityscapes/source")),
        f"data.root={tmp_path / 'gta5'}",
        f"init={tmp_path / 'init.pth'}",
        f"out={tmp_path / 'src.pt'}",
        "augment.size=[80, 45]",
        "augment.window=[64, 32]",
        "epochs=1",
        "num_workers=0",
    ]
    with pytest.warns(UserWarning, match="differ in size"):
        assert main(args) == 0
    assert "no val split" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "src.pt")
    assert ckpt.arch == "deeplabv2_r101" and ckpt.normalization == CAFFE_BGR and ckpt.num_classes == 19
    assert ckpt.provenance["init"]["family"] == "deeplab_caffe_init"
    # The backbone moved away from the init (it trained), the BN affine parameters did not (frozen).
    assert not torch.equal(ckpt.state_dict["layer4.2.conv3.weight"], sd["layer4.2.conv3.weight"])
    assert torch.equal(ckpt.state_dict["layer4.2.bn3.weight"], sd["layer4.2.bn3.weight"])
