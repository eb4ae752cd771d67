"""``poster test`` (alias ``evaluate``): accuracy of a checkpoint on a dataset split."""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import re
from pathlib import Path

from ..data.labels import abbreviate
from ..data.layouts import DATASET_CLASSES, DATASET_NAMES, DATASET_TITLES, build_dataset
from ..precision import REQUESTS
from ..errors import PosterError
from ..fileio import atomic_write_text, claim_run_folder
from ..runlock import lock_run_folder
from ..textsafe import csv_cell, printable

log = logging.getLogger(__name__)


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
    p.add_argument("--precision", default="auto", choices=REQUESTS,
                   help="auto (default) = fp32 for evaluation: BN folded and channels-last, within the golden "
                        "tolerance (1e-4) of the model as written, so published numbers reproduce; bf16: "
                        "autocast, faster on GPUs and CPUs with bf16 instructions, probabilities within ~1e-2")
    p.add_argument("--eager", action="store_true",
                   help="run the model exactly as written in fp32 (no BN folding, no channels-last; slower)")
    p.add_argument("--class-map", default=None, metavar="DS=MODEL,...|FILE.json",
                   help="which model class each dataset class is, where the names do not say it "
                        "(dataset and model classes are matched by name, with synonyms such as "
                        "anger/angry, happiness/happy, sadness/sad); DS= leaves a class out. "
                        "Model classes the dataset lacks are reported and not scored.")
    p.set_defaults(run=run)


def _default_output_dir(args) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.checkpoint).stem)
    return Path("runs") / "test" / f"{args.dataset}-{stem}"


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


def _map_classes(model_meta, dataset, class_map: str | None):
    """The dataset's classes as the model's, by name (``poster.data.classmap``); logged."""
    from ..data.classmap import map_classes, parse_class_map

    mapping = map_classes(dataset.class_names, model_meta.class_names, parse_class_map(class_map))
    if mapping.by_index:
        log.warning("no dataset class name matches a model class (checkpoint %s, dataset %s): scoring by "
                    "index order; use --class-map to say which is which", list(model_meta.class_names),
                    list(dataset.class_names))
    elif not mapping.identity:
        log.info("classes mapped by name: %s", ", ".join(f"{d}->{m or '(left out)'}"
                                                         for d, m in mapping.to_dict().items()))
    return mapping


def _without_excluded(dataset, mapping):
    """The dataset less the images of the classes ``--class-map`` leaves out."""
    if not mapping.excluded:
        return dataset
    keep = [r for r in dataset.records if mapping.to_model[r[1]] >= 0]
    from ..data.datasets import ImageListDataset

    subset = ImageListDataset(keep, dataset.class_names, transform=dataset.transform, name=dataset.name,
                              root=dataset.root, split=dataset.split)
    log.info("left out %d images of %s", len(dataset) - len(subset), ", ".join(mapping.excluded))
    return subset


def _print_per_class(report, absent: list[str]) -> None:
    """Per-class results of the classes that have examples; the model's classes without any."""
    print("per class (classes with examples):")
    names = report.class_names
    width = max(len(names[i]) for i in report.present_classes)
    for i in report.present_classes:
        print(f"  {names[i]:<{width}}  recall {report.recall[i]:.4f}  precision {report.precision[i]:.4f}  "
              f"F1 {report.f1[i]:.4f}  support {report.support[i]}")
    if absent:
        print(f"no examples of: {', '.join(absent)} (not scored; predicting them counts as an error)")


def run(args: argparse.Namespace) -> int:
    _check_options(args)
    # torch, OpenCV and the model stack load here, not when the parser is built (poster --help)
    from ..data.transforms import EvalTransform
    from ..device import resolve_device
    from ..evaluation.evaluate import evaluate
    from ..inference.runtime import open_backend

    device = resolve_device(args.device)
    hint = args.dataset if args.dataset in DATASET_CLASSES else None
    opened = open_backend(args.checkpoint, runtime="torch", device=device, precision=args.precision,
                          eager=args.eager, purpose="evaluate", dataset=hint)
    meta = opened.meta
    dataset = build_dataset(args.dataset, args.data, args.split, transform=EvalTransform(meta.input),
                            allow_empty_classes=True)
    mapping = _map_classes(meta, dataset, args.class_map)
    dataset = _without_excluded(dataset, mapping)
    log.info("%s: %d images, %d classes; model %s (%s input) on %s", args.dataset, len(dataset),
             dataset.num_classes, meta.arch, meta.input.channel_order, device)

    out_dir = _claim_output_dir(args)  # before the long evaluation: a bad folder is found at once
    log.info("inference: %s", opened.description)
    result = evaluate(opened.backend, dataset, batch_size=args.batch_size, device=device, workers=args.workers,
                      progress=not args.no_progress, class_mapping=mapping)
    report = result.report
    absent = [report.class_names[i] for i in range(report.num_classes) if report.support[i] == 0]
    macro_f1 = report.macro_f1_supported if absent else report.macro_f1

    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["path", "target", "prediction"])  # model class indices
    for (path, _), target, pred in zip(dataset.records, result.targets, result.predictions):
        writer.writerow([csv_cell(path), int(target), int(pred)])
    atomic_write_text(out_dir / "predictions.csv", rows.getvalue())

    payload = {
        "checkpoint": str(args.checkpoint), "dataset": args.dataset, "data": str(args.data), "split": args.split,
        "num_images": len(dataset), "device": str(device), "seconds": round(result.seconds, 3),
        "inference": opened.description, "precision": opened.precision,
        "model": meta.to_dict(), **report.to_dict(),
        "class_mapping": mapping.to_dict(), "classes_without_examples": absent,
        "macro_f1_classes_with_examples": report.macro_f1_supported,
    }
    if args.plot:
        from ..evaluation.plots import plot_confusion_matrix

        title = DATASET_TITLES.get(args.dataset, args.dataset)
        png = plot_confusion_matrix(report.confusion_matrix, [abbreviate(c) for c in report.class_names],
                                    title, out_dir / f"confusion_matrix_acc{report.accuracy:.4f}.png")
        payload["confusion_matrix_png"] = str(png)
    atomic_write_text(out_dir / "report.json", json.dumps(payload, indent=2))

    f1_label = f"macro F1 ({len(report.present_classes)} classes with examples)" if absent else "macro F1"
    print(f"Test accuracy: {report.accuracy:.4f}  mean class accuracy: {report.mean_class_accuracy:.4f}  "
          f"{f1_label}: {macro_f1:.4f}  ({len(dataset)} images, {result.seconds:.1f}s)")
    _print_per_class(report, absent)
    print(f"report: {printable(out_dir / 'report.json')}"
          + (f"\nplot:   {printable(payload['confusion_matrix_png'])}" if args.plot else ""))
    return 0
