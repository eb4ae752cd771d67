"""A user's mistake is one ``error:`` line and a non-zero exit, never a traceback (issue 13 item 2,
issue 10 item 9): every command with out-of-range values, bad devices, existing and unwritable
outputs, missing files and typos.  Run in-process (``poster.cli.main``) for speed, plus a few real
subprocesses for what only a process shows (argparse's exit, the interpreter's traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import poster
from poster.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("cli")
    model = poster.create_model("poster_v1_tiny", num_classes=7)
    meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=[f"c{i}" for i in range(7)],
                            arch_options={"token_mixing": False})
    ckpt = poster.save_checkpoint(base / "tiny.pth", model, meta)
    image = base / "face.png"
    import cv2
    import numpy as np

    cv2.imwrite(str(image), np.full((48, 48, 3), 128, np.uint8))
    a_file = base / "a_file.txt"
    a_file.write_text("x")
    data = base / "data"
    (data / "train" / "a").mkdir(parents=True)
    (data / "test" / "a").mkdir(parents=True)
    (base / "empty").mkdir()
    busy = base / "busy_run"
    busy.mkdir()
    (busy / "last.pth").write_bytes(b"x")
    return {"ckpt": str(ckpt), "image": str(image), "file": str(a_file), "data": str(data), "base": str(base),
            "busy": str(busy), "missing": str(base / "missing.pth"), "empty": str(base / "empty")}


PREDICT = ["predict", "{image}", "-c", "{ckpt}", "--detector", "none", "--device", "cpu", "-o", "{base}/p"]
TEST = ["test", "-c", "{ckpt}", "--dataset", "folder", "--data", "{data}", "--device", "cpu", "-o", "{base}/t"]
TRAIN = ["train", "--recipe", "fer2013_small", "--dataset", "folder", "--data", "{data}", "--device", "cpu",
         "-o", "{base}/r", "--no-progress"]

CASES = {
    "predict bad device": (PREDICT[:-4] + ["--device", "gpu"], "unknown device 'gpu'"),
    "predict -o is a file": (PREDICT[:-1] + ["{file}"], "cannot use output folder"),
    "predict -o unwritable": (PREDICT[:-1] + ["/proc/poster-out"], "cannot use output folder"),
    "predict score threshold": (PREDICT + ["--score-threshold", "2"], "--score-threshold must be between 0 and 1"),
    "predict min-face nan": (PREDICT + ["--min-face", "nan"], "--min-face must be a number of pixels >= 0"),
    "predict crop size": (PREDICT + ["--crop-size", "20000"], "--crop-size must be 0"),
    "predict batch 0": (PREDICT + ["-b", "0"], "--batch-size must be at least 1"),
    "predict model workers 0": (PREDICT + ["--model-workers", "0"], "--model-workers must be 1 to 64"),
    "predict every-n": (PREDICT + ["--every-n", "0"], "--every-n must be at least 1"),
    "predict max-frames": (PREDICT + ["--max-frames", "0"], "--max-frames must be at least 1"),
    "predict smooth": (PREDICT + ["--smooth", "1"], "--smooth must be in [0, 1)"),
    "predict onnx on pth": (PREDICT + ["--runtime", "onnx"], "export it first: poster export"),
    "predict torchscript on pth": (PREDICT + ["--runtime", "torchscript"], "export it first"),
    "predict missing checkpoint": (["predict", "{image}", "-c", "{missing}", "-o", "{base}/p"], "missing.pth"),
    "test batch 0": (TEST + ["-b", "0"], "--batch-size must be at least 1"),
    "test workers -1": (TEST + ["-j", "-1"], "--workers must be 0"),
    "test bad device": (TEST[:-4] + ["--device", "gpu"], "unknown device 'gpu'"),
    "test missing checkpoint": (["test", "-c", "{missing}", "--dataset", "folder", "--data", "{data}"],
                                "missing.pth"),
    "train val fraction 0": (TRAIN + ["--val-fraction", "0"], "--val-fraction must be between 0 and 1"),
    "train limit -5": (TRAIN + ["--limit-train", "-5"], "--limit-train must be at least 1"),
    "train workers -1": (TRAIN + ["-j", "-1"], "--workers must be 0"),
    "train bogus arch": (TRAIN + ["--set", "arch=bogus"], "unknown architecture bogus"),
    "train missing data": (["train", "--recipe", "fer2013_small", "--data", "{base}/nope"], "--data: no such folder"),
    "train bad device": (TRAIN[:-3] + ["--device", "gpu", "--no-progress"], "unknown device 'gpu'"),
    "train non-empty folder": (TRAIN[:-2] + ["{busy}", "--no-progress"], "use --resume to continue it"),
    "train -o is a file": (TRAIN[:-2] + ["{file}", "--no-progress"], "cannot use output folder"),
    "train unknown recipe": (["train", "--recipe", "nope", "--data", "{data}"], "unknown recipe"),
    "train recipe without data": (["train", "--recipe", "fer2013_small"], "poster train needs --data (see"),
    "train data without recipe": (["train", "--data", "{data}"], "needs --recipe (poster train --list-recipes"),
    "predict missing input": (["predict", "{base}/nope.jpg", "-c", "{ckpt}", "-o", "{base}/p"],
                              "nothing to predict: no such file or folder: "),
    "predict empty folder": (["predict", "{empty}", "-c", "{ckpt}", "-o", "{base}/p"],
                             "nothing to predict: no images or videos found in "),
    "export existing output": (["export", "-c", "{ckpt}", "-o", "{file}"], "a_file.txt exists; use --force"),
    "export missing checkpoint": (["export", "-c", "{missing}"], "missing.pth"),
    "benchmark threads 0": (["benchmark", "--threads", "0"], "--threads must be >= 1"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_mistake_is_one_error_line(files, name, capsys):
    argv, expected = CASES[name]
    code = main([a.format(**files) for a in argv])
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip() and not line.startswith("INFO:")]
    assert code != 0, captured
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out
    if argv[0] == "predict":  # a refused run leaves no run folder behind
        assert not Path(files["base"], "p").exists()


USAGE = {
    "option typo": (["predict", "x.jpg", "--batchsize", "3"], "did you mean --batch-size?"),
    "command typo": (["predcit", "x.jpg"], "did you mean predict?"),
    "bad choice": (["predict", "x.jpg", "--format", "xml"], "invalid choice"),
    "not a number": (["test", "-c", "x", "--dataset", "folder", "--data", "y", "-b", "many"], "invalid int value"),
    "missing argument": (["predict"], "the following arguments are required"),
}


@pytest.mark.parametrize("name", sorted(USAGE))
def test_usage_mistake_is_one_line_with_exit_2(name, capsys):
    argv, expected = USAGE[name]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


def test_verbose_works_after_the_command_too():
    parser = build_parser()
    assert parser.parse_args(["-v", "models"]).verbose is True
    assert parser.parse_args(["models", "-v"]).verbose is True
    assert parser.parse_args(["predict", "x.jpg", "--verbose"]).verbose is True
    assert parser.parse_args(["models"]).verbose is False


@pytest.mark.slow
def test_real_processes_print_one_line(files):
    for argv in (["predict", files["image"], "-c", files["ckpt"], "--device", "gpu"],
                 ["predict", files["image"], "--batchsize", "2"],
                 ["train", "--recipe", "fer2013_small", "--data", files["data"], "--val-fraction", "0"]):
        proc = subprocess.run([sys.executable, "-m", "poster", *argv], env=ENV, capture_output=True, text=True,
                              timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode in (1, 2) and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
