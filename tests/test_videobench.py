"""``poster benchmark --video`` runs end to end and reports what it measured (no timing is checked)."""

from __future__ import annotations

import json

import pytest

from poster.cli import main
from poster.benchmark.video import SyntheticVideo, make_face_video, peer_main


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_synthetic_video_has_its_frames_and_hides_face_0(tmp_path):
    import cv2

    clip = make_face_video(tmp_path / "c.avi", frames=6, size=(320, 240), occlusion=(2, 4))
    assert isinstance(clip, SyntheticVideo) and clip.occluded == (2, 4)
    cap = cv2.VideoCapture(str(clip.path))
    frames = [cap.read()[1] for _ in range(6)]
    assert all(f is not None and f.shape == (240, 320, 3) for f in frames)
    grey = [(abs(f.astype(int) - 128) < 3).mean() for f in frames]
    assert grey[2] > grey[1] + 0.1 and grey[3] > grey[4] + 0.1  # the bar over the face


@pytest.mark.parametrize("bf16_cpu", ["0", "1"], ids=["fp32 CPU", "bf16 CPU (faked)"])
def test_video_benchmark_quick_run(tmp_path, capsys, monkeypatch, bf16_cpu):
    monkeypatch.setenv("POSTER_CPU_BF16", bf16_cpu)  # what `poster predict` runs depends on the CPU: fake each kind
    out = tmp_path / "video.json"
    assert main(["benchmark", "--video", "--frames", "4", "--photos", "1", "--no-peer", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "CPU-ms/frame" in printed and "followed vs per-frame" in printed and "a folder's pipeline" in printed
    report = json.loads(out.read_text())
    sides = ("poster", "per_frame", "poster_photo", "poster_photos", "traced") + (("fp32",) if bf16_cpu == "1" else ())
    for side in sides:
        assert report[side]["frames"] > 0 and report[side]["cpu_ms_per_frame"] > 0 and report[side]["frames_per_s"] > 0
    assert report["agreement"]["faces_compared"] == 4 and report["agreement"]["top_label_agreement"] == 1.0
    assert "peer" not in report and report["machine"]["cores"] >= 1
    precision = "bf16" if bf16_cpu == "1" else "fp32"
    assert f"poster runs the PyTorch {precision} fast path" in printed and precision in report["poster"]["engine"]
    if bf16_cpu == "1":  # the exact function beside the default, and how far bf16 moved the predictions
        assert "fp32 (the exact function)" in printed and "fp32" in report["fp32"]["engine"]
        assert report["fp32"]["agreement_with_default"]["faces_compared"] == 4
        assert report["fp32"]["agreement_with_default"]["max_prob_diff_max"] < 0.05
    else:
        assert report["fp32"] is None and "exact function" not in printed


def test_peer_without_fer_says_why(monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_fer(name, *args, **kwargs):
        if name.split(".")[0] in ("fer", "ai_edge_litert"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_fer)
    monkeypatch.setattr("sys.argv", ["x", "missing.avi", "missing.jpg", "1"])
    peer_main()
    line = capsys.readouterr().out.strip()
    assert line.startswith("PEER ") and json.loads(line[5:])["available"] is False
