"""Face detection (bundled YuNet) and alignment to the canonical template.

Real faces come from ``skimage.data.astronaut()`` (public domain, NASA; shipped inside scikit-image,
no download): the tests that need it skip when scikit-image is not installed.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from poster.errors import PosterError
from poster.face import (
    CANONICAL_TEMPLATE,
    Face,
    NoDetector,
    YuNetDetector,
    align_face,
    build_detector,
    bundled_yunet_path,
    crop_box,
    face_crop,
    list_detectors,
    similarity_transform,
    template_points,
    transform_points,
)


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


@pytest.fixture(scope="module")
def yunet() -> YuNetDetector:
    return YuNetDetector()


def _rotate(image: np.ndarray, angle: float, scale: float, pad: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Rotate (degrees, counter-clockwise) and scale about the centre onto a larger grey canvas;
    returns the picture and the 2x3 matrix from old to new pixel coordinates."""
    h, w = image.shape[:2]
    out_w, out_h = int(w * scale) + 2 * pad, int(h * scale) + 2 * pad
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    m[:, 2] += [out_w / 2 - w / 2, out_h / 2 - h / 2]
    rotated = cv2.warpAffine(image, m, (out_w, out_h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                             borderValue=(90, 90, 90))
    return rotated, m


# ---------------------------------------------------------------------------------------------
# Geometry, no detector


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, (5, 2))
    angle, scale, shift = math.radians(27.0), 0.63, np.array([14.0, -31.0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ rot.T + shift
    m = similarity_transform(src, dst)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], shift, atol=1e-9)
    np.testing.assert_allclose(transform_points(src, m), dst, atol=1e-9)


def test_similarity_transform_never_reflects():
    src = np.array([[0, 0], [10, 0], [5, 8], [2, 12], [8, 12]], float)
    mirrored = src * [-1, 1]
    m = similarity_transform(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0  # a rotation and a scale, not a mirror image
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), src)


def test_template_is_symmetric_with_level_eyes():
    t = CANONICAL_TEMPLATE
    assert t[0, 1] == t[1, 1] and t[3, 1] == t[4, 1]  # eyes level, mouth corners level
    np.testing.assert_allclose(t[[0, 3], 0] + t[[1, 4], 0], 1.0, atol=1e-12)  # mirror pairs about x = 0.5
    assert t[2, 0] == 0.5
    assert t[0, 0] < t[1, 0]  # right eye (subject's) on the left of the picture
    assert 0.3 < t[0, 1] < 0.5 and 0.65 < t[3, 1] < 0.85  # eyes ~40 %, mouth ~74 % down: chin inside
    pts = template_points(100)
    np.testing.assert_allclose(pts[0], [31.8, 37.8], atol=1e-9)  # pixel-centre coordinates


def test_align_face_puts_landmarks_on_the_template():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    template = template_points(100)
    # landmarks = template mapped by a rotation/scale/shift into the image
    a, s = math.radians(-18), 1.7
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    landmarks = template @ rot.T + [150, 90]
    crop, m = align_face(image, landmarks, size=100)
    assert crop.shape == (100, 100, 3) and crop.dtype == np.uint8
    np.testing.assert_allclose(transform_points(landmarks, m), template, atol=1e-6)
    # the crop is the image sampled through the inverse map: check a pixel well inside
    inv = cv2.invertAffineTransform(m)
    x, y = transform_points(np.array([[50.0, 50.0]]), inv)[0]
    expected = cv2.getRectSubPix(image, (1, 1), (float(x), float(y)))[0, 0]
    assert np.abs(crop[50, 50].astype(int) - expected.astype(int)).max() <= 1
    # other crop sizes scale the same template
    big, m2 = align_face(image, landmarks, size=224)
    assert big.shape == (224, 224, 3)
    np.testing.assert_allclose(transform_points(landmarks, m2), template_points(224), atol=1e-6)


def test_shrinking_warp_matches_a_warp_of_the_small_image():
    """A face 4x larger than the crop takes the area-filtered path: same crop as aligning a 4x
    smaller copy of the picture (checks the matrix folding of the shrink)."""
    rng = np.random.default_rng(2)
    small = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 2.0)
    large = cv2.resize(small, (640, 480), interpolation=cv2.INTER_CUBIC)
    lm_small = template_points(100) * 0.6 + [30, 15]
    lm_large = (lm_small + 0.5) * 4 - 0.5
    crop_small, _ = align_face(small, lm_small, size=60)
    crop_large, _ = align_face(large, lm_large, size=60)
    assert np.abs(crop_small.astype(int) - crop_large.astype(int)).mean() < 2.5


def test_crop_box_and_no_detector():
    image = np.zeros((60, 80, 3), np.uint8)
    image[10:30, 20:40] = 255  # a white square
    crop, m = crop_box(image, (20, 10, 20, 20))  # native size
    assert crop.shape == (20, 20, 3) and crop.min() == 255
    crop2, _ = crop_box(image, (20, 10, 20, 20), size=40)
    assert crop2.shape == (40, 40, 3) and crop2[2:-2, 2:-2].min() == 255

    faces = NoDetector().detect(image)
    assert len(faces) == 1 and faces[0].box == (0.0, 0.0, 80.0, 60.0) and faces[0].landmarks is None
    assert face_crop(image, faces[0]) is image  # untouched: the eval transform sees the file's pixels
    boxed = face_crop(image, Face((20, 10, 20, 20)), size=None)
    assert boxed.shape == (20, 20, 3)


def test_build_detector():
    assert isinstance(build_detector("none"), NoDetector)
    assert isinstance(build_detector(None), NoDetector)
    det = build_detector("yunet", min_face=30)
    assert isinstance(det, YuNetDetector) and det.min_face == 30
    custom = NoDetector()
    assert build_detector(custom) is custom
    with pytest.raises(PosterError, match="unknown face detector"):
        build_detector("mtcnn")
    with pytest.raises(PosterError, match="not found"):
        YuNetDetector(model_path="/nonexistent/yunet.onnx")
    assert bundled_yunet_path().is_file()
    from poster.face import DETECTOR_NAMES  # what the command line offers without loading OpenCV

    assert tuple(list_detectors()) == DETECTOR_NAMES


def test_yunet_on_blank_and_small_images(yunet):
    assert yunet.detect(np.full((240, 320, 3), 128, np.uint8)) == []
    assert yunet.detect(np.zeros((8, 8, 3), np.uint8)) == []
    with pytest.raises(ValueError):
        yunet.detect(np.zeros((10, 10), np.uint8))


# ---------------------------------------------------------------------------------------------
# Real photos


def test_yunet_finds_the_astronaut(yunet, astronaut_bgr):
    faces = yunet.detect(astronaut_bgr)
    assert len(faces) == 1
    f = faces[0]
    x, y, w, h = f.box
    assert 165 < x < 195 and 50 < y < 80 and 75 < w < 105 and 95 < h < 130
    assert f.score > 0.8
    lm = f.landmarks
    assert lm[0, 0] < lm[1, 0]  # right eye (subject's) on the image's left
    assert lm[0, 1] < lm[2, 1] < lm[3, 1] and lm[1, 1] < lm[2, 1] < lm[4, 1]  # eyes above nose above mouth
    assert lm[3, 0] < lm[4, 0]
    for px, py in lm:
        assert x <= px <= x + w and y <= py <= y + h
    # min_face drops it, a big image is shrunk for detection and scaled back
    assert YuNetDetector(min_face=200).detect(astronaut_bgr) == []
    shrunk = YuNetDetector(max_side=256, refine=0).detect(astronaut_bgr)
    assert len(shrunk) == 1 and np.abs(np.array(shrunk[0].box) - np.array(f.box)).max() < 12


@pytest.mark.parametrize("angle,scale", [(20, 0.7), (-25, 1.3), (35, 1.0)])
def test_alignment_of_a_rotated_copy_gives_the_same_crop(yunet, astronaut_bgr, angle, scale):
    upright = yunet.detect(astronaut_bgr)[0]
    crop0, m0 = align_face(astronaut_bgr, upright.landmarks)

    rotated, r = _rotate(astronaut_bgr, angle, scale)
    faces = yunet.detect(rotated)
    assert len(faces) == 1
    crop1, m1 = align_face(rotated, faces[0].landmarks)

    # The upright photo's landmarks, carried into the rotated photo by the known rotation, then
    # into the crop by the alignment found on the rotated photo: where the upright alignment put them.
    truth = transform_points(transform_points(upright.landmarks, r), m1)
    ref = transform_points(upright.landmarks, m0)
    assert np.abs(truth - ref).max() < 2.5, np.abs(truth - ref)  # without refinement: 7 to 10
    # eyes level in the aligned crop of the rotated photo (the upright photo's eyes are level)
    assert abs(truth[0, 1] - truth[1, 1]) < 2.0
    assert abs(ref[0, 1] - ref[1, 1]) < 2.0
    # and the pictures agree: mean absolute difference of a few grey levels (resampling, JPEG-free)
    mad = np.abs(crop0.astype(np.int16) - crop1.astype(np.int16)).mean()
    assert mad < 14, mad  # without landmark refinement: 35 to 50


def test_aligned_crop_looks_like_a_centred_face(yunet, astronaut_bgr):
    """Detect again on the aligned crop (enlarged, padded): one face, centred, eyes level, at the
    template's place."""
    face = yunet.detect(astronaut_bgr)[0]
    crop, _ = align_face(astronaut_bgr, face.landmarks, size=100)
    big = cv2.copyMakeBorder(cv2.resize(crop, (300, 300), interpolation=cv2.INTER_CUBIC), 100, 100, 100, 100,
                             cv2.BORDER_CONSTANT, value=(128, 128, 128))
    again = YuNetDetector(refine=0).detect(big)
    assert len(again) == 1
    lm = (again[0].landmarks - 100 + 0.5) / 3 - 0.5  # back to 100x100 crop pixels
    err = np.linalg.norm(lm - template_points(100), axis=1)
    assert err.mean() < 3.0 and err.max() < 6.0, err  # a smile widens the mouth: least squares, not exact
    assert abs(lm[0, 1] - lm[1, 1]) < 2.0
    x, y, w, h = (again[0].box - np.array([100, 100, 0, 0])) / 3
    assert 35 < x + w / 2 < 65  # face centred horizontally
    assert y < 15 and y + h > 85  # loose crop: the face box spans nearly the whole height


def test_group_photo(yunet, astronaut_bgr):
    """Several faces at different sizes, one mirrored and one tilted: all are found, once."""
    head = astronaut_bgr[20:240, 120:330]  # the astronaut's head with some margin
    canvas = np.full((560, 1100, 3), 200, np.uint8)
    canvas[:] = np.linspace(150, 230, 1100, dtype=np.uint8)[None, :, None]  # a plain gradient backdrop
    placements = [(30, 40, 0.6, False, 0), (230, 150, 1.0, True, 0), (500, 60, 1.4, False, 0), (860, 200, 0.9, False, 15)]
    centres = []
    for x, y, s, mirror, tilt in placements:
        piece = cv2.resize(head, None, fx=s, fy=s, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
        if mirror:
            piece = piece[:, ::-1]
        if tilt:
            ph, pw = piece.shape[:2]
            piece = cv2.warpAffine(piece, cv2.getRotationMatrix2D((pw / 2, ph / 2), tilt, 1.0), (pw, ph),
                                   borderMode=cv2.BORDER_REPLICATE)
        ph, pw = piece.shape[:2]
        canvas[y:y + ph, x:x + pw] = piece
        centres.append((x + pw / 2, y + ph / 2))
    faces = yunet.detect(canvas)
    assert len(faces) == len(placements), [f.box for f in faces]
    found = sorted(faces, key=lambda f: f.box[0])
    for face, (cx, cy), (_, _, s, _, _) in zip(found, centres, placements):
        fx, fy, fw, fh = face.box
        assert abs(fx + fw / 2 - cx) < 40 * s and abs(fy + fh / 2 - cy) < 60 * s
        assert 60 * s < fw < 130 * s


# ---------------------------------------------------------------------------------------------
# The two YuNet engines (poster.face.yunet)


def _yunet_test_images(astronaut_bgr: np.ndarray) -> list[np.ndarray]:
    """Frontal, rotated, scaled, odd-sized (padding to a multiple of 32), several faces, and none."""
    images = [astronaut_bgr, cv2.resize(astronaut_bgr, (333, 517)), cv2.resize(astronaut_bgr, (97, 130))]
    images += [_rotate(astronaut_bgr, angle, scale)[0] for angle, scale in ((-35, 0.6), (12, 1.3), (30, 0.8))]
    images.append(np.concatenate([astronaut_bgr, astronaut_bgr[:, ::-1]], axis=1))
    images.append(np.full((200, 300, 3), 90, np.uint8))
    return images


def test_onnxruntime_yunet_matches_opencv(astronaut_bgr):
    """The ONNX Runtime engine decodes YuNet's outputs itself: its raw rows (box, landmarks, score,
    after NMS) are OpenCV's to within 1e-3 pixels, with the same faces kept."""
    pytest.importorskip("onnxruntime")
    from poster.face.yunet import OnnxRuntimeYuNet, OpenCVYuNet

    path = bundled_yunet_path()
    found = 0
    for score, nms in ((0.6, 0.3), (0.3, 0.5), (0.9, 0.3)):
        opencv, ort = OpenCVYuNet(path, score, nms, 5000), OnnxRuntimeYuNet(path, score, nms, 5000)
        for image in _yunet_test_images(astronaut_bgr):
            expected, got = opencv(image), ort(image)
            if expected is None:
                assert got is None, (image.shape, score)
                continue
            assert got is not None and got.shape == expected.shape, (image.shape, score)
            order = lambda rows: rows[np.lexsort(rows[:, :2].T)]  # noqa: E731 - NMS ties may come in either order
            np.testing.assert_allclose(order(got), order(expected), atol=1e-3)
            found += len(got)
    assert found >= 20  # the comparison covered real faces, not only empty answers


def test_detector_engines_give_the_same_faces(astronaut_bgr):
    """Through the whole detector the engines agree on the boxes; the refined landmarks differ by
    what the refinement itself jitters: each of its 5 passes warps the picture to uint8 pixels and
    runs YuNet again, so a 1e-3 pixel difference in one pass moves the next canvas by a rounding
    step (measured: 0.01 to 0.12 pixels on most faces, 1.1 on the one rotated by 30 degrees, the
    "pixel or so" the detector's docstring states)."""
    pytest.importorskip("onnxruntime")
    opencv, ort = YuNetDetector(engine="opencv"), YuNetDetector(engine="onnxruntime")
    assert (opencv.engine, ort.engine, YuNetDetector().engine) == ("opencv", "onnxruntime", "onnxruntime")
    differences = []
    for image in _yunet_test_images(astronaut_bgr):
        a, b = opencv.detect(image), ort.detect(image)
        assert len(a) == len(b)
        for fa, fb in zip(a, b):
            np.testing.assert_allclose(fb.box, fa.box, atol=1e-3)
            differences.append(np.abs(fb.landmarks - fa.landmarks).max())
    assert len(differences) >= 7 and max(differences) < 2.0 and np.median(differences) < 0.25, differences


def test_unknown_or_missing_yunet_engine(monkeypatch):
    from poster.face import yunet

    with pytest.raises(ValueError, match="engine must be one of"):
        YuNetDetector(engine="tensorrt")
    monkeypatch.setattr(yunet, "onnxruntime_available", lambda: False)
    assert YuNetDetector().engine == "opencv"  # auto falls back to OpenCV
    with pytest.raises(PosterError, match="pip install onnxruntime"):
        YuNetDetector(engine="onnxruntime")
