import json
from dataclasses import replace

import pytest

from sfseg.cli.main import main
from sfseg.engine.experiments.demo import run_demo
from sfseg.engine.reporting.studies import explain, load_runs, suite_report
from tests.conftest import SMALL_MODEL, TINY, adapt_args, source_args

pytestmark = pytest.mark.slow


def train_tiny_source(root, out, epochs: int) -> int:
    """``sfseg train-source`` with the small model on the tiny tree; returns the exit code."""
    return main(source_args(root, out, f"epochs={epochs}", SMALL_MODEL))


def test_cli_train_adapt_eval(tiny_toycity, tmp_path, capsys):
    src = tmp_path / "src.pt"
    assert train_tiny_source(tiny_toycity, src, epochs=2) == 0
    run = tmp_path / "ld"
    assert (
        main(adapt_args(tiny_toycity, src, run, "ld", "rounds=2", "epochs_per_round=1", "batch_size=4")) == 0
    )
    assert (run / "config.yaml").is_file() and (run / "final.pt").is_file() and (run / "round_1.pt").is_file()
    assert len(list((run / "pseudo_labels" / "round_1").glob("*.png"))) == TINY.target_train
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    pl = [r for r in records if r["phase"] == "pseudo_labels"]
    assert [r["alpha"] for r in pl] == pytest.approx([0.10, 0.15])
    assert {"pl_share", "pred_share", "pl_accuracy_per_class", "thresholds"} <= set(pl[0])
    assert abs(sum(pl[0]["pl_share"].values()) - 1) < 1e-6
    final = [r for r in records if r["phase"] == "final_shares"]
    assert len(final) == 1 and "collapsed" in final[0] and "collapsed" in pl[0]
    assert main(["eval", "--checkpoint", str(run / "final.pt"), "--data", str(tiny_toycity)]) == 0
    assert "minority mIoU" in capsys.readouterr().out


def test_cli_errors_are_readable(tiny_toycity, tmp_path, capsys):
    assert main(["adapt", "--config", "configs/toycity/ld.yaml", "roundz=1"]) == 2
    err = capsys.readouterr().err
    assert "roundz" in err and "valid keys" in err
    out = tmp_path / "run"
    assert (
        main(
            [
                "adapt",
                "--config",
                "toycity/ld",
                f"data.root={tmp_path / 'none'}",
                f"checkpoint={tmp_path / 'x.pt'}",
                f"out={out}",
            ]
        )  # fmt: skip
        == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    assert main(["adapt", "rounds=1"]) == 2
    assert "name a recipe with --config" in capsys.readouterr().err
    assert not out.exists()  # nothing written for a command that cannot run


def test_demo_end_to_end_on_tiny_data(tmp_path, capsys):
    res = run_demo(
        tmp_path / "data",
        tmp_path / "demo",
        overrides=["epochs_per_round=1", "batch_size=4"],
        source_overrides=["epochs=2", SMALL_MODEL],
        spec=replace(TINY, variant="small_objects"),
        jobs=2,  # the demo's two-at-a-time path (child processes)
    )
    assert set(res["results"]) == {"source_only", "ld", "recommended"}
    out = capsys.readouterr().out
    assert "| **mIoU** |" in out and "Demo finished" in out and "minority classes hold" in out
    assert "sfseg demo --methods source_only ld recommended adabn naive_st ldbe" in out  # how to add more
    assert "recommended: its label-free validator (agreement) chose round" in out and "GFLOP/s" in out
    assert "Time per phase" in out and "source model" in out and "trained (the shipped one is stale)" in out
    for f in ("per_class_iou.png", "pl_share_ld.png", "results.md", "results.json"):
        assert (tmp_path / "demo" / f).is_file()
    md = (tmp_path / "demo" / "results.md").read_text()
    assert "| ld |" in md and "minority share at start" in md and "step 0" in md


def test_calibrate_writes_the_report(tmp_path):
    from sfseg.engine.experiments.calibrate import calibrate

    report = tmp_path / "toycity.md"
    report.write_text("# ToyCity\n\nintro kept\n")
    kwargs = dict(
        data_dir=tmp_path / "data", report=report, source_overrides=["epochs=1", SMALL_MODEL], base=TINY
    )
    numbers = calibrate(["materials", "small_objects"], [1], [0], tmp_path / "cal", **kwargs)
    text = report.read_text()
    assert "intro kept" in text and "gap closed by AdaBN" in text and "| traffic light |" in text
    assert "#### small_objects-w1" in text and "at <= 1/2 their true share" in text
    w = numbers["worlds"]["materials-w1"]
    assert len(w["oracle_on_target_val"]) == 1 and len(w["measure"][0]["pred_over_true"]) == 12
    assert (tmp_path / "cal" / "toycity.md").is_file() and (tmp_path / "cal" / "calibration.json").is_file()
    calibrate(["materials", "small_objects"], [1], [0], tmp_path / "cal", **kwargs)  # sources reused
    assert report.read_text().count("<!-- calibration -->") == 2  # replaced, not appended


def test_ldbe_runs_ld_then_be_from_its_checkpoint(tiny_toycity, tmp_path):
    from sfseg.config import load_config
    from sfseg.engine.training.recipe import AdaptConfig
    from sfseg.engine.training.stages import run_adaptation
    from sfseg.models import load_checkpoint

    src = tmp_path / "src.pt"
    train_tiny_source(tiny_toycity, src, epochs=1)
    cfg = load_config(
        AdaptConfig,
        "configs/toycity/ldbe.yaml",
        [
            f"data.root={tiny_toycity}",
            f"checkpoint={src}",
            f"out={tmp_path / 'ldbe'}",
            "rounds=1",
            "epochs_per_round=1",
            "batch_size=4",
        ],
    )
    summary = run_adaptation(cfg, progress=False)
    assert (tmp_path / "ldbe" / "ld" / "final.pt").is_file()  # the LD stage ran first
    prov = load_checkpoint(tmp_path / "ldbe" / "final.pt").provenance
    assert prov["method"] == "ldbe" and prov["parent"]["method"] == "ld"
    assert summary["final"]["miou"] >= 0


def test_bench_reuses_the_first_stage_of_a_two_stage_method(tiny_toycity, tmp_path):
    from sfseg.engine.experiments.bench import run_bench
    from sfseg.models import load_checkpoint

    run_bench(
        tiny_toycity,
        tmp_path,
        methods=["ld", "ldbe"],
        seeds=[0],
        progress=False,
        overrides=["rounds=1", "epochs_per_round=1", "batch_size=4"],
        source_overrides=["epochs=1", SMALL_MODEL],
    )
    assert not (tmp_path / "ldbe" / "seed0" / "ld").exists()  # LD was not run a second time
    prov = load_checkpoint(tmp_path / "ldbe" / "seed0" / "final.pt").provenance
    assert prov["parent"]["method"] == "ld" and prov["parent"]["rounds"] == 1


def test_suite_runs_every_variant_and_writes_the_summary(tmp_path):
    from sfseg.engine.experiments.bench import run_suite
    from sfseg.models import load_checkpoint

    per_world = run_suite(
        ["materials", "fog"],
        [1],
        ["source_only", "ld", "oracle"],
        [0],
        tmp_path / "suite",
        data_dir=tmp_path / "data",
        overrides=["epochs_per_round=1", "batch_size=4"],
        source_overrides=["epochs=1", SMALL_MODEL],
        base=TINY,
        source_dir=tmp_path / "shared",
    )
    assert set(per_world) == {"materials-w1", "fog-w1"}
    # One source model per (world, seed), shared by the variants, where --source-dir says.
    assert (tmp_path / "shared" / "sources-w1" / "source_seed0.pt").is_file()
    assert not (tmp_path / "suite" / "sources-w1").exists()
    text = (tmp_path / "suite" / "suite.md").read_text()
    assert "mean rank" in text and "Winner-takes-all view: fog-w1" in text and "| ld |" in text
    assert (tmp_path / "suite" / "fog-w1" / "results.md").is_file()
    # The oracle: per (variant, world, seed), trained on the target labels, scored on the target val split.
    oracle = per_world["fog-w1"]["oracle"][0]
    assert (tmp_path / "suite" / "fog-w1" / "oracle" / "oracle_seed0.pt").is_file()
    prov = load_checkpoint(oracle["checkpoint"]).provenance
    assert prov["recipe"]["data"]["train_split"] == "train"
    assert prov["target_val_miou"] == oracle["final"]["miou"]
    assert "*oracle mIoU*" in text and "| oracle |" not in text.split("Distance to the limit")[0]
    oracle = per_world["materials-w1"]["oracle"][0]  # the first column of the limit table
    ld, so = (per_world["materials-w1"][m][0]["final"]["miou"] for m in ("ld", "source_only"))
    assert oracle["final"]["miou"] > so  # (deterministic: the tiny world's oracle beats its source model)
    assert f"| ld | {100 * (ld - so) / (oracle['final']['miou'] - so):.0f} % |" in text
    # The tables read back from the folders (scripts/suite_tables.py) find the oracle too.
    read_back = load_runs(tmp_path / "suite")
    again = suite_report(read_back, ["source_only", "ld", "oracle"])
    assert again.split("Distance to the limit")[1] == text.split("Distance to the limit")[1]
    # --explain: the diagnostics of self-training methods; a method without rounds is named, not a crash.
    worlds = ["materials-w1", "fog-w1"]
    assert "| class | true share ld / ld |" in explain(read_back, worlds, "ld", "ld")
    for a, b, named in (
        ("source_only", "ld", "'source_only' has no pseudo-label rounds"),
        ("ld", "tent", "'tent' has no finished runs in materials-w1, fog-w1"),
    ):
        with pytest.raises(ValueError, match=named):
            explain(read_back, worlds, a, b)


def test_the_shipped_demo_source_model_is_current():
    # If the source recipe or the generator changes, the shipped checkpoint is stale: rebuild it with
    # the command in sfseg/engine/demo.py (the demo would otherwise spend minutes training its own).
    import copy

    from sfseg.config import load_config, to_dict
    from sfseg.data.toycity import toycity_signature
    from sfseg.engine.experiments.demo import DEMO_SPEC, SHIPPED_SOURCE
    from sfseg.engine.training.recipe import SourceConfig
    from sfseg.models import load_checkpoint

    prov = load_checkpoint(SHIPPED_SOURCE).provenance
    recipe = load_config(SourceConfig, "configs/toycity/source.yaml", ["seed=0"])
    theirs, mine = copy.deepcopy(prov["recipe"]), to_dict(recipe)
    for r in (theirs, mine):
        r.pop("out")
        r["data"].pop("root")
    assert theirs == mine
    assert prov["data_spec"] == toycity_signature(DEMO_SPEC, "source")
    assert prov["source_val_miou"] >= 85
