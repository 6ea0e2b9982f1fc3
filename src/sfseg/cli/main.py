"""The ``sfseg`` command line.

sfseg toycity generate --out data/toycity
sfseg toycity calibrate --data data/toycity
sfseg train-source --config configs/toycity/source.yaml [key=value ...]
sfseg adapt --config configs/toycity/ld.yaml [key=value ...]
sfseg eval --checkpoint runs/adapt/final.pt --data data/toycity
sfseg eval --checkpoint ld.pt --dataset cityscapes --data /data/cityscapes --input-size 1024 512
sfseg predict --checkpoint ld.pt --dataset cityscapes --data /data/cityscapes --out preds --format cityscapes
sfseg import-checkpoint GTA5_source.pth gta5_source.pt [--family crst] [--classes cityscapes19]
sfseg bench toycity --methods source_only adabn ld --seeds 0 1 2
sfseg demo
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sfseg.config import MAX_BATCH, MAX_SEED, MAX_SIDE, MAX_WORKERS, ConfigError, load_config
from sfseg.engine.runtime.rundir import RunDir
from sfseg.errors import SfsegError
from sfseg.fileio import Place, atomic_write_text, check_outputs, check_writable_dir, check_writable_file


def int_in(low: int, high: int):
    """An argparse type: an integer in ``[low, high]`` (argparse reports anything else as a usage error,
    exit status 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


SEED = int_in(0, MAX_SEED)
JOBS = int_in(1, 64)
SIDE = int_in(1, MAX_SIDE)
BATCH = int_in(1, MAX_BATCH)
WORKERS = int_in(0, MAX_WORKERS)


def _threads() -> None:
    """Intra-op threads: the user's ``OMP_NUM_THREADS`` when set (PyTorch reads it), else the available
    cores shared among the processes ``torchrun`` starts on this machine (PyTorch's own default counts
    every core of the machine, and oversubscribes shared machines)."""
    import os

    from sfseg.engine.runtime.distributed import local_world_size

    local = local_world_size()  # validates the torchrun variables first, with one line naming a bad one
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise ConfigError(
                f"environment variable OMP_NUM_THREADS is {explicit!r}; it must be an integer >= 1"
            )
        torch.set_num_threads(int(explicit))
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))


def cmd_toycity_generate(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from sfseg.data.toycity import ToyCitySpec, generate, is_generated

    check_writable_dir(Path(args.out), "--out")

    spec = ToyCitySpec(seed=args.seed, variant=args.variant)
    if args.small:
        spec = replace(spec, source_train=24, source_val=8, target_train=24, target_val=8)
    if is_generated(args.out, spec) and not args.force:
        print(f"ToyCity with this spec is already in {args.out} (use --force to write it again)")
        return
    meta = generate(args.out, spec, progress=not args.quiet)
    print(f"ToyCity written to {Path(args.out)} ({meta.name})")


def cmd_toycity_calibrate(args: argparse.Namespace) -> None:
    from sfseg.engine.experiments.calibrate import calibrate

    calibrate(
        args.variants,
        args.worlds,
        args.seeds,
        args.out,
        data_dir=args.data_dir,
        report=args.report,
        source_overrides=args.overrides,
        jobs=args.jobs,
    )


def cmd_train_source(args: argparse.Namespace) -> None:
    from sfseg.engine.training.recipe import SourceConfig
    from sfseg.engine.training.source import source_run_dir, train_source

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if args.resume:
        run = RunDir(args.resume)
        if not run.check(run.config).is_file():
            raise ConfigError(f"{args.resume} holds no source run to resume (no {run.CONFIG})")
        cfg = load_config(SourceConfig, args.config or run.config, args.overrides)
        if source_run_dir(cfg.out).path.resolve() != run.path.resolve():
            raise ConfigError(
                f"{args.resume} is not the run directory of out={cfg.out}; give that run's directory"
            )
        mode = "resume"
    else:
        cfg = load_config(SourceConfig, args.config, args.overrides)
        mode = "overwrite" if args.overwrite else "new"
    summary = train_source(cfg, mode=mode)
    score = (
        "no val split"
        if summary["val_miou"] is None
        else f"{summary['val_split']} mIoU {summary['val_miou']:.1f}"
    )
    print(f"{cfg.data.dataset} {score}; checkpoint: {cfg.out}")


def cmd_adapt(args: argparse.Namespace) -> None:
    from sfseg.engine.reporting.report import per_class_table
    from sfseg.engine.training.recipe import AdaptConfig
    from sfseg.engine.training.stages import run_adaptation

    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    if args.resume:
        from sfseg.errors import ResumeError

        run = RunDir(args.resume)
        saved = run.check(run.config)
        if not args.config and not saved.is_file():
            if run.state.is_file():
                raise ResumeError(
                    f"{saved} is missing, but the run's state is there: restore config.yaml, or name the "
                    f"run's recipe (sfseg adapt --resume {args.resume} --config <its recipe>); the state "
                    "refuses any other"
                )
            raise ResumeError(f"{args.resume} holds no run to resume (no {saved.name})")
        overrides = [*args.overrides, f"out={args.resume}"]
        cfg = load_config(AdaptConfig, args.config or saved, overrides)
        mode = "resume"
    else:
        cfg = load_config(AdaptConfig, args.config, args.overrides)
        mode = "overwrite" if args.overwrite else "new"
    summary = run_adaptation(cfg, mode=mode)
    if summary["final"] is not None:
        print(per_class_table({cfg.name: summary["final"]}))
    print(f"run directory: {cfg.out}")


def _data(args: argparse.Namespace, labels: bool):
    """The split named on the command line and its protocol."""
    from sfseg.data.registry import build_dataset, dataset_protocol

    protocol = dataset_protocol(args.dataset, args.protocol)
    split = args.split
    if args.mapping and args.dataset != "folder":
        raise ConfigError(f"--mapping applies to --dataset folder only, not {args.dataset!r}")
    options = {"mapping": args.mapping} if args.mapping else {}
    if args.dataset == "toycity":
        split = split if args.domain == "target" else f"source_{split}"
    data = build_dataset(args.dataset, args.data, split, protocol.name, labels, progress=True, **options)
    return data, protocol


def _data_and_checkpoint(args: argparse.Namespace, labels: bool):
    """The checkpoint, the split named on the command line, and its protocol; checked against each other."""
    from sfseg.data.registry import dataset_protocol
    from sfseg.models import load_checkpoint

    if not args.checkpoint:
        raise ConfigError("--checkpoint is required (or --predictions DIR to score prediction files)")
    protocol = dataset_protocol(args.dataset, args.protocol)
    ckpt = load_checkpoint(args.checkpoint, family=args.family, classes=protocol.name)
    ckpt.check_classes(protocol.names, args.data)
    data, protocol = _data(args, labels)
    return ckpt, data, protocol


def _inference(args: argparse.Namespace, ckpt):
    """The inference the checkpoint was scored with (stored in it), with the command line's overrides."""
    from dataclasses import replace

    from sfseg.engine.evaluation.inference import Inference

    settings = ckpt.inference
    if args.input_size:
        settings = replace(settings, input_size=tuple(args.input_size))
    for key in ("resize", "upsample"):
        if getattr(args, key):
            settings = replace(settings, **{key: getattr(args, key)})
    for key in ("align_corners", "channels_last"):
        if getattr(args, key):
            settings = replace(settings, **{key: getattr(args, key) == "on"})
    return Inference.from_settings(ckpt.build(), ckpt.normalization, settings)


def cmd_eval(args: argparse.Namespace) -> None:
    from sfseg.engine.evaluation.evaluate import evaluate
    from sfseg.engine.reporting.report import per_class_table

    if args.json:
        check_writable_file(Path(args.json), "--json")
        check_outputs(
            [Place("--json", Path(args.json))],
            [
                Place("--checkpoint", args.checkpoint),
                Place("--data", args.data, tree=True),
                Place("--predictions", args.predictions, tree=True),
            ],
        )
    if args.predictions:
        from sfseg.engine.evaluation.evaluate import evaluate_files

        data, protocol = _data(args, labels=True)
        res = evaluate_files(data, args.predictions, protocol, args.format, args.workers, progress=True)
        name, inference = str(args.predictions), {}
    else:
        ckpt, data, protocol = _data_and_checkpoint(args, labels=True)
        inf = _inference(args, ckpt)
        inference = inf.settings.to_dict()
        res = evaluate(
            inf,
            data,
            protocol,
            batch_size=args.batch_size,
            workers=args.workers,
            progress=True,
        )
        name = Path(args.checkpoint).name
    res["protocol"] = {"classes": protocol.name, "scales": [1.0], "flip": False}
    if inference:
        res["inference"] = inference
    print(per_class_table({name: res}, protocol))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(res, indent=2))


def cmd_predict(args: argparse.Namespace) -> None:
    from sfseg.engine.evaluation.predict import predict

    check_outputs(
        [Place("--out", Path(args.out))],
        [Place("--checkpoint", args.checkpoint), Place("--data", args.data, tree=True)],
    )
    ckpt, data, protocol = _data_and_checkpoint(args, labels=False)
    check_writable_dir(Path(args.out), "--out")
    paths = predict(
        _inference(args, ckpt), data, protocol, args.out, fmt=args.format, batch_size=args.batch_size
    )
    print(f"{len(paths)} prediction(s) ({args.format}) written to {args.out}")


def cmd_check_data(args: argparse.Namespace) -> None:
    from sfseg.data.check import DEFAULT_SPLITS, check_split
    from sfseg.data.registry import dataset_protocol

    dataset_protocol(args.dataset, args.protocol)  # an unknown dataset or protocol, named first
    splits = args.split or DEFAULT_SPLITS.get(args.dataset)
    if not splits:
        raise ConfigError(f"say which split(s) of dataset {args.dataset!r} to check: --split NAME ...")
    options = {"mapping": args.mapping} if args.mapping else {}
    bad = 0
    for split in splits:
        n, problems = check_split(args.dataset, args.data, split, args.protocol, **options)
        bad += len(problems)
        print(f"{args.dataset} {split}: {n} sample(s), {len(problems) or 'no'} problem(s)")
        for p in problems:
            print("  " + p.replace("\n", "\n  "))
    if bad:
        from sfseg.errors import DatasetError

        raise DatasetError(f"{bad} problem(s) found in {args.data}; see the list above")


def cmd_select(args: argparse.Namespace) -> None:
    from sfseg.engine.evaluation.validators import check_validator
    from sfseg.engine.experiments.selection import ranked_table, score_run, study_table, validator_study
    from sfseg.fileio import check_writable_file
    from sfseg.registry import VALIDATORS

    check_validator(args.validator)
    names = VALIDATORS.names() if args.all else [args.validator]
    if args.json:
        check_writable_file(Path(args.json), "--json")
    runs = [Path(r) for r in args.runs]
    for r in runs:
        if not (r / "config.yaml").is_file():
            raise ConfigError(f"{r} is not a run directory (no config.yaml)")
    if args.json:
        check_outputs(
            [Place("--json", Path(args.json))],
            [Place(f"run {r}", p) for r in runs for p in RunDir(r).input_files()],
        )
    records = []
    for r in runs:
        records += score_run(r, names, max_images=args.max_images, progress=True)
    print(ranked_table(records, args.validator))
    best = max(records, key=lambda x: x["scores"][args.validator])
    print(f"\n{args.validator} prefers {best['checkpoint']} ({best['run']}, round {best['round']})")
    result = {"validator": args.validator, "checkpoints": records}
    if args.study:
        study = validator_study(records, names)
        result["study"] = study
        print("\n" + study_table(study))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=1))


def cmd_report(args: argparse.Namespace) -> None:
    from sfseg.engine.reporting.html_report import write_report
    from sfseg.fileio import check_writable_file

    check_writable_file(Path(args.out), "--out")
    path = write_report([Path(r) for r in args.runs], Path(args.out), title=args.title)
    print(f"report written: {path}")


def cmd_import_checkpoint(args: argparse.Namespace) -> None:
    from sfseg.data.classes import get_protocol
    from sfseg.fileio import check_writable_file
    from sfseg.models.foreign import import_checkpoint

    check_writable_file(Path(args.output), "output")
    check_outputs([Place("output", Path(args.output))], [Place("input", Path(args.input))])
    ckpt = import_checkpoint(args.input, args.family, get_protocol(args.classes) if args.classes else None)
    ckpt.build()  # the weights load into the architecture (strictly) before anything is written
    ckpt.save(args.output)
    prov = ckpt.provenance
    print(f"family: {prov['family']}; predicting head: {prov['predicting_head']}")
    print(f"classes: {ckpt.num_classes} {ckpt.class_names}")
    print(f"normalization: {ckpt.normalization}")
    print(f"filled num_batches_tracked: {prov['filled_num_batches_tracked']}")
    print(f"unused keys ({len(prov['unused_keys'])}): {', '.join(prov['unused_keys']) or '-'}")
    print(f"written: {args.output}")


def cmd_bench(args: argparse.Namespace) -> None:
    from sfseg.engine.experiments.bench import run_bench, run_suite

    if args.variants:
        run_suite(
            args.variants,
            args.worlds,
            args.methods,
            args.seeds,
            args.out,
            data_dir=args.data_dir,
            recipes=args.configs,
            overrides=args.overrides,
            resume=args.resume,
            jobs=args.jobs,
            source_dir=args.source_dir,
        )
        return
    run_bench(
        args.data,
        args.out,
        methods=args.methods,
        seeds=args.seeds,
        recipes=args.configs,
        source_dir=args.source_dir,
        overrides=args.overrides,
        resume=args.resume,
        jobs=args.jobs,
    )


def cmd_demo(args: argparse.Namespace) -> None:
    from sfseg.engine.experiments.demo import run_demo

    run_demo(data_root=args.data, out=args.out, seed=args.seed, jobs=args.jobs, methods=args.methods)


def build_parser() -> argparse.ArgumentParser:
    from sfseg.data.toycity import VARIANTS

    p = argparse.ArgumentParser(prog="sfseg", description="Source-free domain adaptation for segmentation.")
    sub = p.add_subparsers(dest="command", required=True)

    tc = sub.add_parser("toycity", help="the embedded ToyCity benchmark").add_subparsers(
        dest="action", required=True
    )
    g = tc.add_parser("generate", help="write the ToyCity benchmark to disk")
    g.add_argument("--out", default="data/toycity")
    g.add_argument(
        "--variant", default="materials", choices=sorted(VARIANTS), help="the synthetic-to-real factor"
    )
    g.add_argument("--seed", type=SEED, default=0, help="the world: 0 = test world, 1 = development world")
    g.add_argument("--small", action="store_true", help="a tiny copy (24/8 images per split) for smoke tests")
    g.add_argument("--quiet", action="store_true")
    g.add_argument("--force", action="store_true", help="write even if the same spec is already there")
    g.set_defaults(func=cmd_toycity_generate)
    c = tc.add_parser("calibrate", help="measure each variant's source/oracle/source-only/AdaBN and bias")
    c.add_argument("--variants", nargs="+", default=sorted(VARIANTS), choices=sorted(VARIANTS))
    c.add_argument(
        "--worlds", type=SEED, nargs="+", default=[0], help="generator seeds (0 test, 1 development)"
    )
    c.add_argument("--seeds", type=SEED, nargs="+", default=[0], help="training seeds")
    c.add_argument(
        "--data-dir", default="data", help="worlds are generated into <data-dir>/toycity-<variant>-w<world>"
    )
    c.add_argument("--out", default="runs/suite", help="run directory (shared with bench: sources reused)")
    c.add_argument("--jobs", type=JOBS, default=1, help="trainings at a time (processes)")
    c.add_argument(
        "--report", default="", help="also update this markdown file (default: <out>/toycity.md only)"
    )
    c.add_argument(
        "--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE", help="source recipe overrides"
    )
    c.set_defaults(func=cmd_toycity_calibrate)

    ts = sub.add_parser("train-source", help="stage 0: supervised source training")
    ts.add_argument("--config", help="YAML recipe (see configs/toycity/source.yaml)")
    ts.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the source run in RUN_DIR (out without its suffix)"
    )
    ts.add_argument("--overwrite", action="store_true", help="replace an earlier run of the same out")
    ts.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=10 optim.lr=0.02")
    ts.set_defaults(func=cmd_train_source)
    ad = sub.add_parser("adapt", help="source-free adaptation of a checkpoint")
    ad.add_argument("--config", help="YAML recipe (see configs/toycity/)")
    ad.add_argument(
        "--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last saved state"
    )
    ad.add_argument("--overwrite", action="store_true", help="clear an earlier run in `out` first")
    ad.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rounds=3 optim.lr=1e-3")
    ad.set_defaults(func=cmd_adapt)

    e = sub.add_parser("eval", help="evaluate a checkpoint (mIoU, per-class IoU, majority/minority)")
    pr = sub.add_parser("predict", help="write prediction PNGs (Cityscapes labelIds or trainIds)")
    for q in (e, pr):
        q.add_argument("--checkpoint", default="", help="sfseg checkpoint or community DeepLab-v2 file")
        q.add_argument("--family", default="", help="checkpoint family when its keys are ambiguous")
        q.add_argument("--dataset", default="toycity", help="toycity, cityscapes, gta5, synthia, folder")
        q.add_argument("--data", default="data/toycity", help="dataset root")
        q.add_argument("--split", default="val", help="split (ToyCity: train/val of --domain)")
        q.add_argument("--domain", default="target", choices=["source", "target"], help="ToyCity only")
        q.add_argument("--protocol", default="", help="class protocol (default: the dataset's own)")
        q.add_argument("--mapping", default="", help="folder dataset: raw id -> class mapping file")
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
        "--predictions", help="score the prediction PNGs in this folder (written by sfseg predict) instead"
    )
    e.add_argument(
        "--format", default="cityscapes", choices=["cityscapes", "trainid"], help="of --predictions"
    )
    e.set_defaults(func=cmd_eval)
    pr.add_argument("--out", required=True, help="output directory")
    pr.add_argument("--format", default="cityscapes", choices=["cityscapes", "trainid"])
    pr.set_defaults(func=cmd_predict)

    se = sub.add_parser("select", help="score every checkpoint of runs with a label-free validator")
    se.add_argument("runs", nargs="+", help="run directories (of sfseg adapt or sfseg bench)")
    se.add_argument(
        "--validator",
        default="bnm",
        help="bnm (default: it lost the least mIoU on the development worlds; docs/RESULTS.md), "
        "info_max, entropy, snd, agreement, share_stability",
    )
    se.add_argument(
        "--all", action="store_true", help="compute every validator (the table ranks by --validator)"
    )
    se.add_argument(
        "--max-images",
        type=int_in(0, 10**7),
        default=100,
        help="target train images read per checkpoint (0 = all)",
    )
    se.add_argument("--json", help="write the scores (and the study) to this JSON file")
    se.add_argument(
        "--study", action="store_true", help="correlate the validators with the runs' logged target-val mIoU"
    )
    se.set_defaults(func=cmd_select)

    rp = sub.add_parser("report", help="one self-contained HTML page comparing runs")
    rp.add_argument("runs", nargs="+", help="run directories")
    rp.add_argument("--out", default="report.html")
    rp.add_argument("--title", default="sfseg runs")
    rp.set_defaults(func=cmd_report)

    cd = sub.add_parser("check-data", help="read every file of a dataset's splits and list every problem")
    cd.add_argument("--dataset", default="toycity", help="toycity, cityscapes, gta5, synthia, folder")
    cd.add_argument("--data", default="data/toycity", help="dataset root")
    cd.add_argument("--split", nargs="+", help="split(s) to check (default: all of the dataset's)")
    cd.add_argument("--protocol", default="", help="class protocol (default: the dataset's own)")
    cd.add_argument("--mapping", default="", help="folder dataset: raw id -> class mapping file")
    cd.set_defaults(func=cmd_check_data)

    im = sub.add_parser(
        "import-checkpoint", help="convert a community DeepLab-v2 checkpoint to sfseg's format"
    )
    im.add_argument("input")
    im.add_argument("output")
    im.add_argument("--family", default="", help="family when keys are ambiguous (adaptsegnet_single, crst)")
    im.add_argument("--classes", default="", help="class protocol (needed for files without a head)")
    im.set_defaults(func=cmd_import_checkpoint)

    b = sub.add_parser("bench", help="methods x seeds on a benchmark -> markdown table and figure")
    b.add_argument("benchmark", choices=["toycity"])
    b.add_argument("--data", default="data/toycity")
    b.add_argument("--out", default="runs/bench")
    b.add_argument(
        "--configs",
        default=None,
        help="directory of <method>.yaml recipes (default: the shipped ToyCity ones)",
    )
    b.add_argument(
        "--methods",
        nargs="+",
        default=["source_only", "adabn", "naive_st", "conf_st", "ld_pl", "ld_nl", "ld"],
    )
    b.add_argument("--seeds", type=SEED, nargs="+", default=[0, 1, 2])
    b.add_argument(
        "--source-dir",
        help="where source models are cached (default: --out; with --variants, <dir>/sources-w<world>)",
    )
    b.add_argument(
        "--resume",
        action="store_true",
        help="reuse finished runs of the same recipe, resume unfinished ones (others run again)",
    )
    b.add_argument("--jobs", type=JOBS, default=1, help="trainings at a time (processes)")
    b.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), help="run the ToyCity suite's variants")
    b.add_argument("--worlds", type=SEED, nargs="+", default=[0], help="suite worlds (0 test, 1 development)")
    b.add_argument(
        "--data-dir", default="data", help="suite worlds live in <data-dir>/toycity-<variant>-w<world>"
    )
    b.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides applied to every method (e.g. --set rounds=1 batch_size=4)",
    )
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser(
        "demo", help="generate ToyCity, train the source model, compare methods (CPU, minutes)"
    )
    d.add_argument("--data", default=None, help="default: data/toycity-small_objects-w0")
    d.add_argument("--jobs", type=JOBS, default=None, help="runs at a time (default: 2 on a CPU, 1 on a GPU)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--seed", type=SEED, default=0)
    d.add_argument(
        "--methods",
        nargs="+",
        default=None,
        help="ToyCity recipes to compare (default: source_only adabn naive_st ld; add ldbe for LDBE)",
    )
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _threads()
        from sfseg.plugins import load_plugins

        load_plugins()
        args.func(args)
    except SfsegError as e:
        # The user's input is wrong: one line (plus any listing the message carries), no traceback.
        print(f"sfseg: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        from sfseg.fileio import ENVIRONMENT_ERRNOS

        if e.errno not in ENVIRONMENT_ERRNOS:
            raise  # not the environment's doing: a bug, with its traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"sfseg: error: {where}{ENVIRONMENT_ERRNOS[e.errno]} ({e.strerror})", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sfseg: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
