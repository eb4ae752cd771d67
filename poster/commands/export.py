"""``poster export``: a checkpoint to a self-describing ONNX (or TorchScript) file, verified."""

from __future__ import annotations

import argparse
import logging
import os
import re
import tempfile
from pathlib import Path

from ..data.layouts import DATASET_CLASSES
from ..errors import PosterError
from ..fileio import new_temporary_beside
from ..textsafe import printable

log = logging.getLogger(__name__)

_SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be integers >= 1, got {text!r}")
    return sizes


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or TorchScript",
        description="Export a checkpoint to ONNX (input 'input' [N,3,S,S] float32 with a dynamic batch axis, "
                    "output 'logits'; class names and preprocessing stored in the file's metadata) or "
                    "TorchScript, then check the file against PyTorch on random batches.")
    p.add_argument("-c", "--checkpoint", required=True, help="weights file or release name")
    p.add_argument("-f", "--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("-o", "--output", default=None,
                   help="output file, or a folder to put it in (default: <checkpoint stem>.onnx / "
                        ".torchscript.pt in the current folder)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    p.add_argument("--exporter", choices=("auto", "legacy", "dynamo"), default="auto",
                   help="ONNX exporter: TorchScript-based 'legacy' (fast), torch.export-based 'dynamo' (needs "
                        "onnxscript), 'auto' = legacy while torch has it (default)")
    p.add_argument("--static-batch", action="store_true", help="ONNX: fix the batch axis to 1 instead of dynamic")
    p.add_argument("--batch-sizes", type=_batch_sizes, default=(1, 4), metavar="N,N",
                   help="batch sizes of the verification (default: 1,4)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch")
    p.add_argument("--dataset", choices=sorted(DATASET_CLASSES), default=None,
                   help="class order of an official file whose keys cannot tell (7-class POSTER V2)")
    p.add_argument("--channel-order", choices=("RGB", "BGR"), default=None,
                   help="override the channel order recorded for the weights")
    p.set_defaults(run=run)


def _default_output(args) -> Path:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(args.checkpoint).name)
    for ext in (".pth.tar", ".pth", ".pt", ".tar", ".bin"):
        if stem.endswith(ext):
            stem = stem[: -len(ext)]
            break
    return Path(stem + _SUFFIX[args.format])


def _destination(args) -> Path:
    """The file to write, checked before any work: an existing file is kept unless ``--force``,
    and a path that cannot be written is named (with the folder at fault), not found out after the
    export."""
    out = Path(args.output) if args.output else _default_output(args)
    if out.is_dir():  # -o FOLDER: the default name inside it
        out = out / _default_output(args).name
    if out.is_dir():
        raise PosterError(f"cannot write {printable(out)}: it is a folder")
    if os.path.lexists(out) and not args.force:
        raise PosterError(f"{printable(out)} exists; use --force to replace it")
    folder = out.parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent  # missing folders are created: the nearest existing one must take them
    if not folder.is_dir():
        raise PosterError(f"cannot write {printable(out)}: {printable(folder)} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PosterError(f"cannot write {printable(out)}: the folder {printable(folder)} does not take new "
                          f"files ({exc.strerror or exc})") from None
    return out


def run(args: argparse.Namespace) -> int:
    from ..checkpoint.loading import load_model
    from ..inference.export import export_onnx, export_torchscript, format_size, verify_onnx, verify_torchscript

    if args.format == "torchscript" and (args.opset is not None or args.exporter != "auto" or args.static_batch):
        raise PosterError("--opset, --exporter and --static-batch apply to --format onnx only")
    out = _destination(args)
    model = load_model(args.checkpoint, device="cpu", dataset=args.dataset, channel_order=args.channel_order)
    meta = model.meta
    log.info("exporting %s (%d classes, %s input %d px) to %s", meta.arch, meta.num_classes,
             meta.input.channel_order, meta.input.input_size, out)
    # written and checked beside the target, then renamed over it: a failed export or check leaves
    # the target as it was (an older file replaced with --force included)
    stage = new_temporary_beside(out)
    try:
        if args.format == "onnx":
            export_onnx(model, stage, opset=args.opset, dynamic_batch=not args.static_batch, exporter=args.exporter)
        else:
            export_torchscript(model, stage)
        verify = verify_onnx if args.format == "onnx" else verify_torchscript
        diff = None if args.no_verify else _verified(verify, model, stage, out, args.batch_sizes)
        os.replace(stage, out)
    finally:
        stage.unlink(missing_ok=True)
    size = format_size(out.stat().st_size)
    if diff is None:
        print(f"wrote {out} ({size}); not verified")
        return 0
    sizes = ",".join(str(n) for n in args.batch_sizes)
    print(f"max |{args.format} - torch| logit difference: {diff:.3g} over batch sizes {sizes} "
          f"(tolerance 1e-4 x max(1, max|logit|))")
    print(f"wrote {out} ({size})")
    return 0


def _verified(verify, model, stage: Path, out: Path, batch_sizes) -> float:
    """``verify``'s largest difference for the staged export; its error names the target, not the stage."""
    try:
        return verify(model, stage, batch_sizes=batch_sizes)
    except PosterError as e:
        what = str(e).replace(str(stage), str(out))
        kept = "was left as it was" if os.path.lexists(out) else "was not written"
        raise PosterError(f"{what}; the export was removed and {out} {kept} (use --no-verify to keep an "
                          "unchecked export)") from e
