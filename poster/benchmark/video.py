"""A synthetic test video with known faces, and poster's video path measured on it (``poster benchmark --video``).

``make_face_video`` pastes a face photo (by default the repository's ``examples/astronaut.jpg``) into
640x480 frames over a textured background: face 0 moves left and right and tilts a little, an
optional face 1 (the mirror image, smaller) moves up and down, and for ``occlusion`` frames a grey
bar hides face 0 completely, so that its track id must survive the gap.  ``face_boxes`` tells
where each face really is in each frame.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..errors import PosterError

__all__ = ["SyntheticVideo", "make_face_video", "VideoBenchmarkOptions", "run_video_benchmark", "format_video_report"]

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_FACE_IMAGE = ROOT / "examples" / "astronaut.jpg"
_HEAD = (30, 230, 140, 320)  # rows, columns of the astronaut's head in examples/astronaut.jpg (512x512)


@dataclass(frozen=True)
class SyntheticVideo:
    path: Path
    frames: int
    fps: float
    size: tuple[int, int]
    faces: int
    occluded: tuple[int, int]  # [first, last) frame where face 0 is hidden


def _background(size: tuple[int, int]) -> np.ndarray:
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 90 + 40 * np.sin(xx / 37.0) * np.cos(yy / 53.0) + 0.08 * xx
    return np.clip(np.stack([base, base * 0.9 + 12, base * 1.1 - 10], axis=2), 0, 255).astype(np.uint8)


def _paste(frame: np.ndarray, head: np.ndarray, x: int, y: int, angle: float) -> tuple[int, int, int, int]:
    hh, hw = head.shape[:2]
    m = cv2.getRotationMatrix2D((hw / 2, hh / 2), angle, 1.0)
    patch = cv2.warpAffine(head, m, (hw, hh), borderMode=cv2.BORDER_REPLICATE)
    frame[y:y + hh, x:x + hw] = patch
    return x, y, hw, hh


def make_face_video(path: str | os.PathLike, frames: int = 100, fps: float = 25.0, size: tuple[int, int] = (640, 480),
                    faces: int = 1, occlusion: tuple[int, int] | None = None,
                    face_image: str | os.PathLike | None = None) -> SyntheticVideo:
    """Write the video (MJPEG ``.avi``, which every OpenCV build writes and reads back exactly
    enough, or ``.mp4`` with ``mp4v`` when ``path`` says so) and describe it.  ``occlusion``:
    ``(first, last)`` frames where face 0 is hidden (default: none)."""
    image = cv2.imread(str(face_image or DEFAULT_FACE_IMAGE))
    if image is None:
        raise PosterError(f"cannot read the face image {face_image or DEFAULT_FACE_IMAGE}")
    r0, r1, c0, c1 = _HEAD if image.shape[:2] == (512, 512) else (0, image.shape[0], 0, image.shape[1])
    head = image[r0:r1, c0:c1]
    scale = min(size) / 480 * 200 / head.shape[0]
    head = cv2.resize(head, (round(head.shape[1] * scale), round(head.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    second = cv2.resize(head[:, ::-1], None, fx=0.7, fy=0.7, interpolation=cv2.INTER_AREA)
    path = Path(path)
    fourcc = "mp4v" if path.suffix.lower() == ".mp4" else "MJPG"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise PosterError(f"cannot write {path} ({fourcc})")
    background = _background(size)
    w, h = size
    hidden = occlusion or (-1, -1)
    try:
        for i in range(frames):
            frame = background.copy()
            phase = 2 * math.pi * i / max(frames, 1)
            x = int((w * 0.35 if faces > 1 else w / 2) - head.shape[1] / 2 + w * 0.12 * math.sin(phase))
            y = int(h / 2 - head.shape[0] / 2 + h * 0.03 * math.sin(2 * phase))
            bx, by, bw, bh = _paste(frame, head, x, y, 8.0 * math.sin(3 * phase))
            if faces > 1:
                y2 = int(h / 2 - second.shape[0] / 2 + h * 0.15 * math.cos(phase))
                _paste(frame, second, int(w * 0.78 - second.shape[1] / 2), y2, 0.0)
            if hidden[0] <= i < hidden[1]:
                frame[max(0, by - 20):by + bh + 20, max(0, bx - 20):bx + bw + 20] = 128
            writer.write(frame)
    finally:
        writer.release()
    return SyntheticVideo(path, frames, float(fps), size, faces, tuple(hidden))


# ---------------------------------------------------------------------------------------------
# The benchmark


@dataclass
class VideoBenchmarkOptions:
    frames: int = 150
    faces: int = 1
    size: tuple[int, int] = (640, 480)
    detect_every: int = 5
    peer: bool = True  # the ``fer`` package side by side, where it can be imported
    peer_path: str | None = None  # a folder put first on the peer process's path (fer and its OpenCV)
    photos: int = 10  # predictions on one photo per side, for the photo comparison (3x as many in the folder row)
    precision: str = "auto"  # as `poster predict`: bf16 where the CPU has bf16 instructions, else fp32
    face_image: str | None = None
    json_path: str | None = None


def _cpu_seconds() -> float:
    return time.process_time()  # this process, all its threads: less affected by other processes than wall time


def _measure(run_frames: Callable[[], int]) -> dict[str, float]:
    wall, cpu = time.perf_counter(), _cpu_seconds()
    frames = run_frames()
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    return {"frames": frames, "frames_per_s": frames / wall if wall > 0 else 0.0,
            "cpu_ms_per_frame": 1e3 * cpu / max(frames, 1), "wall_s": wall}


def _poster_side(rec: Any, video: Path, detect_every: int) -> tuple[dict[str, float], list[Any]]:
    results: list[Any] = []

    def run() -> int:
        prediction = rec.predict_video(video, detect_every=detect_every)
        results.extend(prediction)
        return len(results)

    return _measure(run), results


def _agreement(reference: list[Any], other: list[Any]) -> dict[str, float]:
    """Top label agreement and probability differences, face by face (same frame, same track)."""
    same = total = 0
    diffs: list[float] = []
    for a, b in zip(reference, other):
        by_track = {f.track: f for f in b.faces}
        for fa in a.faces:
            fb = by_track.get(fa.track)
            if fb is None:
                continue
            total += 1
            same += fa.label == fb.label
            diffs.append(max(abs(fa.probabilities[c] - fb.probabilities[c]) for c in fa.probabilities))
    faces_ref = sum(len(r.faces) for r in reference)
    faces_other = sum(len(r.faces) for r in other)
    return {"faces_compared": total, "faces_reference": faces_ref, "faces_tracked": faces_other,
            "top_label_agreement": same / total if total else 0.0,
            "max_prob_diff_median": float(np.median(diffs)) if diffs else 0.0,
            "max_prob_diff_p95": float(np.percentile(diffs, 95)) if diffs else 0.0,
            "max_prob_diff_max": float(max(diffs)) if diffs else 0.0}


def _fer_with_litert() -> Any:
    """The ``fer`` package's ``FER`` class.  Installed with TensorFlow it is used as is; without
    TensorFlow (which does not install on every machine), where ``ai-edge-litert`` is installed,
    its ``tf.lite.Interpreter`` is LiteRT's (the same interpreter, TensorFlow Lite's new name) and
    the peer's own code, Haar cascade and quantized model run unchanged."""
    import sys
    import types

    try:
        from fer.fer import FER

        return FER
    except ImportError:
        for name in [n for n in sys.modules if n == "fer" or n.startswith("fer.")]:
            del sys.modules[name]  # a half-imported package would hide the error below

    from ai_edge_litert.interpreter import Interpreter  # ImportError: no peer here

    tf = types.ModuleType("tensorflow")
    tf.lite = types.SimpleNamespace(Interpreter=Interpreter)
    keras = types.ModuleType("tensorflow.keras")
    models = types.ModuleType("tensorflow.keras.models")

    def load_model(*args: Any, **kwargs: Any) -> Any:
        raise ImportError("the Keras model needs TensorFlow; fer's default TFLite model does not")

    models.load_model = load_model
    keras.models = models
    tf.keras = keras
    modules = {"tensorflow": tf, "tensorflow.keras": keras, "tensorflow.keras.models": models}
    if "pkg_resources" not in sys.modules:
        try:
            import pkg_resources  # noqa: F401
        except ImportError:  # setuptools >= 81 has none: fer only asks it where its data files are
            import importlib.util

            shim = types.ModuleType("pkg_resources")
            shim.resource_filename = lambda package, name: str(
                Path(importlib.util.find_spec(package).origin).parent / name)
            modules["pkg_resources"] = shim
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        from fer.fer import FER
    finally:
        for name, module in saved.items():
            if module is None and name != "pkg_resources":
                sys.modules.pop(name, None)
    return FER


def _peer_measure(video: str, photo_path: str, photos: int) -> dict[str, Any]:
    """The peer's numbers, measured in the process that runs it (see ``peer_main``)."""
    start = time.perf_counter()
    FER = _fer_with_litert()
    detector = FER(mtcnn=False)
    photo = cv2.imread(photo_path)
    detector.detect_emotions(photo)  # its first call, like poster's, pays the engines' start
    startup = time.perf_counter() - start
    capture = cv2.VideoCapture(video)
    faces: list[int] = []

    def run() -> int:
        while True:
            ok, frame = capture.read()
            if not ok:
                return len(faces)
            faces.append(len(detector.detect_emotions(frame)))

    out: dict[str, Any] = {"available": True, "startup_s": startup, "video": _measure(run), "faces_found": sum(faces)}
    out["photo"] = _measure(lambda: sum(1 for _ in range(photos) if detector.detect_emotions(photo) is not None))
    out["photo_labels"] = [max(f["emotions"], key=f["emotions"].get) for f in detector.detect_emotions(photo)]
    import fer

    out["version"] = getattr(fer, "__version__", "?")
    out["opencv"] = cv2.__version__
    return out


def peer_main() -> None:
    """``python -c 'from poster.benchmark.video import peer_main; peer_main()' VIDEO PHOTO N``: the peer's
    numbers as one JSON line (a process of its own: fer needs an OpenCV with the Haar cascade
    detector, which OpenCV 5's main package no longer has, so its OpenCV may not be poster's)."""
    import json
    import sys

    video, photo, photos = sys.argv[1], sys.argv[2], int(sys.argv[3])
    try:
        out = _peer_measure(video, photo, photos)
    except (ImportError, AttributeError) as exc:
        out = {"available": False, "why": f"the fer package cannot run here: {exc}"}
    print("PEER " + json.dumps(out))


def _peer_side(video: Path, photo_path: str, photos: int, peer_path: str | None) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (peer_path, str(ROOT), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-c", "from poster.benchmark.video import peer_main; peer_main()", str(video),
                           photo_path, str(photos)], capture_output=True, text=True, env=env, timeout=1800)
    for line in done.stdout.splitlines():
        if line.startswith("PEER "):
            return json.loads(line[5:])
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return {"available": False, "why": f"the peer process failed: {tail}"}


def _one_worker_side(rec: Any, video: Path, detect_every: int, tracked: list[Any]) -> dict[str, Any] | None:
    """The same video path with one model batch at a time (as before model workers), where the
    default runs more; ``None`` where it already runs one."""
    if rec.resolved_model_workers() < 2:
        return None
    saved, rec.model_workers = rec.model_workers, 1
    try:
        numbers, results = _poster_side(rec, video, detect_every)
    finally:
        rec.model_workers = saved
    return {**numbers, "agreement_with_workers": _agreement(tracked, results)}


def _fp32_side(rec: Any, video: Path, photo: np.ndarray, detect_every: int,
               tracked: list[Any]) -> tuple[Any, dict[str, Any] | None]:
    """The fp32 recognizer and its numbers on the video, where the default runs in bf16 (a CPU with
    bf16 instructions): the exact function's speed and how far bf16 moved the predictions.  Where
    the default is fp32 already: ``(rec, None)``."""
    from ..inference.recognizer import Recognizer

    if rec.fast_inference is None or rec.fast_inference.precision == "fp32":
        return rec, None
    exact = Recognizer.from_checkpoint(None, fast=True, precision="fp32")
    exact.predict(photo, color="BGR")  # the first call pays each engine's one-off start, as rec's did
    numbers, results = _poster_side(exact, video, detect_every)
    return exact, {**numbers, "engine": exact.engine, "agreement_with_default": _agreement(results, tracked)}


def _traced_side(rec: Any, video: Path, detect_every: int, tracked: list[Any]) -> dict[str, Any] | None:
    """The same video path with the model as a verified traced graph (``use_traced_graph``: CPU
    fp32 only, within the golden tolerance of the model); ``None`` where it does not apply.  Last,
    because it changes ``rec`` for the rest of the run."""
    from ..inference.accelerate import use_traced_graph

    fast = getattr(rec, "fast_inference", None)
    cpu = _cpu_seconds()
    if fast is None or not use_traced_graph(fast):
        return None
    trace_cpu_s = _cpu_seconds() - cpu
    numbers, results = _poster_side(rec, video, detect_every)
    return {**numbers, "trace_cpu_s": trace_cpu_s, "agreement_with_untraced": _agreement(tracked, results)}


def run_video_benchmark(o: VideoBenchmarkOptions) -> dict[str, Any]:
    """poster's video path (faces followed between detections), the per-frame path (a full
    detection in every frame, as before issue 19) and, where it can be imported, the ``fer``
    package, on the same synthetic video; then one photo through poster and the peer."""
    import platform
    import tempfile

    import torch

    from .runner import cpu_name
    from ..inference.recognizer import Recognizer

    report: dict[str, Any] = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
                                          "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
                                          "load_average_before": os.getloadavg()},
                              "video": {"frames": o.frames, "faces": o.faces, "size": list(o.size)}}
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_face_video(Path(tmp) / "clip.avi", frames=o.frames, size=o.size, faces=o.faces,
                               face_image=o.face_image)
        start = time.perf_counter()
        rec = Recognizer.from_checkpoint(None, fast=True, precision=o.precision)  # as `poster predict` opens it
        photo = cv2.imread(str(o.face_image or DEFAULT_FACE_IMAGE))
        rec.predict(photo, color="BGR")  # the first call pays the one-off start of each engine
        report["poster_startup_s"] = time.perf_counter() - start
        followed, tracked = _poster_side(rec, clip.path, o.detect_every)
        per_frame, reference = _poster_side(rec, clip.path, 1)
        report["poster"] = {"detect_every": o.detect_every, "model_workers": rec.resolved_model_workers(),
                            "engine": rec.engine, **followed}
        report["one_worker"] = _one_worker_side(rec, clip.path, o.detect_every, tracked)
        report["per_frame"] = per_frame
        report["agreement"] = _agreement(reference, tracked)
        report["poster_photo"] = _measure(lambda: sum(1 for _ in range(o.photos) if rec.predict(photo, color="BGR")))
        # a folder of photos as `poster predict` runs it: prepared ahead on threads, faces batched
        report["poster_photos"] = _measure(lambda: sum(1 for _ in rec.predict_many([photo] * (3 * o.photos), color="BGR")))
        report["poster_photo_labels"] = [f.label for f in rec.predict(photo, color="BGR").faces]
        exact, report["fp32"] = _fp32_side(rec, clip.path, photo, o.detect_every, tracked)
        report["traced"] = _traced_side(exact, clip.path, o.detect_every, tracked)  # last: it changes `exact`
        if o.peer:
            report["peer"] = _peer_side(clip.path, str(o.face_image or DEFAULT_FACE_IMAGE), o.photos, o.peer_path)
    report["machine"]["load_average_after"] = os.getloadavg()
    if o.json_path:
        import json

        from ..fileio import atomic_write_text

        atomic_write_text(o.json_path, json.dumps(report, indent=1) + "\n")
    return report


def format_video_report(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"video benchmark: {r['video']['frames']} frames {r['video']['size'][0]}x{r['video']['size'][1]}, "
             f"{r['video']['faces']} face(s); {m['cpu']}, {m['cores']} cores, torch {m['torch']} "
             f"({m['torch_threads']} threads), load average {m['load_average_before'][0]:.1f} -> "
             f"{m['load_average_after'][0]:.1f}",
             f"poster runs the {r['poster']['engine']}",
             f"{'':38} {'frames/s':>9} {'CPU-ms/frame':>13}"]

    def row(name: str, d: dict[str, float]) -> str:
        return f"{name:38} {d['frames_per_s']:9.1f} {d['cpu_ms_per_frame']:13.1f}"

    lines.append(row(f"poster (detect every {r['poster']['detect_every']})", r["poster"])
                 + f"   ({r['agreement']['faces_tracked']} faces found in {r['poster']['frames']} frames)")
    if r.get("one_worker"):
        lines.append(row("poster, one model batch at a time", r["one_worker"])
                     + f"   (default: {r['poster']['model_workers']} at once)")
    lines.append(row("poster, detection in every frame", r["per_frame"]))
    if r.get("fp32"):
        a = r["fp32"]["agreement_with_default"]
        lines.append(row("poster, fp32 (the exact function)", r["fp32"])
                     + f"   (default's top label agrees {100 * a['top_label_agreement']:.1f}%, "
                     f"max difference {a['max_prob_diff_max']:.4f})")
    if r.get("traced"):
        lines.append(row("poster, fp32 traced (long/live runs)", r["traced"])
                     + f"   (tracing cost {r['traced']['trace_cpu_s']:.1f} CPU-s once)")
    peer = r.get("peer")
    if peer and peer.get("available"):
        lines.append(row(f"fer {peer['version']} (Haar + TFLite)", peer["video"])
                     + f"   ({peer['faces_found']} faces found in {peer['video']['frames']} frames)")
    lines.append(row("photo: poster (per photo)", r["poster_photo"]))
    if r.get("poster_photos"):
        lines.append(row("photos: poster (a folder's pipeline)", r["poster_photos"]))
    if peer and peer.get("available"):
        lines.append(row("photo: fer (per photo)", peer["photo"]))
        lines.append(f"start-up: poster {r['poster_startup_s']:.2f} s, fer {peer['startup_s']:.2f} s")
    else:
        lines.append(f"start-up: poster {r['poster_startup_s']:.2f} s" + (f"; peer: {peer['why']}" if peer else ""))
    a = r["agreement"]
    lines.append(f"followed vs per-frame: {a['faces_compared']} faces compared ({a['faces_tracked']} vs "
                 f"{a['faces_reference']} found), top label agrees {100 * a['top_label_agreement']:.1f}%, "
                 f"max probability difference median {a['max_prob_diff_median']:.4f}, "
                 f"p95 {a['max_prob_diff_p95']:.4f}, max {a['max_prob_diff_max']:.4f}")
    return "\n".join(lines)
