"""Face detectors: a tiny interface, the bundled YuNet detector and a pass-through.

A detector is anything with ``detect(image_bgr) -> list[Face]`` (the ``FaceDetector`` protocol):
it takes an HxWx3 uint8 image in **BGR** order (OpenCV's order) and returns the faces found,
each with

* ``box``: ``(x, y, w, h)`` in pixels of the given image (x, y = top-left corner, floats);
* ``landmarks``: a 5x2 float32 array of (x, y) points, or ``None`` when the detector has none,
  in YuNet's order, which is also RetinaFace's / MTCNN's:

  0. right eye centre (the *subject's* right eye: on the left of a frontal face in the image),
  1. left eye centre (on the right in the image),
  2. nose tip,
  3. right mouth corner (left in the image),
  4. left mouth corner (right in the image);

* ``score``: the detector's confidence in [0, 1].

Detectors available by name (``build_detector``): ``"yunet"`` (``YuNetDetector``, the bundled
``assets/face_detection_yunet_2023mar.onnx``, MIT licence, offline) and ``"none"``
(``NoDetector``: the whole image is one face, for images that are already aligned face crops such
as RAF-DB's aligned images or FER2013's faces).  ``register_detector`` adds others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import cv2
import numpy as np

from ..errors import PosterError
from .yunet import build_engine

__all__ = [
    "Face", "FaceDetector", "YuNetDetector", "NoDetector", "LANDMARK_NAMES", "bundled_yunet_path",
    "build_detector", "register_detector", "list_detectors",
]

_REFINE_CANVAS = 384  # landmark refinement: canvas side and face (template) size, pixels
_REFINE_FACE = 192
_REFINE_SETTLE = 2  # refinement passes left out of the final average

LANDMARK_NAMES = ("right_eye", "left_eye", "nose", "right_mouth", "left_mouth")


@dataclass(frozen=True)
class Face:
    """One detected face, in pixel coordinates of the image given to the detector."""

    box: tuple[float, float, float, float]  # x, y, w, h
    landmarks: np.ndarray | None = None  # 5x2 float32, order LANDMARK_NAMES; None if unknown
    score: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks, dtype=np.float32).reshape(-1, 2)
            if lm.shape != (5, 2):
                raise ValueError(f"a face has 5 landmarks (x, y), got an array of shape {lm.shape}")
            object.__setattr__(self, "landmarks", lm)
        object.__setattr__(self, "score", float(self.score))

    @property
    def size(self) -> float:
        """The smaller side of the box, in pixels."""
        return min(self.box[2], self.box[3])

    def scaled(self, factor: float) -> "Face":
        """The same face in an image ``factor`` times as large."""
        lm = None if self.landmarks is None else self.landmarks * np.float32(factor)
        return Face(tuple(v * factor for v in self.box), lm, self.score)


@runtime_checkable
class FaceDetector(Protocol):
    """Anything that finds faces in a BGR uint8 image."""

    def detect(self, image_bgr: np.ndarray) -> list[Face]:  # pragma: no cover - protocol
        ...


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"detectors take an HxWx3 uint8 BGR image, got {type(image).__name__} {shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"empty image of shape {image.shape}")
    return image


def bundled_yunet_path() -> Path:
    """Path of the YuNet model shipped in ``poster/assets``."""
    return Path(__file__).resolve().parent.parent / "assets" / "face_detection_yunet_2023mar.onnx"


class NoDetector:
    """The whole image is one face (for already aligned crops); no landmarks, score 1."""

    name = "none"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = _check_image(image_bgr).shape[:2]
        return [Face((0.0, 0.0, float(w), float(h)), None, 1.0)]

    def __repr__(self) -> str:
        return "NoDetector()"


class YuNetDetector:
    """OpenCV's YuNet (``cv2.FaceDetectorYN``), by default with the bundled 2023mar model.

    ``score_threshold``: minimum face score; ``nms``: IoU threshold of the non-maximum suppression;
    ``min_face``: faces whose box's smaller side is under this many pixels (of the original image)
    are dropped; ``refine``: landmark-refinement passes per face (0: off, see below); ``max_side``: images larger than this on their longer side are shrunk (INTER_AREA)
    for detection only, and the results scaled back (YuNet is fully convolutional, its cost grows
    with the pixel count; ``None`` never shrinks); ``top_k``: faces kept before NMS.

    ``engine``: what runs the network (``poster.face.yunet``): ``"onnxruntime"`` (1.5x as fast,
    thread-safe without a lock), ``"opencv"`` (``cv2.FaceDetectorYN``, calls serialised by a
    lock) or ``"auto"`` (ONNX Runtime when installed).  Their raw detections agree to within 1e-3
    pixels; the refined landmarks then differ by the refinement's own jitter (under 2 pixels,
    usually ~0.1; tests/test_face.py).  ``backend_id``/``target_id`` are OpenCV's and apply to the opencv engine only.

    Images of any size can be mixed.  One instance may be shared between threads.

    Landmark refinement: YuNet's landmarks barely follow in-plane rotation (on a face tilted by 30
    degrees its eye line comes out tilted by 3 to 20 degrees: the regression is pulled towards an
    upright face, more so for small faces), so a tilted head would stay tilted after alignment.
    Each refinement pass warps the image with the similarity transform of the current landmarks
    onto a 384x384 canvas where the face is upright-ish and about 190 pixels wide, runs YuNet there
    again, and maps the landmarks it finds (those of the face nearest the canvas centre) back to the
    image; the residual tilt shrinks at every pass.  The answer is the mean of the estimates after
    the first two passes (they jitter by a pixel or so around the fixed point).  On
    ``skimage.data.astronaut()`` rotated by 10..35 degrees and scaled by 0.5..2, the aligned
    landmarks then agree with those of the upright photo within ~1.5 pixels of a 100-pixel crop
    (3 to 10 pixels without refinement).  Each pass costs one YuNet run on 384x384 pixels.
    The box and score stay YuNet's first answer.
    """

    name = "yunet"

    def __init__(self, model_path: str | os.PathLike | None = None, score_threshold: float = 0.6,
                 nms: float = 0.3, min_face: float = 0.0, max_side: int | None = 1920, top_k: int = 5000,
                 refine: int = 5, engine: str = "auto", backend_id: int = 0, target_id: int = 0) -> None:
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        if not 0.0 <= nms <= 1.0:
            raise ValueError(f"nms must be in [0, 1], got {nms}")
        if min_face < 0:
            raise ValueError(f"min_face must be >= 0, got {min_face}")
        if max_side is not None and max_side < 32:
            raise ValueError(f"max_side must be at least 32 pixels (or None), got {max_side}")
        path = Path(model_path) if model_path is not None else bundled_yunet_path()
        if not path.is_file():
            raise PosterError(f"YuNet face detector model not found: {path}")
        self.model_path = path
        self.score_threshold = float(score_threshold)
        self.nms = float(nms)
        self.min_face = float(min_face)
        self.max_side = max_side
        self.top_k = int(top_k)
        if refine < 0:
            raise ValueError(f"refine must be >= 0 passes, got {refine}")
        self.refine = int(refine)
        self._raw = build_engine(engine, path, self.score_threshold, self.nms, self.top_k, backend_id, target_id)
        self.engine = self._raw.name

    def locate(self, image_bgr: np.ndarray, landmarks: np.ndarray, canvas: int = _REFINE_CANVAS,
               face: int = _REFINE_FACE) -> Face | None:
        """The face last seen with ``landmarks``, found again by one YuNet run on an upright view of
        it: the image warped with the similarity transform of ``landmarks`` onto a ``canvas`` x
        ``canvas`` square where the face is about ``face`` pixels wide.  Returns the detection nearest
        the canvas centre mapped back to the image (the landmarks exactly; the box by its centre and
        the transform's scale, upright), or ``None`` when no face lies near the centre.  A refinement
        pass (see the class doc) is one such call; so is following a face from one video frame to
        the next (``poster.inference.follow``)."""
        from .align import similarity_transform, template_points, transform_points

        target = template_points(face) + (canvas - face) / 2.0
        try:
            m = similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), target)
        except ValueError:
            return None
        view = cv2.warpAffine(image_bgr, m, (canvas, canvas), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        raw = self._raw(view)
        if raw is None:
            return None
        points = raw[:, 4:14].reshape(-1, 5, 2).astype(np.float64)
        dist = np.linalg.norm(points.mean(1) - target.mean(0), axis=1)
        best = int(np.argmin(dist))
        if dist[best] > face / 3.0:
            return None
        back = cv2.invertAffineTransform(m)
        x, y, w, h = (float(v) for v in raw[best, :4])
        scale = float(np.hypot(back[0, 0], back[1, 0]))  # image pixels per canvas pixel
        cx, cy = transform_points(np.array([[x + w / 2, y + h / 2]]), back)[0]
        box = (cx - w * scale / 2, cy - h * scale / 2, w * scale, h * scale)
        return Face(box, transform_points(points[best], back).astype(np.float32), float(raw[best, 14]))

    def refine_landmarks(self, image_bgr: np.ndarray, landmarks: np.ndarray, passes: int | None = None) -> np.ndarray:
        """Landmarks re-detected on upright, normalised-scale views of the face (see the class doc)."""
        passes = self.refine if passes is None else int(passes)
        lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
        estimates: list[np.ndarray] = []
        for _ in range(passes):
            found = self.locate(image_bgr, lm)
            if found is None:
                break
            lm = found.landmarks.astype(np.float64)
            estimates.append(lm)
        if len(estimates) >= _REFINE_SETTLE + 1:
            # the first passes remove most of the tilt; later ones jitter around the answer: average them
            lm = np.mean(estimates[_REFINE_SETTLE:], axis=0)
        return lm.astype(np.float32)

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        image = _check_image(image_bgr)
        h, w = image.shape[:2]
        factor = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            factor = self.max_side / max(h, w)
            image = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))),
                               interpolation=cv2.INTER_AREA)
        raw = self._raw(image)
        if raw is None:
            return []
        faces = []
        for row in raw:
            face = Face(tuple(row[:4]), row[4:14].reshape(5, 2).copy(), float(row[14]))
            if factor != 1.0:
                face = face.scaled(1.0 / factor)
            if face.size < self.min_face or face.box[2] <= 0 or face.box[3] <= 0:
                continue
            if self.refine:
                face = Face(face.box, self.refine_landmarks(image_bgr, face.landmarks), face.score)
            faces.append(face)
        faces.sort(key=lambda f: (f.box[0], f.box[1]))  # left to right: stable, readable order
        return faces

    def __repr__(self) -> str:
        return (f"YuNetDetector(model_path={str(self.model_path)!r}, score_threshold={self.score_threshold}, "
                f"nms={self.nms}, min_face={self.min_face}, max_side={self.max_side}, refine={self.refine}, "
                f"engine={self.engine!r})")


_DETECTORS: dict[str, Callable[..., FaceDetector]] = {
    "yunet": YuNetDetector,
    "none": lambda **kwargs: NoDetector(),
}


def register_detector(name: str, factory: Callable[..., FaceDetector]) -> None:
    """Make ``build_detector(name, **options)`` call ``factory(**options)``."""
    _DETECTORS[name.lower()] = factory


def list_detectors() -> list[str]:
    return sorted(_DETECTORS)


def build_detector(spec: str | FaceDetector | None = "yunet", **options: Any) -> FaceDetector:
    """A detector from a name (``"yunet"``, ``"none"``, registered ones) or an instance (returned as is).

    ``options`` go to the detector's constructor (e.g. ``min_face=40``, ``score_threshold=0.7``);
    ``NoDetector`` ignores them.  ``None`` means ``"none"``.
    """
    if spec is None:
        spec = "none"
    if isinstance(spec, str):
        factory = _DETECTORS.get(spec.lower())
        if factory is None:
            raise PosterError(f"unknown face detector {spec!r}; available: {', '.join(list_detectors())}")
        return factory(**options)
    if hasattr(spec, "detect") and callable(spec.detect):
        return spec
    raise TypeError(f"a detector is a name or an object with a detect(image_bgr) method, got {type(spec).__name__}")
