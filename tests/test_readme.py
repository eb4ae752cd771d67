"""The README's code runs as written.

Every ```python block is executed as a reader pastes it: alone, in a fresh namespace, in a scratch
folder that holds what the README refers to: the repository's ``examples/``, and stand-ins in the authors' formats for
the official files (``checkpoint/rafdb_best.pth``, ``ir50.pth``, ``mobilefacenet_model_best.pth.tar``)
and for the user's media (``photo.jpg``, ``group/``, ``clip.mp4``, ``aligned_faces/``). Every
command line of the ```bash blocks is run the same way (``.venv/bin/poster`` as ``python -m poster``)
unless it is one of the kinds listed in ``NOT_RUN_HERE``, each with the place it is tested instead.
A ``print`` line whose comment shows a value must print that value (``readme_blocks``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from readme_blocks import assert_prints_as_commented, run_block

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
ENV = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", "OMP_NUM_THREADS": "1",
       "POSTER_OFFLINE": "1"}

# Command lines this test does not run, and why (where they are run instead).
NOT_RUN_HERE = [
    (re.compile(r"^python3 -m venv|pip install"), "the set-up itself (CI runs it: .ci/run)"),
    (re.compile(r"-m pytest"), "the test command itself"),
    (re.compile(r"^torchrun"), "several processes (tests/test_trainer.py, tests/test_predict.py run torchrun)"),
    (re.compile(r"(^|\s)\.\.\.(\s|$)"), "a placeholder line ('...')"),
    (re.compile(r"predict 0\b"), "a webcam"),
    (re.compile(r"--data data/"), "needs a dataset (tests/test_cli_test.py, tests/test_trainer.py use stand-ins)"),
    (re.compile(r"poster serve|curl |127\.0\.0\.1:|localhost:"),
     "a server (tests/test_serve.py runs the README's server examples)"),
    (re.compile(r"(weights|-c|load_model\(\")\s*\(?\"?poster_v[12]\."),
     "fetches an official file (tests/test_hub.py, against a local stand-in of Google Drive)"),
]


def _blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _command_lines() -> list[str]:
    lines = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.split("  #")[0].strip())
    return lines


def _why_not_run(text: str) -> str | None:
    return next((why for pattern, why in NOT_RUN_HERE if pattern.search(text)), None)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory) -> Path:
    """A folder holding everything the README's examples name."""
    from golden_fill import fill_state_dict, load_manifest
    from release_standins import write_standin

    box = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", box / "examples")
    photo = cv2.imread(str(ROOT / "examples" / "astronaut.jpg"))
    cv2.imwrite(str(box / "photo.jpg"), photo)
    (box / "group").mkdir()
    cv2.imwrite(str(box / "group" / "a.jpg"), photo)
    cv2.imwrite(str(box / "group" / "b.png"), cv2.flip(photo, 1))
    (box / "aligned_faces").mkdir()
    h, w = photo.shape[:2]
    face = photo[int(h * 0.05):int(h * 0.45), int(w * 0.35):int(w * 0.65)]
    cv2.imwrite(str(box / "aligned_faces" / "face.png"), cv2.resize(face, (100, 100)))
    writer = cv2.VideoWriter(str(box / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5, (w - w % 2, h - h % 2))
    for _ in range(3):
        writer.write(np.ascontiguousarray(photo[: h - h % 2, : w - w % 2]))
    writer.release()
    # the golden tests' deterministic fill: finite, varied outputs (the quick stand-in fill overflows V1 large)
    write_standin("poster_v1_large.rafdb", box / "checkpoint" / "rafdb_best.pth",
                  fill_state_dict(load_manifest("poster_v1_rafdb_large_7cls"), 1))
    write_standin("ir50", box / "ir50.pth")
    write_standin("mobilefacenet68", box / "mobilefacenet_model_best.pth.tar",
                  fill_state_dict(load_manifest("mobilefacenet_136"), 3))
    return box


def test_every_command_line_is_classified():
    lines = _command_lines()
    assert lines, "no ```bash blocks found in the README"
    ran = [line for line in lines if _why_not_run(line) is None]
    assert len(ran) >= 5, ran  # the main job, predict, test/export of a file, weights list ...


def _run_line(line: str, sandbox: Path) -> None:
    args = shlex.split(line)
    if args[0] in (".venv/bin/poster", "poster"):
        args = [sys.executable, "-m", "poster", *args[1:]]
    elif args[0] == ".venv/bin/python":
        args = [sys.executable, *args[1:]]
    proc = subprocess.run(args, cwd=sandbox, env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"README line failed: {line}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, line


@pytest.mark.slow
def test_readme_command_lines_run(sandbox):
    for line in _command_lines():
        if _why_not_run(line) is None:
            _run_line(line, sandbox)


def test_python_block_comments_are_checked():
    """The claims the README's blocks make about their output are found (so they are held to it)."""
    from readme_blocks import claim_matches, claimed_prints

    claims = [claim for block in _blocks("python") for claim in claimed_prints(block).values()]
    assert len(claims) >= 4, claims
    assert claim_matches("('angry', ..., 'surprise') RGB", "('angry', 'fear', 'surprise') RGB")
    assert not claim_matches("[x, y, w, h] happy 0.87", "(178.05668, 62.63928, 90.45204, 113.64745) happy 0.87")
    assert not claim_matches("[('happy', 0.865176)]", "[('happy', 0.865921)]")


@pytest.mark.slow
def test_readme_python_blocks_run_alone_and_print_what_they_say(sandbox, monkeypatch):
    monkeypatch.chdir(sandbox)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    if not (sandbox / "tiny.onnx").exists():  # the README's export line writes the file a block opens
        _run_line(next(line for line in _command_lines() if "-o tiny.onnx" in line), sandbox)
    ran = checked = 0
    for number, block in enumerate(_blocks("python"), start=1):
        if _why_not_run(block) is not None:
            continue
        name = f"README.md python block {number}"
        checked += assert_prints_as_commented(block, run_block(block, name), name)
        ran += 1
    assert ran >= 4, "expected the bundled-model, official-file, OpenCV and ONNX examples to run"
    assert checked >= 3, "expected the examples' printed values to be checked"


def test_ci_runs_the_readmes_set_up_and_test_commands():
    """CI tests what a new user gets: .ci/run runs the README's set-up command and then its test
    command as written, and installs nothing else (a torch pinned beforehand would be tested instead
    of the one the set-up resolves)."""
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    lines = _command_lines()
    set_up = next(line for line in lines if line.startswith("python3 -m venv"))
    test = next(line for line in lines if "-m pytest" in line)
    assert set_up in ci and test in ci and ci.index(set_up) < ci.index(test), (set_up, test, ci)
    assert [line for line in ci if "pip install" in line] == [set_up], ci
