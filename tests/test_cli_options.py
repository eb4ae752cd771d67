"""The command line's own rules: help and usage errors answer without loading torch or OpenCV, and
flag defaults and choices come from the library's own records (options dataclasses, RUNTIMES)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest

COMMANDS = ("test", "models", "train", "predict", "export", "benchmark", "weights", "serve")
HEAVY = ("torch", "cv2", "fastapi", "onnxruntime")


def _loaded_by(argv: list[str]) -> tuple[int, list[str]]:
    """Exit status of ``poster ARGV`` in a fresh interpreter, and which heavy modules it loaded."""
    code = ("import json, sys\nfrom poster.cli import main\n"
            f"try:\n    status = main({argv!r})\nexcept SystemExit as e:\n    status = e.code\n"
            f"print(json.dumps([status, [m for m in {HEAVY!r} if m in sys.modules]]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    return status, heavy


@pytest.mark.parametrize("argv", [["--help"], *[[c, "--help"] for c in COMMANDS],
                                  ["predict"], ["train", "--recipe"], ["test", "--dataset", "nope"],
                                  ["serve", "--port", "many"], ["benchmark", "--modle", "x"]])
def test_help_and_usage_errors_load_no_torch_nor_opencv(argv):
    status, heavy = _loaded_by(argv)
    assert status in (0, 2) and heavy == [], (argv, status, heavy)


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from poster.cli import build_parser

    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return parser._option_string_actions[flag]


def test_runtime_choices_are_the_library_runtimes():
    from poster.inference.runtime import RUNTIMES

    for command in ("predict", "serve"):
        assert tuple(_option(_subparsers()[command], "--runtime").choices) == RUNTIMES, command


def test_precision_choices_are_the_policy_requests():
    from poster.precision import REQUESTS

    for command in ("test", "train", "predict", "benchmark", "serve"):
        assert tuple(_option(_subparsers()[command], "--precision").choices) == REQUESTS, command


def _defaults_by_dest(parser: argparse.ArgumentParser) -> dict[str, object]:
    return {a.dest: a.default for a in parser._actions if a.option_strings and a.dest != "help"}


def test_predict_flag_defaults_are_the_librarys():
    """Every predict flag that sets a batch option defaults to BatchOptions' value, and the
    recogniser's and detector's knobs to their constructors' defaults."""
    import dataclasses
    import inspect

    from poster.face.detect import YuNetDetector
    from poster.inference.options import BatchOptions
    from poster.inference.recognizer import Recognizer

    flags = _defaults_by_dest(_subparsers()["predict"])
    by_field = {"fmt": "format", "smoothing": "smooth"}  # flag names that differ from the field's
    for field in dataclasses.fields(BatchOptions):
        assert flags[by_field.get(field.name, field.name)] == field.default, field.name
    recognizer = inspect.signature(Recognizer.__init__).parameters
    for name in ("batch_size", "min_face", "crop_size"):
        assert flags[name] == recognizer[name].default, name
    assert flags["score_threshold"] == inspect.signature(YuNetDetector.__init__).parameters["score_threshold"].default
    assert flags["precision"] == "auto" and flags["runtime"] == "auto"


def test_serve_flag_defaults_are_serveconfigs():
    import dataclasses

    from poster.serve.config import ServeConfig

    flags = _defaults_by_dest(_subparsers()["serve"])
    config = ServeConfig()
    by_flag = {"cors_origins": "cors_origin"}
    for field in dataclasses.fields(ServeConfig):
        if field.name == "max_files":
            continue  # a limit of the batch route with no flag of its own
        value = getattr(config, field.name)
        flag = flags[by_flag.get(field.name, field.name)]
        assert (flag * 1e6 if field.name == "max_pixels" else flag) == value, field.name


def test_the_program_freezes_the_collector_after_its_command_and_main_does_not(monkeypatch):
    """``poster`` and ``python -m poster`` run ``console_main``: the command, then ``gc.freeze()``
    (the interpreter's exit then skips walking torch's objects); ``main()`` alone leaves gc as is."""
    import gc
    import tomllib
    from pathlib import Path

    import poster.cli as cli

    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["poster"] == "poster.cli:console_main"
    assert "console_main()" in (root / "poster" / "__main__.py").read_text()
    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 3)
    assert cli.console_main() == 3 and calls == ["main", "freeze"]
    monkeypatch.undo()
    frozen = gc.get_freeze_count()
    assert cli.main(["models"]) == 0 and gc.get_freeze_count() == frozen


def test_python_m_poster_runs_a_command_to_the_end(tmp_path):
    out = subprocess.run([sys.executable, "-m", "poster", "models"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "poster_v1" in out.stdout, out.stderr


def test_a_closed_pipe_stops_the_program_quietly():
    """``poster models | head``: the reader leaves early; no traceback, the shell's status 141."""
    child = ("import sys\nimport poster.commands.models as models\n"
             "models.run = lambda args: [print('x' * 100) for _ in range(100_000)] and 0\n"
             "from poster.cli import console_main\nsys.argv = ['poster', 'models']\nsys.exit(console_main())\n")
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"xxx")
    proc.stdout.close()  # the reader leaves
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err and "Broken pipe" not in err, err
