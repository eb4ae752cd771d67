"""``poster.Recognizer`` and ``poster predict`` on a compact model.

The models here are untrained (seeded) ``poster_v1_tiny`` networks whose head is scaled up so the
predictions depend clearly on the picture.  Real faces: ``skimage.data.astronaut()`` (public
domain, inside scikit-image) and FER2013 faces from ``../shared`` (skipped when absent).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import poster
from poster.precision import native_bf16
from poster.cli import main
from poster.data import FER2013_CLASSES, EvalTransform, load_image
from poster.errors import CheckpointError, PosterError
from poster.inference.drawing import annotate
from poster.inference.recognizer import Recognizer, default_checkpoint
from poster.inference.results import FaceResult, ImageResult


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(channel_order: str = "RGB", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = poster.create_model("poster_v1_tiny", num_classes=7)
    with torch.no_grad():
        model.head.linear.weight.mul_(4)
    model.meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=FER2013_CLASSES,
                                  input=poster.InputConfig(channel_order=channel_order),
                                  arch_options={"token_mixing": False})
    return model.eval()


@pytest.fixture(scope="module")
def model_rgb():
    return _tiny("RGB")


@pytest.fixture(scope="module")
def model_bgr():
    return _tiny("BGR", seed=1)


@pytest.fixture(scope="module")
def astronaut_rgb() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A saved compact model for the command line."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    model = _tiny("RGB")
    poster.save_checkpoint(path, model, model.meta)
    return path


def _reference_probs(model, arrays_in_model_order: list[np.ndarray]) -> np.ndarray:
    """The model on its own evaluation transform, no Recognizer involved."""
    tf = EvalTransform(model.meta.input)
    with torch.inference_mode():
        logits = model(torch.stack([tf(a) for a in arrays_in_model_order]))
    return torch.softmax(logits.float(), dim=1).numpy()


def _probs(result: ImageResult) -> np.ndarray:
    return np.array([[f.probabilities[c] for c in FER2013_CLASSES] for f in result.faces])


# ---------------------------------------------------------------------------------------------
# Python API


def test_detector_none_matches_the_eval_transform_on_fer2013(model_rgb, fer2013_dir):
    paths = sorted((fer2013_dir / "val").glob("*/*.jpg"))[::700][:5]
    assert len(paths) == 5
    rec = Recognizer.from_checkpoint(model_rgb, detector="none", batch_size=3)
    results = list(rec.predict_many(paths))
    expected = _reference_probs(model_rgb, [load_image(p, "RGB") for p in paths])
    assert [r.source for r in results] == [str(p) for p in paths]
    for r, p in zip(results, expected):
        assert r.error is None and len(r.faces) == 1
        face = r.faces[0]
        assert face.box == (0.0, 0.0, 48.0, 48.0) and face.landmarks is None
        np.testing.assert_allclose(_probs(r)[0], p, rtol=0, atol=2e-6)
        assert face.label == FER2013_CLASSES[int(np.argmax(p))]
        assert face.confidence == pytest.approx(float(p.max()), abs=2e-6)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_detector_none_uses_the_checkpoint_channel_order(model_rgb, model_bgr, tmp_path, astronaut_rgb, order):
    """A colour picture: the Recognizer must feed the channel order recorded with the checkpoint."""
    model = model_rgb if order == "RGB" else model_bgr
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut_rgb[30:230, 130:330], cv2.COLOR_RGB2BGR))
    got = _probs(Recognizer.from_checkpoint(model, detector="none").predict(path))[0]
    right = _reference_probs(model, [load_image(path, order)])[0]
    wrong = _reference_probs(model, [load_image(path, "BGR" if order == "RGB" else "RGB")])[0]
    np.testing.assert_allclose(got, right, atol=2e-6)
    assert np.abs(got - wrong).max() > 1e-3  # the test can tell the orders apart


def test_numpy_bgr_and_rgb_give_identical_results(model_rgb, astronaut_rgb):
    rec = Recognizer.from_checkpoint(model_rgb)
    from_rgb = rec.predict(astronaut_rgb, color="RGB")
    from_bgr = rec.predict(np.ascontiguousarray(astronaut_rgb[:, :, ::-1]), color="BGR")
    assert len(from_rgb.faces) == 1
    assert from_rgb.faces == from_bgr.faces  # boxes, landmarks, scores and probabilities
    from_pil = rec.predict(Image.fromarray(astronaut_rgb))
    np.testing.assert_allclose(_probs(from_pil), _probs(from_rgb), atol=1e-7)
    wrong = rec.predict(astronaut_rgb, color="BGR")  # a mistake: the channels are swapped
    assert len(wrong.faces) == 1 and np.abs(_probs(wrong) - _probs(from_rgb)).max() > 1e-3
    with pytest.raises(ValueError):
        rec.predict(astronaut_rgb, color="rgb")


def test_colour_arrays_must_say_their_channel_order(model_rgb, astronaut_rgb):
    """A BGR OpenCV array passed without color= used to be read as RGB and silently changed the
    probabilities; now every 3- and 4-channel array must name its order."""
    from poster.errors import ColorOrderError

    rec = Recognizer.from_checkpoint(model_rgb, detector="none")
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    bgra = np.concatenate([bgr, np.full(bgr.shape[:2] + (1,), 255, np.uint8)], axis=2)
    for array in (bgr, bgra):
        with pytest.raises(ColorOrderError, match='color="BGR".*OpenCV.*color="RGB"'):
            rec.predict(array)
    with pytest.raises(ColorOrderError):  # also from the background thread of predict_many
        list(rec.predict_many([bgr]))
    # Grey arrays, PIL images and encoded bytes carry no ambiguity and need no color=.
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_allclose(_probs(rec.predict(grey)), _probs(rec.predict(np.dstack([grey] * 3), color="BGR")))
    np.testing.assert_allclose(_probs(rec.predict(Image.fromarray(astronaut_rgb))),
                               _probs(rec.predict(bgr, color="BGR")), atol=1e-7)
    png = cv2.imencode(".png", bgr)[1].tobytes()
    np.testing.assert_allclose(_probs(rec.predict(png)), _probs(rec.predict(bgra, color="BGR")), atol=1e-7)


def test_face_result_fields(model_rgb, astronaut_rgb):
    result = Recognizer.from_checkpoint(model_rgb).predict(astronaut_rgb, color="RGB", keep_image=True)
    face = result.faces[0]
    assert isinstance(face, FaceResult) and result.frame is None and result.ok
    assert list(face.probabilities) == list(FER2013_CLASSES)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-6)
    assert face.label == max(face.probabilities, key=face.probabilities.get)
    assert face.top_k(2)[0] == (face.label, face.confidence) and len(face.top_k(2)) == 2
    assert len(face.landmarks) == 5 and 0.5 < face.score <= 1.0
    assert result.image.shape == astronaut_rgb.shape
    d = result.to_dict()
    json.dumps(d)
    assert d["num_faces"] == 1 and d["faces"][0]["label"] == face.label
    drawn = annotate(result.image, result, top_k=3, class_names=FER2013_CLASSES)
    assert drawn.shape == result.image.shape and not np.array_equal(drawn, result.image)


def test_predict_many_batches_faces_across_images_in_order(model_rgb, astronaut_rgb, tmp_path):
    calls = []

    def backend(batch):  # a backend that returns numpy, like an ONNX Runtime session
        calls.append(batch.shape[0])
        with torch.inference_mode():
            return model_rgb(batch).numpy()

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    grey = np.full((120, 160, 3), 128, np.uint8)
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    items = [astronaut_rgb, grey, ("flipped", astronaut_rgb[:, ::-1]), corrupt, astronaut_rgb]
    rec = Recognizer(backend, model_rgb.meta, batch_size=2)
    results = list(rec.predict_many(items, color="RGB"))
    assert [r.source for r in results] == ["<array #0>", "<array #1>", "flipped", str(corrupt), "<array #4>"]
    assert [len(r.faces) for r in results] == [1, 0, 1, 0, 1]
    assert results[3].error and "corrupt.jpg" in results[3].error
    assert all(r.error is None for i, r in enumerate(results) if i != 3)
    assert calls == [2, 1]  # three faces from three images: one full batch, then the rest
    single = rec.predict(bgr, color="BGR")
    np.testing.assert_allclose(_probs(results[0]), _probs(single), atol=1e-6)
    np.testing.assert_allclose(_probs(results[4]), _probs(single), atol=1e-6)
    with pytest.raises(PosterError):
        rec.predict(corrupt)


def test_backend_alone_with_meta(model_rgb, astronaut_rgb):
    def backend(batch):
        with torch.inference_mode():
            return model_rgb(batch)

    alone = Recognizer(backend, model_rgb.meta, detector="none")
    assert alone.model is None
    np.testing.assert_allclose(_probs(alone.predict(astronaut_rgb, color="RGB")),
                               _probs(Recognizer.from_checkpoint(model_rgb, detector="none").predict(astronaut_rgb, color="RGB")),
                               atol=1e-7)
    bad = Recognizer(lambda b: torch.zeros(len(b), 3), model_rgb.meta, detector="none")
    with pytest.raises(PosterError, match="shape"):
        bad.predict(astronaut_rgb, color="RGB")


def test_min_face_and_custom_detector(model_rgb, astronaut_rgb):
    assert Recognizer.from_checkpoint(model_rgb, min_face=300).predict(astronaut_rgb, color="RGB").faces == []

    class Halves:  # a detector with boxes only: the left and right halves of the picture
        def detect(self, image_bgr):
            h, w = image_bgr.shape[:2]
            return [poster.face.Face((0, 0, w // 2, h)), poster.face.Face((w // 2, 0, w - w // 2, h))]

    result = Recognizer.from_checkpoint(model_rgb, detector=Halves()).predict(astronaut_rgb, color="RGB")
    assert [f.box[0] for f in result.faces] == [0.0, 256.0] and result.faces[1].index == 1


def test_crop_size_and_grayscale(model_rgb, astronaut_rgb):
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    rec = Recognizer.from_checkpoint(model_rgb)
    faces = rec.detector.detect(bgr)
    assert rec.crops(bgr, faces)[0].shape == (100, 100, 3)
    assert Recognizer.from_checkpoint(model_rgb, crop_size=None).crops(bgr, faces)[0].shape == (224, 224, 3)
    grey = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    as_grey = Recognizer.from_checkpoint(model_rgb, detector="none", grayscale=True).predict(bgr, color="BGR")
    plain = Recognizer.from_checkpoint(model_rgb, detector="none").predict(grey, color="BGR")
    np.testing.assert_allclose(_probs(as_grey), _probs(plain), atol=1e-7)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_grayscale_recorded_in_the_checkpoint_is_applied_by_default(astronaut_rgb, tmp_path, order):
    """A model trained on grey faces says so in its metadata; prediction then greys colour faces
    (overridable), and the flag survives a save/load round trip."""
    import dataclasses

    model = _tiny(order)
    model.meta = dataclasses.replace(model.meta, input=dataclasses.replace(model.meta.input, grayscale=True))
    poster.save_checkpoint(tmp_path / "grey.pth", model, model.meta)
    loaded = poster.load_model(tmp_path / "grey.pth")
    assert loaded.meta.input.grayscale is True
    bgr = np.ascontiguousarray(astronaut_rgb[:, :, ::-1])
    grey = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    by_meta = Recognizer.from_checkpoint(loaded, detector="none").predict(bgr, color="BGR")
    plain = _tiny(order)  # same weights, colour metadata
    on_grey = Recognizer.from_checkpoint(plain, detector="none").predict(grey, color="BGR")
    np.testing.assert_allclose(_probs(by_meta), _probs(on_grey), atol=1e-7)
    colour = Recognizer.from_checkpoint(loaded, detector="none", grayscale=False).predict(bgr, color="BGR")
    assert not np.allclose(_probs(colour), _probs(by_meta), atol=1e-4)
    np.testing.assert_allclose(_probs(colour), _probs(Recognizer.from_checkpoint(plain, detector="none").predict(bgr, color="BGR")),
                               atol=1e-7)
    with pytest.raises(ValueError, match="grayscale must be a bool"):
        poster.InputConfig(grayscale="yes")


def test_missing_bundled_model_and_model_without_meta_are_clear_errors(monkeypatch, tmp_path):
    import poster.checkpoint.releases as releases

    monkeypatch.setattr(releases, "BUNDLED_MODEL", tmp_path / "gone.pth")
    with pytest.raises(CheckpointError, match="bundled model .*gone.pth is missing"):
        default_checkpoint()
    with pytest.raises(CheckpointError, match="is missing"):
        Recognizer.from_checkpoint(None)
    bare = poster.create_model("poster_v1_tiny", num_classes=7)
    with pytest.raises(CheckpointError, match="meta"):
        Recognizer.from_checkpoint(bare)


def test_predict_many_is_lazy_and_stops_its_thread(model_rgb):
    import itertools
    import threading

    grey = np.full((48, 48, 3), 128, np.uint8)
    rec = Recognizer.from_checkpoint(model_rgb, detector="none", batch_size=2)
    before = threading.active_count()
    results = rec.predict_many(itertools.repeat(grey), color="BGR")  # endless input: only what is asked for is done
    first = list(itertools.islice(results, 3))
    assert [len(r.faces) for r in first] == [1, 1, 1]
    results.close()
    for _ in range(100):
        if threading.active_count() <= before:
            break
        threading.Event().wait(0.05)
    assert threading.active_count() <= before


def test_ordered_map_keeps_order_bounds_the_work_ahead_and_raises_in_place():
    import threading
    import time

    from poster.inference.prefetch import ordered_map

    started, lock = [], threading.Lock()

    def slow_square(i):
        with lock:
            started.append(i)
        time.sleep(0.02 * (i % 3))  # later items finish first
        if i == 7:
            raise ValueError("item 7")
        return i * i

    results = ordered_map(slow_square, range(100), workers=2, ahead=4)
    assert [next(results) for _ in range(3)] == [0, 1, 4]
    time.sleep(0.2)
    assert len(started) <= 3 + 4  # handed over + at most `ahead` started
    assert [next(results) for _ in range(4)] == [9, 16, 25, 36]
    with pytest.raises(ValueError, match="item 7"):
        next(results)
    assert list(ordered_map(lambda i: -i, iter(range(5)), workers=1)) == [0, -1, -2, -3, -4]


def test_predict_many_on_two_threads_gives_the_one_thread_results(model_rgb, astronaut_rgb):
    rec = Recognizer.from_checkpoint(model_rgb, batch_size=3)
    images = [astronaut_rgb, astronaut_rgb[:, ::-1].copy(), np.zeros((10, 10), np.uint8), astronaut_rgb[::2, ::2]] * 2
    assert rec._prepare_workers() == (2 if (os.cpu_count() or 1) >= 2 else 1)
    parallel = list(rec.predict_many(images, color="RGB"))
    rec._prepare_workers = lambda: 1
    serial = list(rec.predict_many(images, color="RGB"))
    assert [r.source for r in parallel] == [r.source for r in serial]
    for a, b in zip(parallel, serial):
        assert [f.box for f in a.faces] == [f.box for f in b.faces]
        for fa, fb in zip(a.faces, b.faces):
            assert fa.probabilities == pytest.approx(fb.probabilities, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Video


@pytest.fixture(scope="module")
def face_video(tmp_path_factory, astronaut_rgb) -> Path:
    """10 frames (mp4v, 10 fps): the astronaut's head moving right across a grey background."""
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    head = cv2.cvtColor(astronaut_rgb[30:230, 140:320], cv2.COLOR_RGB2BGR)
    head = cv2.resize(head, (126, 140), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (320, 240))
    assert writer.isOpened()
    for i in range(10):
        frame = np.full((240, 320, 3), 110, np.uint8)
        frame[40:180, 40 + 8 * i:166 + 8 * i] = head
        writer.write(frame)
    writer.release()
    return path


def test_predict_video_gives_per_frame_results(model_rgb, face_video):
    rec = Recognizer.from_checkpoint(model_rgb, batch_size=4)
    video = rec.predict_video(face_video, detect_every=1)  # per-frame detection, the reference below
    assert video.fps == pytest.approx(10.0)
    results = list(video)
    assert [r.frame for r in results] == list(range(10))
    assert all(len(r.faces) == 1 and r.source == str(face_video) for r in results)
    xs = [r.faces[0].box[0] for r in results]
    assert xs[-1] - xs[0] > 50  # the face moves right by 72 pixels
    assert video.frames_read == 10 and video.frames_failed == 0 and video.frame_size == (320, 240)

    every3 = list(rec.predict_video(face_video, every_n=3, detect_every=1))
    assert [r.frame for r in every3] == [0, 3, 6, 9]
    for r in every3:
        np.testing.assert_allclose(_probs(r), _probs(results[r.frame]), atol=1e-6)

    alpha = 0.6
    smoothed = list(rec.predict_video(face_video, smoothing=alpha, detect_every=1))
    state = _probs(results[0])[0]
    np.testing.assert_allclose(_probs(smoothed[0])[0], state, atol=1e-9)
    for raw, sm in zip(results[1:], smoothed[1:]):
        state = alpha * state + (1 - alpha) * _probs(raw)[0]
        np.testing.assert_allclose(_probs(sm)[0], state, atol=1e-9)
        assert sm.faces[0].track == 0 and sm.faces[0].label == FER2013_CLASSES[int(np.argmax(state))]


def test_undecodable_frame_is_skipped_and_counted(model_rgb, tmp_path):
    path = tmp_path / "frames.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(6):
        writer.write(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]  # JPEG frames
    assert len(starts) == 6
    data[starts[2]:starts[2] + 600] = bytes(600)  # wipe the third frame's JPEG header
    path.write_bytes(bytes(data))
    video = Recognizer.from_checkpoint(model_rgb, detector="none").predict_video(path)
    frames = [r.frame for r in video]
    assert frames == [0, 1, 3, 4, 5]
    assert video.frames_failed == 1 and video.frames_read == 5


def test_predict_video_errors(model_rgb, face_video, tmp_path):
    rec = Recognizer.from_checkpoint(model_rgb)
    with pytest.raises(PosterError, match="not found"):
        rec.predict_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(PosterError, match="cannot open"):
        rec.predict_video(bad)
    with pytest.raises(ValueError, match="smoothing"):
        rec.predict_video(face_video, smoothing=1.5)
    with pytest.raises(ValueError, match="color"):
        rec.predict_many([], color="X")


# ---------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory, astronaut_rgb) -> Path:
    root = tmp_path_factory.mktemp("inputs") / "photos"
    (root / "sub").mkdir(parents=True)
    cv2.imwrite(str(root / "astronaut.jpg"), cv2.cvtColor(astronaut_rgb, cv2.COLOR_RGB2BGR))
    good = (root / "astronaut.jpg").read_bytes()
    (root / "broken.jpg").write_bytes(good[: len(good) // 3])  # truncated JPEG
    (root / "readme.txt").write_text("not a picture\n")
    cv2.imwrite(str(root / "sub" / "grey.png"), np.full((200, 300, 3), 128, np.uint8))
    return root


def _summary_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("Summary:"))


def test_cli_on_a_folder_with_bad_files(checkpoint, mixed_folder, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = main(["predict", str(mixed_folder), "--checkpoint", str(checkpoint), "-o", str(out_dir),
                 "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured
    text = captured.out + captured.err
    assert "broken.jpg" in text and "readme.txt" in text
    summary = _summary_line(captured.out)
    assert "2 images (1 without a face)" in summary and "1 faces" in summary
    assert "1 unreadable" in summary and "1 skipped" in summary

    records = [json.loads(line) for line in (out_dir / "results.jsonl").read_text().splitlines()]
    by_source = {}
    for rec in records:
        by_source.setdefault(Path(rec["source"]).name, []).append(rec)
    assert set(by_source) == {"astronaut.jpg", "grey.png", "broken.jpg"}
    face = by_source["astronaut.jpg"][0]
    assert face["face"] == 0 and len(face["box"]) == 4 and len(face["landmarks"]) == 5
    assert list(face["probabilities"]) == list(FER2013_CLASSES) and face["label"] in FER2013_CLASSES
    assert face["frame"] is None and 0 < face["score"] <= 1 and len(face["top_k"]) == 3
    assert by_source["grey.png"] == [{"source": str(mixed_folder / "sub" / "grey.png"), "frame": None,
                                      "face": None, "num_faces": 0, "note": "no face found"}]
    assert "error" in by_source["broken.jpg"][0]
    assert not list(out_dir.glob("*.partial"))
    annotated = out_dir / "annotated" / "photos"
    assert (annotated / "astronaut.jpg").is_file() and (annotated / "sub" / "grey.png").is_file()


def test_cli_csv_video_and_smoothing(checkpoint, face_video, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code = main(["predict", str(face_video), "--checkpoint", str(checkpoint), "-o", str(out_dir), "--format", "csv",
                 "--every-n", "2", "--smooth", "0.5", "--top-k", "2", "-q"])
    captured = capsys.readouterr()
    assert code == 0, captured
    with open(out_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4, 6, 8]
    assert all(r["face"] == "0" and r["label"] in FER2013_CLASSES for r in rows)
    probs = np.array([[float(r[f"p_{c}"]) for c in FER2013_CLASSES] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    assert all(len(r["top_k"].split(";")) == 2 for r in rows)
    assert "right_eye_x" in rows[0] and float(rows[0]["w"]) > 40
    video = cv2.VideoCapture(str(out_dir / "annotated" / "clip.mp4"))
    assert video.isOpened() and int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    video.release()
    assert "1 videos (5 frames)" in _summary_line(captured.out)


def test_cli_exit_status_when_nothing_can_be_processed(checkpoint, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"garbage")
    code = main(["predict", str(folder), str(tmp_path / "missing.png"), "--checkpoint", str(checkpoint),
                 "-o", str(tmp_path / "out"), "--no-annotate"])
    captured = capsys.readouterr()
    assert code == 1
    assert "a.jpg" in captured.err and "missing.png" in captured.err
    assert "2 unreadable" in _summary_line(captured.out)
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("error" in json.loads(line) for line in lines)
    assert not (tmp_path / "out" / "annotated").exists()


def test_cli_detector_none_matches_the_model_on_fer2013(checkpoint, fer2013_dir, tmp_path, capsys):
    """Whole FER2013 faces through ``poster predict --detector none``: the model's own predictions."""
    paths = sorted((fer2013_dir / "val").glob("*/*.jpg"))[1::900][:4]
    code = main(["predict", *map(str, paths), "--checkpoint", str(checkpoint), "--detector", "none",
                 "-o", str(tmp_path / "out"), "--no-annotate", "-b", "3"])
    assert code == 0, capsys.readouterr()
    records = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    model = poster.load_model(checkpoint)
    expected = _reference_probs(model, [load_image(p, model.meta.input.channel_order) for p in paths])
    assert [r["source"] for r in records] == [str(p) for p in paths]
    for rec, p in zip(records, expected):
        assert rec["label"] == FER2013_CLASSES[int(np.argmax(p))]
        np.testing.assert_allclose([rec["probabilities"][c] for c in FER2013_CLASSES], p, atol=2e-6)
        assert rec["box"] == [0, 0, 48, 48] and rec["landmarks"] is None


@pytest.mark.slow
def test_torchrun_shards_a_folder_and_merges_the_results(tmp_path):
    """Two processes split the inputs, each writes its part, rank 0 merges them into one file."""
    import os
    import subprocess
    import sys

    import cv2
    import numpy as np

    import poster

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        cv2.imwrite(str(folder / f"face{i}.png"), rng.integers(0, 255, (48, 48), dtype=np.uint8))
    model = poster.create_model("poster_v1_tiny", num_classes=7)
    meta = poster.ModelMeta(arch="poster_v1_tiny", num_classes=7, class_names=[f"c{i}" for i in range(7)],
                            arch_options={"token_mixing": False})
    ckpt = poster.save_checkpoint(tmp_path / "tiny.pth", model, meta)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", "29523", "-m", "poster", "predict", str(folder), "-c", str(ckpt),
                           "--detector", "none", "--device", "cpu", "--no-annotate", "-q", "-o", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(Path(r["source"]).name for r in records) == [f"face{i}.png" for i in range(5)]
    # the rank parts are merged away, the lock is released; the marker keeps folder inputs out of it
    assert sorted(p.name for p in out.iterdir()) == [".poster-predict-run", "results.jsonl"]


def test_cli_runtimes_and_precisions_agree(checkpoint, astronaut_rgb, tmp_path, capsys):
    """The same faces through PyTorch fp32 (exact), PyTorch bf16 (fast path) and an ONNX export
    picked by its file name: the same probabilities within each path's stated tolerance."""
    pytest.importorskip("onnxruntime")
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), astronaut_rgb[:, :, ::-1])
    from poster.inference.export import export_onnx

    onnx_path = export_onnx(poster.load_model(checkpoint), tmp_path / "tiny.onnx")

    def run(name: str, *extra: str) -> dict:
        code = main(["predict", str(photo), "-c", *extra, "-o", str(tmp_path / name), "--no-annotate", "-q"])
        assert code == 0, capsys.readouterr().err
        (line,) = (tmp_path / name / "results.jsonl").read_text().splitlines()
        return json.loads(line)

    exact = run("eager", str(checkpoint), "--eager")
    fast = run("bf16", str(checkpoint), "--precision", "bf16")
    folded = run("fp32", str(checkpoint), "--precision", "fp32")
    default = run("default", str(checkpoint))  # bf16 where native, else the fp32 fast path
    onnx = run("onnx", str(onnx_path))
    assert exact["box"] == fast["box"] == onnx["box"] == default["box"]
    p = np.array([exact["probabilities"][c] for c in FER2013_CLASSES])
    np.testing.assert_allclose([onnx["probabilities"][c] for c in FER2013_CLASSES], p, atol=1e-4)
    np.testing.assert_allclose([folded["probabilities"][c] for c in FER2013_CLASSES], p, atol=1e-4)
    np.testing.assert_allclose([fast["probabilities"][c] for c in FER2013_CLASSES], p, atol=2e-2)
    same = fast if native_bf16("cpu") else folded
    assert default["probabilities"] == same["probabilities"]
    capsys.readouterr()
    assert main(["predict", str(photo), "-c", str(onnx_path), "--precision", "bf16", "-o", str(tmp_path / "x")]) == 1
    assert "apply to the PyTorch runtime, not onnx" in capsys.readouterr().err
    assert main(["predict", str(photo), "-c", str(checkpoint), "--eager", "--precision", "bf16", "-o",
                 str(tmp_path / "y")]) == 1
    assert "--eager" in capsys.readouterr().err


def test_cli_info_line_names_runtime_and_precision(checkpoint, astronaut_rgb, tmp_path, caplog):
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), astronaut_rgb[:, :, ::-1])
    expected = "bf16 fast path" if native_bf16("cpu") else "fp32 fast path"
    for extra, words in (([], expected), (["--eager"], "PyTorch eager fp32")):
        caplog.clear()
        with caplog.at_level("INFO", logger="poster"):
            assert main(["predict", str(photo), "-c", str(checkpoint), "--device", "cpu", "--no-annotate", "-q",
                         "-o", str(tmp_path / "o"), *extra]) == 0
        assert any(words in r.getMessage() and "on cpu" in r.getMessage() for r in caplog.records), caplog.text
