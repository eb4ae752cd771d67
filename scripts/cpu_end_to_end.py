"""End-to-end CPU speed of ``poster test`` and ``poster predict --detector none`` with their default
(fast-path) inference against ``--eager`` (the model as written, fp32: the old default), in ONE
process, alternating the two so that a busy machine slows both alike; medians over the repeats.

    PYTHONPATH=. .venv/bin/python scripts/cpu_end_to_end.py --data ../shared/data/fer2013 -n 480 -r 3

Both commands run as a user would type them (the CLI's ``main``, default workers and batch size,
the bundled model unless ``-c``), on ``n`` FER2013 validation faces copied to a temporary folder.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown CPU"


def _subset(data: Path, count: int, dest: Path) -> Path:
    """``count`` validation faces spread over the classes, in the fer2013 folder layout."""
    files = sorted((data / "val").glob("*/*.jpg"))
    step = max(1, len(files) // count)
    for path in files[::step][:count]:
        target = dest / "test" / path.parent.name
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return dest


def _timed(argv: list[str]) -> float:
    from poster.cli import main

    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(argv)} failed with exit status {code}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/fer2013", help="FER2013 folder layout root")
    parser.add_argument("-c", "--checkpoint", default=None, help="default: the bundled model")
    parser.add_argument("-n", "--images", type=int, default=480)
    parser.add_argument("-r", "--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from poster.precision import cpu_has_native_bf16
    from poster.inference.recognizer import default_checkpoint

    checkpoint = args.checkpoint or default_checkpoint()
    work = Path(tempfile.mkdtemp(prefix="poster-e2e-"))
    try:
        root = _subset(Path(args.data), args.images, work / "data")
        n = sum(1 for _ in root.glob("test/*/*.jpg"))
        test = ["test", "-c", checkpoint, "--dataset", "fer2013", "--data", str(root), "--device", "cpu",
                "--no-progress", "-o", str(work / "test")]
        predict = ["predict", str(root / "test"), "-c", checkpoint, "--detector", "none", "--device", "cpu",
                   "--no-annotate", "-q", "-o", str(work / "predict")]
        runs: dict[str, list[float]] = {}
        _timed(predict)  # warm the file cache and the imports once
        for _ in range(args.repeats):
            for name, argv in (("test eager", test + ["--eager"]), ("test default", test),
                               ("predict eager", predict + ["--eager"]), ("predict default", predict)):
                runs.setdefault(name, []).append(n / _timed(argv))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in runs.items()}
    summary = {
        "cpu": _cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "native_bf16": cpu_has_native_bf16(), "torch": torch.__version__, "images": n, "repeats": args.repeats,
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "images_per_second": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "median_images_per_second": {k: round(v, 1) for k, v in medians.items()},
        "ratio_test": round(medians["test default"] / medians["test eager"], 2),
        "ratio_predict": round(medians["predict default"] / medians["predict eager"], 2),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
