"""Annotations never hide the face: the label and bars go beside the box, in text sized to the
picture; inside each box, only the outline differs from the input."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from poster.data import FER2013_CLASSES
from poster.inference.drawing import annotate
from poster.inference.results import FaceResult, ImageResult

ROOT = Path(__file__).resolve().parents[1]
ASTRONAUT_BOX = (178.0, 62.6, 90.5, 113.6)  # YuNet's box of the face in examples/astronaut.jpg


def _face(box, index=0, label="happy") -> FaceResult:
    probs = {c: 0.02 for c in FER2013_CLASSES}
    probs[label] = 0.88
    return FaceResult(box=tuple(map(float, box)), landmarks=((200.0, 100.0),) * 5, score=0.9,
                      probabilities=probs, label=label, confidence=0.88, index=index)


def _pictures() -> dict[str, tuple[np.ndarray, list[tuple[float, ...]]]]:
    photo = cv2.imread(str(ROOT / "examples" / "astronaut.jpg"))
    x, y, w, h = (int(v) for v in ASTRONAUT_BOX)
    portrait = photo[y - 20:y + h + 15, x - 10:x + w + 10]  # the face fills the frame
    tiny = cv2.resize(photo, (112, 112), interpolation=cv2.INTER_AREA)
    tile = cv2.resize(photo[y:y + h, x:x + w], (100, 120))
    group = np.full((300, 700, 3), 200, np.uint8)
    boxes = []
    for i, (gx, gy) in enumerate(((10, 10), (180, 20), (350, 160), (560, 170))):
        group[gy:gy + 120, gx:gx + 100] = tile
        boxes.append((gx, gy, 100, 120))
    return {
        "photo": (photo, [ASTRONAUT_BOX]),
        "portrait": (portrait, [(8, 16, 91, 120)]),
        "tiny": (tiny, [(40, 14, 18, 21)]),
        "face 112x112": (cv2.resize(tile, (112, 112)), [(0, 0, 112, 112)]),
        "group": (group, boxes),
    }


@pytest.mark.parametrize("name", list(_pictures()))
def test_face_pixels_are_untouched_apart_from_the_box_outline(name):
    image, boxes = _pictures()[name]
    result = ImageResult(name, [_face(b, i, ("happy", "sad")[i % 2]) for i, b in enumerate(boxes)])
    drawn = annotate(image, result, top_k=3, class_names=FER2013_CLASSES)
    h, w = image.shape[:2]
    assert drawn.shape[0] >= h and drawn.shape[1] >= w
    outline = max(1, round(min(h, w) / 500)) + 1
    margin = outline + 1  # the anti-aliased outline reaches this far inside the box
    for x, y, bw, bh in boxes:
        x0, y0 = int(round(x)) + margin, int(round(y)) + margin
        x1, y1 = int(round(x + bw)) - margin, int(round(y + bh)) - margin
        assert np.array_equal(drawn[y0:y1, x0:x1], image[y0:y1, x0:x1]), f"{name}: the face is drawn over"
    # The labels are there: beside the face in the picture, or on a panel added at the right.
    changed = np.any(drawn[:h, :w] != image, axis=2).sum() + (drawn.shape[1] - w) * drawn.shape[0]
    assert changed > 400 * len(boxes)


def test_a_face_filling_a_112_pixel_picture_gets_its_label_on_a_side_panel():
    image, boxes = _pictures()["face 112x112"]
    drawn = annotate(image, ImageResult("f", [_face(boxes[0])]), top_k=3, class_names=FER2013_CLASSES)
    assert drawn.shape[0] >= 112 and drawn.shape[1] > 112 + 60  # the panel is wide enough for words
    panel = drawn[:, 112:]
    assert (panel.min(axis=2) > 200).sum() > 100  # white text on it: the label did not disappear


def test_video_frames_keep_their_size():
    image, boxes = _pictures()["face 112x112"]
    drawn = annotate(image, ImageResult("f", [_face(boxes[0])]), class_names=FER2013_CLASSES, extend_canvas=False)
    assert drawn.shape == image.shape and not np.array_equal(drawn, image)


def test_nothing_to_draw_without_faces():
    image, _ = _pictures()["tiny"]
    assert np.array_equal(annotate(image, ImageResult("none", [])), image)
