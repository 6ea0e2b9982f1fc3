"""What each ``sfseg`` command does (the parser is in :mod:`sfseg.cli.parser`). Adapting, training a source
model and exporting go through the Python API (:mod:`sfseg.api`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfseg.config import ConfigError
from sfseg.engine.runtime.rundir import RunDir
from sfseg.fileio import Place, atomic_write_text, check_outputs, check_writable_dir, check_writable_file


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

    options = {"data_dir": args.data_dir, "report": args.report, "source_overrides": args.overrides,
               "jobs": args.jobs}  # fmt: skip
    calibrate(args.variants, args.worlds, args.seeds, args.out, **options)


def cmd_train_source(args: argparse.Namespace) -> None:
    from sfseg import api

    summary = api.train_source(
        args.config, args.overrides, resume=args.resume, overwrite=args.overwrite, progress=True
    )
    score = (
        "no val split"
        if summary["val_miou"] is None
        else f"{summary['val_split']} mIoU {summary['val_miou']:.1f}"
    )
    print(f"{summary['dataset']} {score}; checkpoint: {summary['checkpoint']}")


def cmd_adapt(args: argparse.Namespace) -> None:
    from sfseg import api
    from sfseg.engine.reporting.report import per_class_table

    if not args.config and not args.resume:
        raise ConfigError(
            "name a recipe with --config (e.g. --config toycity/ld; `sfseg recipes` lists them)"
        )
    run = api.run_adaptation(args.config, args.overrides, resume=args.resume, overwrite=args.overwrite)
    summary = run.summary
    if summary["final"] is not None:
        print(per_class_table({run.config.name: summary["final"]}))
    chosen = summary.get("selected")
    if chosen:
        which = "the starting model" if chosen["round"] < 0 else f"round {chosen['round']}"
        print(f"{chosen['validator']} (label-free) chose {which}: {run.selected}")
    if summary["final"] is None:
        print("no target labels: rounds were scored by the label-free validator only")
    print(f"run directory: {run.path}")


def _data(args: argparse.Namespace, labels: bool | str, protocol=None):
    """The split named on the command line (``protocol``: its classes, when a checkpoint decided them)."""
    from sfseg.data.registry import build_dataset

    if args.mapping and args.dataset != "folder":
        raise ConfigError(f"--mapping applies to --dataset folder only, not {args.dataset!r}")
    options = {"mapping": args.mapping} if args.mapping else {}
    protocol = protocol or args.protocol
    return build_dataset(args.dataset, args.data, args.split, protocol, labels, progress=True, **options)


def _data_and_checkpoint(args: argparse.Namespace, labels: bool | str):
    """The checkpoint, the split named on the command line, and its protocol (``--protocol``, else the
    dataset's, else the checkpoint's classes), checked against each other."""
    from sfseg.models import load_for_data

    if not args.checkpoint:
        raise ConfigError("--checkpoint is required (or --predictions DIR to score prediction files)")
    ckpt, protocol = load_for_data(args.checkpoint, args.dataset, args.protocol, args.family, args.data)
    return ckpt, _data(args, labels, protocol), protocol


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
        from sfseg.data.registry import dataset_protocol
        from sfseg.engine.evaluation.evaluate import evaluate_files

        protocol = dataset_protocol(args.dataset, args.protocol)
        data = _data(args, True, protocol)
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
    from sfseg.registry import DATASETS

    check_outputs(
        [Place("--out", Path(args.out))],
        [Place("--checkpoint", args.checkpoint), Place("--data", args.data, tree=True)],
    )
    ckpt, data, protocol = _data_and_checkpoint(args, labels=False)
    check_writable_dir(Path(args.out), "--out")
    own = DATASETS.meta(args.dataset)["protocol"] is None  # a folder of the user's own images
    fmt = args.format or ("trainid" if own else "cityscapes")
    overlays = own if args.overlays is None else args.overlays
    inference = _inference(args, ckpt)
    predict(inference, data, protocol, args.out, fmt, args.batch_size, overlays=overlays)
    what = f"{len(data)} prediction(s) ({fmt})" + (" and overlays" if overlays else "")
    print(f"{what} written to {args.out}")


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
    limit = tuple(Path(r) for r in args.limit) if args.limit else None
    path = write_report([Path(r) for r in args.runs], Path(args.out), title=args.title, limit=limit)
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

    shared = {
        "recipes": args.configs, "source_dir": args.source_dir, "overrides": args.overrides,
        "source_overrides": args.source_overrides, "resume": args.resume, "jobs": args.jobs,
        "executor": args.executor, "address": args.address, "cpus_per_job": args.cpus_per_job,
        "gpus_per_job": args.gpus_per_job,
    }  # fmt: skip
    if args.variants:
        run_suite(
            args.variants, args.worlds, args.methods, args.seeds, args.out, data_dir=args.data_dir, **shared
        )
    else:
        run_bench(args.data, args.out, methods=args.methods, seeds=args.seeds, **shared)


def cmd_export(args: argparse.Namespace) -> None:
    from sfseg import api

    check_writable_file(Path(args.out), "--out")
    check_outputs([Place("--out", Path(args.out)), Place("--out", Path(f"{args.out}.json"))],
                  [Place("checkpoint", Path(args.checkpoint))])  # fmt: skip
    meta = api.export_model(args.checkpoint, args.out, args.format, args.opset, args.family)
    check = meta["check"]
    print(
        f"{args.format} (opset {meta['opset']}) written: {args.out}, with {args.out}.json (normalisation, "
        f"input size, classes); ONNX Runtime vs PyTorch: max |logit diff| {check['max_abs_logit_diff']:.2e}, "
        f"argmax agreement {100 * check['argmax_agreement']:.3f} %"
    )


def cmd_recipes(args: argparse.Namespace) -> None:
    from sfseg.yaml_io import SHIPPED_CONFIGS, shipped_recipes

    print(f"shipped recipes (in {SHIPPED_CONFIGS}); use one as --config <name>:")
    for name in shipped_recipes(args.under or ""):
        print(f"  {name}")


def cmd_demo(args: argparse.Namespace) -> None:
    from sfseg.engine.experiments.demo import run_demo

    run_demo(data_root=args.data, out=args.out, seed=args.seed, jobs=args.jobs, methods=args.methods)
