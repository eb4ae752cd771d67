"""``poster train``: a recipe on a dataset, on CPU, one GPU or many (``torchrun``)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path

from ..data.layouts import DATASET_NAMES
from ..precision import REQUESTS
from ..errors import PosterError
from ..textsafe import printable
from ..train.options import TrainOptions
from ..train.recipes import get_recipe, list_recipes

# Option defaults live on TrainOptions; the parser reads them from there (tests check every flag).
DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainOptions) if f.default is not dataclasses.MISSING}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a model with a named recipe",
        description="Train POSTER with a recipe (poster train --list-recipes). Single process needs no "
                    "launcher; for several GPUs or machines run it under torchrun, e.g. "
                    "'torchrun --nproc-per-node 4 -m poster train ...'.")
    p.add_argument("--recipe", help="recipe name (see --list-recipes)")
    p.add_argument("--list-recipes", action="store_true", help="print the recipes and exit")
    p.add_argument("--dataset", choices=DATASET_NAMES,
                   help="dataset layout (default: the recipe's)")
    p.add_argument("--data", help="dataset root folder")
    p.add_argument("-o", "--output-dir", help="run folder (default runs/train/<recipe>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set lr=1e-4 --set epochs=20 (repeatable)")
    p.add_argument("--train-split", default=DEFAULTS["train_split"])
    p.add_argument("--val-split", default=DEFAULTS["val_split"],
                   help="explicit validation split; default: hold out --val-fraction of the training split")
    p.add_argument("--val-fraction", type=float, default=DEFAULTS["val_fraction"])
    p.add_argument("--test-split", default=DEFAULTS["test_split"], help="split evaluated once at the end ('none' to skip)")
    p.add_argument("--select-on", choices=("val", "test"), default=DEFAULTS["select_on"],
                   help="'test' reproduces the papers' protocol (best test accuracy over epochs; optimistic)")
    p.add_argument("--device", default=DEFAULTS["device"])
    p.add_argument("--precision", choices=REQUESTS, default=DEFAULTS["precision"],
                   help="auto: bf16 autocast on CUDA, fp32 on CPU ('bf16' on a CPU with AMX/AVX512-BF16 "
                        "trains ~2x faster)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the training step (opt-in: compilation takes minutes; its time is logged)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default=DEFAULTS["channels_last"],
                   help="NHWC convolutions (auto: on whenever bf16 autocast is on)")
    p.add_argument("--ir50", help="official ir50.pth to initialise the IR-50 trunk ('auto': the release 'ir50', "
                                  "fetched on first use)")
    p.add_argument("--landmark", help="official mobilefacenet_model_best.pth.tar for the landmark net ('auto': "
                                      "the release 'mobilefacenet68', fetched on first use)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from last.pth")
    p.add_argument("--limit-train", type=int, help="use a stratified subset of this many training images")
    p.add_argument("--limit-val", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("-j", "--workers", type=int, help="data-loading processes (default: the recipe's suggestion)")
    p.add_argument("--eval-batch-size", type=int,
                   help="batch size of validation and test passes (default: the recipe's suggestion)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs (default: per-GPU BN as the original)")
    p.add_argument("--deterministic", action="store_true", help="torch deterministic algorithms")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) unreadable images instead of stopping before training starts")
    p.add_argument("--cache", metavar="memory|DIR",
                   help="decode every training image once into a uint8 cache at the 112 pixels the model "
                        "sees ('memory', or a folder for a memory-mapped file shared by runs and ranks); "
                        "augmentation then runs batched on the device")
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(run=run)


def _backbone_file(value: str | None, release_name: str) -> str | None:
    """``auto``: the official backbone release (fetched on first use); anything else as given."""
    if value != "auto":
        return value
    from ..checkpoint.hub import resolve_weights

    return str(resolve_weights(release_name))


def run(args: argparse.Namespace) -> int:
    if args.list_recipes:
        for name in list_recipes():
            r = get_recipe(name)
            print(f"{name:15s} {r.arch:16s} {r.dataset:11s} lr {r.lr:g} batch {r.batch_size} epochs {r.epochs} "
                  f"loss {r.loss} {r.channel_order}")
        return 0
    if not args.recipe or not args.data:
        missing = " and ".join(flag for flag, given in (("--recipe", args.recipe), ("--data", args.data)) if not given)
        hint = "poster train --list-recipes names the recipes" if not args.recipe else "see poster train --help"
        raise PosterError(f"poster train needs {missing} ({hint})")
    _check_options(args)
    recipe = get_recipe(args.recipe, args.overrides)
    _check_recipe_model(recipe)
    dataset = args.dataset or recipe.dataset
    output_dir = args.output_dir or str(Path("runs") / "train" / recipe.name)
    options = TrainOptions(
        dataset=dataset, data=args.data, output_dir=output_dir,
        train_split=args.train_split, val_split=args.val_split, val_fraction=args.val_fraction,
        test_split=None if str(args.test_split).lower() == "none" else args.test_split,
        select_on=args.select_on, device=args.device, precision=args.precision, channels_last=args.channels_last,
        compile=args.compile, ir50=_backbone_file(args.ir50, "ir50"),
        landmark=_backbone_file(args.landmark, "mobilefacenet68"), resume=args.resume,
        limit_train=args.limit_train, limit_val=args.limit_val,
        limit_test=args.limit_test, workers=args.workers, eval_batch_size=args.eval_batch_size,
        progress=not args.no_progress,
        tensorboard=args.tensorboard, sync_bn=args.sync_bn, deterministic=args.deterministic, cache=args.cache,
        skip_bad=args.skip_bad)
    from ..train.trainer import Trainer  # torch and the training stack: only when a run starts

    with _locked_run_folder(Path(output_dir), args.resume):
        result = Trainer(recipe, options).fit()
    if result:
        print(json.dumps({k: v for k, v in result.items() if not k.endswith("_report")}, indent=2))
    return 0


def _check_options(args: argparse.Namespace) -> None:
    """Out-of-range values are one clear error before any data is read."""
    from ..device import resolve_device

    if args.val_split is None and not (math.isfinite(args.val_fraction) and 0.0 < args.val_fraction < 1.0):
        raise PosterError(f"--val-fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
    for flag, value in (("--limit-train", args.limit_train), ("--limit-val", args.limit_val),
                        ("--limit-test", args.limit_test)):
        if value is not None and value < 1:
            raise PosterError(f"{flag} must be at least 1 image, got {value}")
    if args.workers is not None and args.workers < 0:
        raise PosterError(f"--workers must be 0 (load in this process) or more, got {args.workers}")
    if args.eval_batch_size is not None and args.eval_batch_size < 1:
        raise PosterError(f"--eval-batch-size must be at least 1, got {args.eval_batch_size}")
    if not Path(args.data).is_dir():
        raise PosterError(f"--data: no such folder: {printable(args.data)}")
    resolve_device(args.device)


def _check_recipe_model(recipe) -> None:
    """The recipe's architecture and its options exist, before hours of data checking (``--set arch=``)."""
    from ..models.registry import get_arch, list_models

    try:
        spec = get_arch(recipe.arch)
    except ValueError:
        raise PosterError(f"unknown architecture {printable(recipe.arch)!s} in the recipe; available: "
                          f"{', '.join(list_models())}") from None
    unknown = sorted(set(recipe.arch_options) - set(spec.options))
    if unknown:
        raise PosterError(f"{recipe.arch} does not take option(s) {unknown}; it takes {list(spec.options)}")


def _is_main_process() -> bool:
    """Rank 0 of a ``torchrun`` launch (or a plain run): the one that owns the run folder."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def _locked_run_folder(folder: Path, resume: bool):
    """The run folder, locked for the run; without ``--resume`` it must be new or empty, so that
    two runs never mix their ``last.pth`` and ``best.pth``."""
    if not _is_main_process():
        yield
        return
    from ..fileio import safe_mkdirs
    from ..runlock import RunLock

    if not resume and folder.is_dir():
        entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        if entries:
            shown = ", ".join(entries[:4]) + (" ..." if len(entries) > 4 else "")
            hint = "use --resume to continue it" if "last.pth" in entries else "it holds no last.pth to resume"
            raise PosterError(f"{printable(folder)} already holds a run ({printable(shown)}); {hint}, or choose "
                              "another --output-dir")
    try:
        safe_mkdirs(folder)
    except OSError as exc:
        raise PosterError(f"cannot use output folder {printable(folder)}: {exc.strerror or exc}") from None
    with RunLock(folder, "poster train"):
        yield
