"""The ``sfseg`` argument parser: one function per group of commands. Help lists of datasets, protocols,
checkpoint families, architectures, validators and ToyCity variants come from the registries."""

from __future__ import annotations

import argparse

from sfseg.cli import commands as C
from sfseg.cli.args import BATCH, JOBS, SEED, SIDE, WORKERS, int_in, names
from sfseg.engine.experiments.demo import DEMO_METHODS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sfseg", description="Source-free domain adaptation for segmentation.")
    sub = p.add_subparsers(dest="command", required=True)
    _toycity(sub)
    _training(sub)
    _inference(sub)
    _runs(sub)
    _data_and_models(sub)
    _benchmarks(sub)
    return p


def _overrides(q: argparse.ArgumentParser, example: str) -> None:
    q.add_argument("overrides", nargs="*", help=f"key=value overrides, e.g. {example}")


def _set(q: argparse.ArgumentParser, what: str) -> None:
    q.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help=what)


def _toycity(sub) -> None:
    from sfseg.data.toycity import VARIANTS

    tc = sub.add_parser("toycity", help="the embedded ToyCity benchmark").add_subparsers(
        dest="action", required=True
    )
    g = tc.add_parser("generate", help="write a ToyCity world to disk")
    g.add_argument("--out", default="data/toycity")
    g.add_argument(
        "--variant", default="materials", choices=sorted(VARIANTS), help="the synthetic-to-real factor"
    )
    g.add_argument("--seed", type=SEED, default=0, help="the world (generator seed)")
    g.add_argument("--small", action="store_true", help="a tiny copy (24/8 images per split) for smoke tests")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--force", action="store_true", help="write even if the same spec is already there")
    g.set_defaults(func=C.cmd_toycity_generate)
    c = tc.add_parser("calibrate", help="measure each variant's source/oracle/source-only/AdaBN and bias")
    c.add_argument("--variants", nargs="+", default=sorted(VARIANTS), choices=sorted(VARIANTS))
    c.add_argument("--worlds", type=SEED, nargs="+", default=[0], help="generator seeds of the worlds")
    c.add_argument("--seeds", type=SEED, nargs="+", default=[0], help="training seeds")
    c.add_argument("--data-dir", default="data", help="worlds live in <data-dir>/toycity-<variant>-w<world>")
    c.add_argument("--out", default="runs/suite", help="run directory (shared with bench: sources reused)")
    c.add_argument("--jobs", type=JOBS, default=1, help="trainings at a time (processes)")
    c.add_argument("--report", default="", help="also update this markdown file (default: <out>/toycity.md)")
    _set(c, "source recipe overrides")
    c.set_defaults(func=C.cmd_toycity_calibrate)


def _run_command(sub, name: str, what: str, example: str, resume: str, overwrite: str, overrides: str):
    """A command that runs a recipe in a run directory: --config, --resume, --overwrite and overrides."""
    p = sub.add_parser(name, help=what)
    p.add_argument("--config", help=f"recipe: a shipped name ({example}) or a YAML file")
    p.add_argument("--resume", metavar="RUN_DIR", help=resume)
    p.add_argument("--overwrite", action="store_true", help=overwrite)
    _overrides(p, overrides)
    return p


def _training(sub) -> None:
    ts = _run_command(sub, "train-source", "stage 0: supervised source training", "toycity/source",
                      "continue the run in RUN_DIR (out without its suffix)",
                      "replace an earlier run of the same out", "epochs=10 optim.lr=0.02")  # fmt: skip
    ts.set_defaults(func=C.cmd_train_source)
    ad = _run_command(sub, "adapt", "source-free adaptation of a checkpoint", "toycity/ld; `sfseg recipes`",
                      "continue the run in RUN_DIR from its last saved state",
                      "clear an earlier run in `out` first",
                      "checkpoint=model.pt data.dataset=folder data.root=my_images rounds=3")  # fmt: skip
    ad.set_defaults(func=C.cmd_adapt)
    r = sub.add_parser("recipes", help="list the shipped recipes (use one as --config <name>)")
    r.add_argument("under", nargs="?", help="only those under this folder (toycity, gta5_to_cityscapes, ...)")
    r.set_defaults(func=C.cmd_recipes)


def _dataset_options(q: argparse.ArgumentParser, split_help: str) -> None:
    q.add_argument("--dataset", default="toycity", help=f"one of: {names('datasets')}")
    q.add_argument("--data", default="data/toycity", help="dataset root (folder: a folder of images)")
    q.add_argument(
        "--protocol",
        default="",
        help=f"class protocol ({names('protocols')}; default: the "
        "dataset's own, for a folder the checkpoint's classes)",
    )
    q.add_argument("--mapping", default="", help="folder dataset: raw id -> class mapping file")
    q.add_argument(
        "--split", **({} if split_help.startswith("split(s)") else {"default": "val"}), help=split_help
    )


def _inference(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a checkpoint (mIoU, per-class IoU, majority/minority)")
    pr = sub.add_parser("predict", help="write predictions (label PNGs; overlays for a folder of images)")
    for q in (e, pr):
        q.add_argument("--checkpoint", default="", help="sfseg checkpoint or a community file (imported)")
        q.add_argument(
            "--family", default="", help=f"checkpoint family when keys are ambiguous: {names('families')}"
        )
        _dataset_options(
            q, "split (ToyCity: train, val, source_train, source_val; folder: a subfolder, or all)"
        )
        q.add_argument(
            "--input-size",
            type=SIDE,
            nargs=2,
            metavar=("W", "H"),
            help="resize inputs (Cityscapes: 1024 512)",
        )
        q.add_argument(
            "--resize", choices=["torch", "pil"], help="how inputs are resized (default: as scored)"
        )
        q.add_argument("--align-corners", choices=["on", "off"], help="logit upsampling (default: as scored)")
        q.add_argument(
            "--upsample", choices=["direct", "two_step"], help="(default: as the model was scored)"
        )
        q.add_argument("--channels-last", choices=["on", "off"], help="memory layout (default: as scored)")
        q.add_argument("--batch-size", type=BATCH, default=4)
        q.add_argument("--workers", type=WORKERS, default=0, help="data-loading processes")
    e.add_argument("--json", help="also write the metrics to this JSON file")
    e.add_argument(
        "--predictions", help="score the prediction PNGs in this folder (from sfseg predict) instead"
    )
    e.add_argument(
        "--format", default="cityscapes", choices=["cityscapes", "trainid"], help="of --predictions"
    )
    e.set_defaults(func=C.cmd_eval)
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument(
        "--format",
        choices=["cityscapes", "trainid"],
        help="labelIds, or trainIds as a palette PNG (default: trainid for a folder, else cityscapes)",
    )
    pr.add_argument(
        "--overlays",
        action=argparse.BooleanOptionalAction,
        help="also write <name>_overlay.jpg, the image blended with the prediction and a legend "
        "(default: on for a folder of images)",
    )
    pr.set_defaults(func=C.cmd_predict)
    ex = sub.add_parser("export", help="export a checkpoint for deployment (ONNX, with a JSON sidecar)")
    ex.add_argument("checkpoint", help="sfseg checkpoint or a community file (imported)")
    ex.add_argument("--out", required=True, help="the model file (its sidecar: <out>.json)")
    ex.add_argument("--format", default="onnx", choices=["onnx"])
    ex.add_argument("--opset", type=int_in(17, 23), default=18, help="ONNX opset")
    ex.add_argument(
        "--family", default="", help=f"checkpoint family when keys are ambiguous: {names('families')}"
    )
    ex.set_defaults(func=C.cmd_export)


def _runs(sub) -> None:
    se = sub.add_parser("select", help="score every checkpoint of runs with a label-free validator")
    se.add_argument("runs", nargs="+", help="run directories (of sfseg adapt or sfseg bench)")
    se.add_argument("--validator", default="bnm", help=f"one of: {names('validators')} (default bnm; "
                    "docs/RESULTS.md compares them)")  # fmt: skip
    se.add_argument(
        "--all", action="store_true", help="compute every validator (the table ranks by --validator)"
    )
    se.add_argument(
        "--max-images", type=int_in(0, 10**7), default=100, help="target images per checkpoint (0 = all)"
    )
    se.add_argument("--json", help="write the scores (and the study) to this JSON file")
    se.add_argument(
        "--study", action="store_true", help="correlate the validators with the logged target-val mIoU"
    )
    se.set_defaults(func=C.cmd_select)
    rp = sub.add_parser("report", help="one self-contained HTML page comparing runs")
    rp.add_argument("runs", nargs="+", help="run directories")
    rp.add_argument("--out", default="report.html")
    rp.add_argument("--title", default="sfseg runs")
    rp.add_argument("--limit", nargs=2, metavar=("SOURCE_ONLY_RUN", "ORACLE_RUN"),
                    help="add the share of the source-only -> oracle gap each run closes and the classes it "
                    "lost (runs of the same world and seed)")  # fmt: skip
    rp.set_defaults(func=C.cmd_report)


def _data_and_models(sub) -> None:
    cd = sub.add_parser("check-data", help="read every file of a dataset's splits and list every problem")
    _dataset_options(cd, "split(s) to check (default: all of the dataset's)")
    cd.set_defaults(func=C.cmd_check_data)
    im = sub.add_parser("import-checkpoint", help="convert another project's checkpoint to sfseg's format")
    im.add_argument("input")
    im.add_argument("output")
    im.add_argument("--family", default="", help=f"family when keys are ambiguous: {names('families')}")
    im.add_argument(
        "--classes", default="", help=f"class protocol ({names('protocols')}; for files without a head)"
    )
    im.set_defaults(func=C.cmd_import_checkpoint)


def _benchmarks(sub) -> None:
    from sfseg.data.toycity import VARIANTS

    b = sub.add_parser("bench", help="methods x seeds on ToyCity -> markdown tables and figures")
    b.add_argument("benchmark", choices=["toycity"])
    b.add_argument("--data", default="data/toycity", help="one world (without --variants)")
    b.add_argument("--out", default="runs/bench")
    b.add_argument(
        "--configs",
        default=None,
        help="directory of <method>.yaml recipes (default: the shipped ToyCity ones)",
    )
    b.add_argument(
        "--methods",
        nargs="+",
        default=["source_only", "adabn", "ld", "ldbe", "recommended"],
        help="recipes of --configs, and 'oracle' (the network trained on the target labels)",
    )
    b.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2])
    b.add_argument(
        "--source-dir",
        help="where source models are cached (default: --out; with --variants, <dir>/sources-w<world>)",
    )
    b.add_argument(
        "--resume", action="store_true", help="reuse finished runs of the same recipe, resume unfinished ones"
    )
    b.add_argument(
        "--jobs", type=JOBS, default=None,
        help="trainings at a time (local: processes, default 1; ray: tasks in flight, default all ready)",
    )  # fmt: skip
    b.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: a process pool on this machine; ray: one Ray task per run (pip install "
                   "'sfseg[ray]'; data and --out on storage every node sees)")  # fmt: skip
    b.add_argument("--address", default="", help="the Ray cluster (host:port, or auto); default: a local one")
    b.add_argument("--cpus-per-job", type=JOBS, default=1, help="each Ray task's CPUs (and torch threads)")
    b.add_argument(
        "--gpus-per-job", type=float, default=0.0, help="each Ray task's GPUs (e.g. 1, or 0.5 to share)"
    )
    b.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="run the ToyCity suite's variants")
    b.add_argument("--worlds", type=SEED, nargs="+", default=[0], help="suite worlds (generator seeds)")
    b.add_argument(
        "--data-dir", default="data", help="suite worlds live in <data-dir>/toycity-<variant>-w<world>"
    )
    _set(b, "overrides applied to every method (e.g. --set rounds=1 batch_size=4)")
    b.add_argument("--source-set", dest="source_overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="overrides of the source and oracle recipes (--source-set epochs=10)")  # fmt: skip
    b.set_defaults(func=C.cmd_bench)
    d = sub.add_parser(
        "demo", help="generate ToyCity, compare methods from the shipped source model (CPU, minutes)"
    )
    d.add_argument("--data", default=None, help="default: data/toycity-small_objects-w0")
    d.add_argument("--jobs", type=JOBS, default=None, help="runs at a time (default: 2 on a CPU, 1 on a GPU)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument(
        "--methods", nargs="+", default=None, help=f"ToyCity recipes to compare (default: {DEMO_METHODS})"
    )
    d.set_defaults(func=C.cmd_demo)
