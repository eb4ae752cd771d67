"""The two engines that run the YuNet network for ``YuNetDetector``: ONNX Runtime and OpenCV.

Both take a BGR uint8 image and answer YuNet's raw rows ``[x, y, w, h, 10 landmark coordinates,
score]`` (float32, after non-maximum suppression) or ``None`` when no face scores high enough.

* ``OpenCVYuNet`` is ``cv2.FaceDetectorYN``: always available, but its calls must be serialised
  (one instance holds one network and one input size), and OpenCV 5's new DNN engine runs this
  network slower than ONNX Runtime (11 ms against 6.6 ms on a 384x384 canvas, one thread, AMD
  EPYC; a whole ``detect`` with its 5 refinement passes 83 ms against 55 ms; docs/benchmarks.md).
* ``OnnxRuntimeYuNet`` runs the same ONNX file in ONNX Runtime and decodes its outputs itself, the
  way ``cv2.FaceDetectorYN`` does: the image is zero-padded on the right and bottom to a multiple
  of 32, and for each stride s in 8, 16, 32 and grid cell (row r, column c) of the padded image
  the score is ``sqrt(clip(cls) * clip(obj))``, the box centre ``((c, r) + bbox[:2]) * s`` and its
  size ``exp(bbox[2:]) * s``, the landmarks ``(kps + (c, r)) * s``; OpenCV's own ``NMSBoxes`` then
  keeps the faces, with the boxes truncated to integers as OpenCV does.  Its answers agree with
  ``cv2.FaceDetectorYN`` to within 1e-3 pixels (measured: 5e-5; tests/test_face.py).  A session is thread-safe,
  so one instance serves every thread without a lock.

``resolve_engine("auto")`` picks ONNX Runtime when it is installed (the ``onnx`` and ``serve``
extras bring it), else OpenCV.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import PosterError

ENGINES = ("auto", "onnxruntime", "opencv")
_STRIDES = (8, 16, 32)
_PAD = 32  # the input is padded to a multiple of the largest stride


@contextlib.contextmanager
def opencv_quiet():
    """OpenCV's own log (its C++ ``WARN`` lines) limited to errors for the duration."""
    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging_api is None:
        yield
        return
    previous = logging_api.getLogLevel()
    logging_api.setLogLevel(logging_api.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        logging_api.setLogLevel(previous)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(engine: str) -> str:
    """``"onnxruntime"`` or ``"opencv"`` for a requested engine name (``"auto"``: ONNX Runtime if installed)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "auto":
        return "onnxruntime" if onnxruntime_available() else "opencv"
    if engine == "onnxruntime" and not onnxruntime_available():
        raise PosterError("the YuNet detector's onnxruntime engine needs onnxruntime: pip install onnxruntime")
    return engine


class OpenCVYuNet:
    """YuNet through ``cv2.FaceDetectorYN`` (calls serialised by a lock)."""

    name = "opencv"

    def __init__(self, path: Path, score_threshold: float, nms: float, top_k: int,
                 backend_id: int = 0, target_id: int = 0) -> None:
        try:
            with opencv_quiet():  # OpenCV 5 warns "setPreferableTarget ... not supported" on every load
                self._net = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms, top_k,
                                                      backend_id, target_id)
        except cv2.error as exc:
            raise PosterError(f"cannot load the YuNet face detector from {path}: {exc}") from exc
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        image = np.ascontiguousarray(image)
        with self._lock:
            self._net.setInputSize((image.shape[1], image.shape[0]))
            _, raw = self._net.detect(image)
        return None if raw is None or len(raw) == 0 else np.asarray(raw, dtype=np.float32)


class OnnxRuntimeYuNet:
    """YuNet through ONNX Runtime, decoded as ``cv2.FaceDetectorYN`` decodes it (see the module doc)."""

    name = "onnxruntime"

    def __init__(self, path: Path, score_threshold: float, nms: float, top_k: int, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        # one thread per call: the server and the prefetching predict run several detections at once
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
            raise PosterError(f"cannot load the YuNet face detector from {path}: {exc}") from exc
        self._input = self._session.get_inputs()[0].name
        names = [o.name for o in self._session.get_outputs()]
        expected = {f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in _STRIDES}
        if not expected <= set(names):
            raise PosterError(f"{path} is not a YuNet 2023 model: its outputs are {', '.join(names)}")
        self._names = names
        self.score_threshold, self.nms, self.top_k = score_threshold, nms, top_k

    def __call__(self, image: np.ndarray) -> np.ndarray | None:
        h, w = image.shape[:2]
        padded_h, padded_w = -(-h // _PAD) * _PAD, -(-w // _PAD) * _PAD
        blob = np.zeros((1, 3, padded_h, padded_w), np.float32)
        blob[0, :, :h, :w] = image.transpose(2, 0, 1)
        outputs = dict(zip(self._names, self._session.run(None, {self._input: blob})))
        rows = np.concatenate([_decode_stride(outputs, s, padded_h // s, padded_w // s) for s in _STRIDES])
        # NMSBoxes keeps only scores above the threshold; dropping the others first (order kept) saves
        # converting thousands of boxes and does not change which faces survive
        rows = rows[rows[:, 14] >= self.score_threshold]
        if not len(rows):
            return None
        # OpenCV's NMS on integer boxes, as cv2.FaceDetectorYN runs it: the same faces survive
        keep = cv2.dnn.NMSBoxes(rows[:, :4].astype(np.int32).tolist(), rows[:, 14].tolist(),
                                self.score_threshold, self.nms, top_k=self.top_k)
        keep = np.asarray(keep, dtype=np.int64).reshape(-1)
        return rows[keep] if len(keep) else None


def _decode_stride(outputs: dict[str, np.ndarray], stride: int, rows: int, cols: int) -> np.ndarray:
    """The [rows*cols, 15] raw faces of one stride: box, landmarks and score of every grid cell."""
    score = np.sqrt(np.clip(outputs[f"cls_{stride}"][0, :, 0], 0, 1) * np.clip(outputs[f"obj_{stride}"][0, :, 0], 0, 1))
    bbox, kps = outputs[f"bbox_{stride}"][0], outputs[f"kps_{stride}"][0]
    r, c = np.divmod(np.arange(rows * cols, dtype=np.int64), cols)
    cell = np.stack([c, r], 1).astype(np.float32)  # (x, y) of each cell, in grid units
    centre = (cell + bbox[:, :2]) * stride
    size = np.exp(bbox[:, 2:]) * stride
    landmarks = (kps.reshape(-1, 5, 2) + cell[:, None, :]) * stride
    return np.concatenate([centre - size / 2, size, landmarks.reshape(-1, 10), score[:, None]], 1).astype(np.float32)


def build_engine(engine: str, path: Path, score_threshold: float, nms: float, top_k: int,
                 backend_id: int = 0, target_id: int = 0):
    """The YuNet runner for ``engine`` (``"auto"``, ``"onnxruntime"`` or ``"opencv"``)."""
    if resolve_engine(engine) == "onnxruntime":
        return OnnxRuntimeYuNet(path, score_threshold, nms, top_k)
    return OpenCVYuNet(path, score_threshold, nms, top_k, backend_id, target_id)
