"""``poster test`` (alias ``evaluate``): accuracy of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from pathlib import Path

from ..checkpoint.loading import load_model
from ..data import DATASET_CLASSES, DATASET_NAMES, DATASET_TITLES, EvalTransform, abbreviate, build_dataset
from ..errors import DatasetError, PosterError
from ..evaluate import evaluate, resolve_device
from ..fileio import atomic_write_text, claim_run_folder
from ..runlock import lock_run_folder
from ..textsafe import csv_cell, printable

log = logging.getLogger("poster")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "test", aliases=["evaluate"], help="evaluate a checkpoint on a dataset split",
        description="Evaluate a checkpoint (official or ours) on a dataset split: accuracy, mean class "
                    "accuracy, macro F1, a JSON report and optionally the confusion matrix plot.")
    p.add_argument("-c", "--checkpoint", required=True, help="weights file or release name")
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="dataset layout")
    p.add_argument("--data", required=True, help="dataset root folder")
    p.add_argument("--split", default="test", help="split to evaluate (default: test)")
    p.add_argument("-b", "--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1, ...")
    p.add_argument("-j", "--workers", type=int, default=2, help="data-loading processes")
    p.add_argument("-p", "--plot", action="store_true", help="save the row-normalised confusion matrix PNG")
    p.add_argument("-o", "--output-dir", default=None,
                   help="where report.json (and the plot) go; default runs/test/<dataset>-<checkpoint> (an "
                        "existing non-empty folder becomes DIR2, DIR3, ...)")
    p.add_argument("--exist-ok", action="store_true", help="write into the output folder even if it holds a report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def _default_output_dir(args) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.checkpoint).stem)
    return Path("runs") / "test" / f"{args.dataset}-{stem}"


def _check_classes(model_meta, dataset) -> None:
    if model_meta.num_classes != dataset.num_classes:
        raise DatasetError(
            f"the checkpoint predicts {model_meta.num_classes} classes {list(model_meta.class_names)} but the "
            f"dataset has {dataset.num_classes} {list(dataset.class_names)}")
    mine = [c.lower() for c in model_meta.class_names]
    theirs = [c.lower() for c in dataset.class_names]
    if mine != theirs:
        log.warning("class names differ (checkpoint %s, dataset %s): scoring by index order",
                    printable(list(model_meta.class_names)), printable(list(dataset.class_names)))


def _check_options(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise PosterError("--batch-size must be at least 1")
    if args.workers < 0:
        raise PosterError("--workers must be 0 (load in this process) or more")


def _claim_output_dir(args: argparse.Namespace) -> Path:
    """A fresh folder for this run's report (``DIR``, ``DIR2``, ...; ``--exist-ok``: ``DIR``), locked."""
    requested = Path(args.output_dir) if args.output_dir else _default_output_dir(args)
    try:
        out_dir = claim_run_folder(requested, exist_ok=args.exist_ok)
    except OSError as exc:
        raise PosterError(f"cannot use output folder {printable(exc.filename or requested)}: "
                          f"{exc.strerror or exc}") from None
    lock_run_folder(out_dir, "poster test")
    return out_dir


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    device = resolve_device(args.device)
    hint = args.dataset if args.dataset in DATASET_CLASSES else None
    model = load_model(args.checkpoint, device=device, dataset=hint)
    meta = model.meta
    dataset = build_dataset(args.dataset, args.data, args.split, transform=EvalTransform(meta.input))
    _check_classes(meta, dataset)
    log.info("%s: %d images, %d classes; model %s (%s input) on %s", args.dataset, len(dataset),
             dataset.num_classes, meta.arch, meta.input.channel_order, device)

    out_dir = _claim_output_dir(args)  # before the long evaluation: a bad folder is found at once
    result = evaluate(model, dataset, batch_size=args.batch_size, device=device, workers=args.workers,
                      progress=not args.no_progress)
    report = result.report

    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "target", "prediction"])
    for (path, _), target, pred in zip(dataset.records, result.targets, result.predictions):
        writer.writerow([csv_cell(path), int(target), int(pred)])
    atomic_write_text(out_dir / "predictions.csv", rows.getvalue())

    payload = {
        "checkpoint": str(args.checkpoint), "dataset": args.dataset, "data": str(args.data), "split": args.split,
        "num_images": len(dataset), "device": str(device), "seconds": round(result.seconds, 3),
        "model": meta.to_dict(), **report.to_dict(),
    }
    if args.plot:
        from ..plots import plot_confusion_matrix

        title = DATASET_TITLES.get(args.dataset, args.dataset)
        png = plot_confusion_matrix(report.confusion_matrix, [abbreviate(c) for c in dataset.class_names],
                                    title, out_dir / f"confusion_matrix_acc{report.accuracy:.4f}.png")
        payload["confusion_matrix_png"] = str(png)
    atomic_write_text(out_dir / "report.json", json.dumps(payload, indent=2))

    print(f"Test accuracy: {report.accuracy:.4f}  mean class accuracy: {report.mean_class_accuracy:.4f}  "
          f"macro F1: {report.macro_f1:.4f}  ({len(dataset)} images, {result.seconds:.1f}s)")
    print(f"report: {printable(out_dir / 'report.json')}"
          + (f"\nplot:   {printable(payload['confusion_matrix_png'])}" if args.plot else ""))
    return 0
