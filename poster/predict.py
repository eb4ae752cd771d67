"""Expression recognition in the wild: the Python API.

::

    from poster.predict import Recognizer

    rec = Recognizer("rafdb_best.pth", device="cuda")          # or a loaded model (with .meta)
    result = rec.predict("photo.jpg")                         # path, PIL image or numpy array
    for face in result.faces:
        print(face.box, face.label, face.confidence, face.top_k(3))

    rec.predict(frame, color="BGR")                           # colour numpy arrays must say their order
    for r in rec.predict_many(paths): ...                      # faces of many images batched together
    for r in rec.predict_video("clip.mp4", smoothing=0.6): ... # one ImageResult per frame

What happens to an image: it is decoded to BGR; the detector (``"yunet"`` by default, ``"none"``
for images that are already aligned face crops, or any object with ``detect(image_bgr)``) finds
the faces and their 5 landmarks; each face is aligned to the canonical template
(``poster.face.align``; a 100x100 crop by default, like RAF-DB's aligned images) — with
``detector="none"`` the whole image is used untouched; the crop is put in the checkpoint's channel
order and goes through exactly the checkpoint's evaluation transform
(``EvalTransform(model.meta.input)``: PIL bilinear resize, /255, normalise); the model's logits
become probabilities with a softmax.

Colour numpy arrays carry no channel order of their own: ``cv2.imread`` and video frames are BGR,
PIL / imageio / matplotlib arrays are RGB, and a wrong guess still gives plausible but different
probabilities.  So a 3- or 4-channel array must come with ``color="BGR"`` or ``color="RGB"``
(``ColorOrderError`` otherwise); paths, encoded bytes, PIL images and grey 2-D arrays need none.

Decoding, detection and preprocessing run in a background thread while the model works on the
previous batch (``prefetch``), and faces from several images or frames share a batch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from .data.transforms import EvalTransform, decode_image_bytes, to_uint8_array
from .errors import CheckpointError, DatasetError, PosterError
from .face.align import DEFAULT_CROP_SIZE, face_crop
from .face.detect import Face, FaceDetector, build_detector

log = logging.getLogger("poster")

__all__ = [
    "FaceResult", "ImageResult", "Recognizer", "VideoPrediction", "annotate", "default_checkpoint",
]

Backend = Callable[[torch.Tensor], Any]


def default_checkpoint() -> str:
    """Path of the model bundled with the package (used when no checkpoint is given): the compact
    FER2013-trained ``poster_v1_tiny.fer2013`` (docs/results.md), not an official POSTER release."""
    from .pretrained import bundled_model_path

    return str(bundled_model_path())


# ---------------------------------------------------------------------------------------------
# Results


@dataclass
class FaceResult:
    """One face: where it is, and what the model thinks of it.

    ``box`` is (x, y, w, h) in pixels of the source image; ``landmarks`` the 5 (x, y) points in
    YuNet's order (right eye, left eye, nose tip, right and left mouth corner; ``None`` without a
    detector); ``score`` the detection score; ``probabilities`` maps every class name, in the
    model's class order, to its probability; ``label`` / ``confidence`` the most probable class.
    In a video with smoothing, ``probabilities`` are the smoothed ones and ``track`` identifies the
    face across frames.
    """

    box: tuple[float, float, float, float]
    landmarks: tuple[tuple[float, float], ...] | None
    score: float
    probabilities: dict[str, float]
    label: str
    confidence: float
    index: int = 0
    track: int | None = None

    def top_k(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes, most probable first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])
        return ranked[:max(0, int(k))]

    def to_dict(self) -> dict[str, Any]:
        return {
            "face": self.index, "box": [round(v, 2) for v in self.box],
            "landmarks": None if self.landmarks is None else [[round(x, 2), round(y, 2)] for x, y in self.landmarks],
            "score": round(self.score, 5), "label": self.label, "confidence": round(self.confidence, 6),
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            **({"track": self.track} if self.track is not None else {}),
        }


@dataclass
class ImageResult:
    """All faces of one image or video frame.

    ``source``: the path, URL or a description of the input; ``frame``: the frame index in a video
    (``None`` for images); ``error``: why the input could not be processed (then ``faces`` is
    empty); ``image``: the decoded BGR picture, only when asked for (``keep_images=True``).
    """

    source: str
    faces: list[FaceResult] = field(default_factory=list)
    frame: int | None = None
    error: str | None = None
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"source": self.source, "frame": self.frame, "num_faces": len(self.faces),
                             "faces": [f.to_dict() for f in self.faces]}
        if self.error is not None:
            d["error"] = self.error
        return d


def _make_face_result(face: Face, probs: np.ndarray, class_names: Sequence[str], index: int,
                      track: int | None = None) -> FaceResult:
    best = int(np.argmax(probs))
    lm = None if face.landmarks is None else tuple((float(x), float(y)) for x, y in face.landmarks)
    return FaceResult(box=tuple(float(v) for v in face.box), landmarks=lm, score=float(face.score),
                      probabilities={name: float(p) for name, p in zip(class_names, probs)},
                      label=class_names[best], confidence=float(probs[best]), index=index, track=track)


# ---------------------------------------------------------------------------------------------
# Internal work items


@dataclass
class _Job:
    source: str
    frame: int | None
    image: np.ndarray | None = None  # BGR
    faces: list[Face] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)
    probs: list[np.ndarray | None] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return all(p is not None for p in self.probs)


_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _background(items: Iterator[Any], maxsize: int) -> Iterator[Any]:
    """Run ``items`` in a daemon thread, handing its values over through a bounded queue."""
    q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for value in items:
                if not put(value):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # pragma: no cover - best effort
                    pass

    thread = threading.Thread(target=work, name="poster-predict-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = q.get()
            if value is _DONE:
                return
            if isinstance(value, _Raised):
                raise value.exc
            yield value
    finally:
        stop.set()
        while True:  # unblock the producer
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=5.0)


def _describe(item: Any, position: int) -> str:
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, Image.Image):
        name = getattr(item, "filename", "") or ""
        return str(name) if name else f"<PIL image #{position}>"
    if isinstance(item, np.ndarray):
        return f"<array #{position}>"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<bytes #{position}>"
    return f"<{type(item).__name__} #{position}>"


# ---------------------------------------------------------------------------------------------
# The recogniser


class Recognizer:
    """Find faces, align them and recognise their expression with a POSTER model.

    ``checkpoint_or_model``: a weights file / release name (``poster.load_model``), a model that
    carries ``.meta`` (a ``poster.ModelMeta``), or ``None`` for the bundled default model
    (``default_checkpoint()``).  ``detector``: ``"yunet"`` (bundled, offline), ``"none"`` (the
    whole image is one already aligned face) or an object with ``detect(image_bgr) -> list[Face]``;
    ``detector_options`` go to a detector built by name (e.g. ``{"score_threshold": 0.7}``).
    ``min_face``: faces whose box is smaller (in pixels, smaller side) are ignored.  ``crop_size``:
    side of the aligned crop before the evaluation transform resizes it (100 = RAF-DB's aligned
    faces; ``None``: the model's input size).  ``template``: another 5x2 alignment template.
    ``grayscale``: turn each crop grey (3 equal channels) before the transform, for models trained on
    grey faces such as FER2013's; ``None`` (default): as the checkpoint's ``meta.input.grayscale`` says.
    ``backend``: a callable taking a float32 batch ``[B, 3, S, S]`` (CPU tensor) and returning the
    logits ``[B, num_classes]`` (tensor or array), e.g. an ONNX Runtime session wrapper; by default
    the torch model under ``torch.inference_mode`` on ``device``.  ``meta`` overrides the model's
    metadata; ``Recognizer(None, backend=..., meta=...)`` needs no torch model at all.
    ``precision``: ``"fp32"`` (default; the exact function) or ``"bf16"`` (autocast with pre-cast
    weights, BN folded, channels-last: several times faster on GPUs and on CPUs with bf16
    instructions such as AMX; probabilities within ~1e-2); ``"auto"``: bf16 where it is native
    (``poster.accelerate.native_bf16``), else fp32.  ``fast``: in fp32 too, fold the batch norms
    and use channels-last (within the golden tolerance of the exact function, faster on CPUs;
    what ``poster predict`` does unless ``--eager``).  ``compile``: ``torch.compile`` the
    model (frozen weights on CPU; the first batch pays the compile time).  These build the backend
    with ``poster.accelerate.prepare_inference`` (kept as ``fast_inference``; ``None`` when the
    model runs as written).  ``prefetch``: decode/detect in a background
    thread while the model runs.
    """

    def __init__(self, checkpoint_or_model: str | os.PathLike | torch.nn.Module | None = None,
                 device: str | torch.device = "cpu", detector: str | FaceDetector | None = "yunet",
                 batch_size: int = 32, backend: Backend | None = None, *, min_face: float = 0.0,
                 crop_size: int | None = DEFAULT_CROP_SIZE, template: np.ndarray | None = None,
                 detector_options: dict[str, Any] | None = None, meta=None, prefetch: bool = True,
                 grayscale: bool | None = None, precision: str = "fp32", compile: bool = False,
                 fast: bool = False) -> None:
        from .evaluate import resolve_device

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = resolve_device(device)
        model: torch.nn.Module | None
        if checkpoint_or_model is None and backend is not None and meta is not None:
            model = None  # a backend alone (e.g. ONNX Runtime) with the metadata of its weights
            self.checkpoint = getattr(meta, "source", "") or "<backend>"
        elif checkpoint_or_model is None:
            checkpoint_or_model = default_checkpoint()
        if isinstance(checkpoint_or_model, torch.nn.Module):
            model = checkpoint_or_model
            self.checkpoint = getattr(getattr(model, "meta", None), "source", "") or type(model).__name__
        elif checkpoint_or_model is not None:
            from .checkpoint.loading import load_model

            self.checkpoint = str(checkpoint_or_model)
            model = load_model(checkpoint_or_model, device="cpu")
        meta = meta if meta is not None else getattr(model, "meta", None)
        if meta is None:
            raise CheckpointError("the model has no .meta (class names, channel order, normalisation): load it "
                                  "with poster.load_model or pass meta=poster.ModelMeta(...)")
        self.model = model.to(self.device).eval() if model is not None else None
        if grayscale is not None and bool(grayscale) != meta.input.grayscale:
            meta = dataclasses.replace(meta, input=dataclasses.replace(meta.input, grayscale=bool(grayscale)))
        self.meta = meta
        self.class_names = tuple(meta.class_names)
        self.grayscale = meta.input.grayscale
        self.transform = EvalTransform(meta.input)  # applies the grey conversion when it is set
        self.channel_order = meta.input.channel_order
        self.detector = build_detector(detector, **(detector_options or {}))
        self.batch_size = int(batch_size)
        self.min_face = float(min_face)
        self.crop_size = int(crop_size) if crop_size is not None else int(meta.input.input_size)
        self.template = template
        if precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
        from .accelerate import native_bf16, prepare_inference

        if precision == "auto":
            precision = "bf16" if native_bf16(self.device) else "fp32"
        self.precision = precision
        self.fast_inference = None
        if backend is None and self.model is not None and (precision == "bf16" or compile or fast):
            backend = self.fast_inference = prepare_inference(
                self.model, self.device, precision, channels_last=precision == "bf16" or fast, compile=compile,
                warmup_batch_sizes=())
        self.backend = backend if backend is not None else self._torch_logits
        self.prefetch = bool(prefetch)

    # -- model -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def _torch_logits(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch.to(self.device, non_blocking=True))

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax of the backend's logits for a preprocessed batch, as a float64 [B, C] array."""
        logits = self.backend(batch)
        logits = torch.as_tensor(np.asarray(logits) if not isinstance(logits, torch.Tensor) else logits)
        logits = logits.detach().float().cpu()
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0] or logits.shape[1] != len(self.class_names):
            raise PosterError(f"the backend returned logits of shape {tuple(logits.shape)} for a batch of "
                              f"{batch.shape[0]}; expected [{batch.shape[0]}, {len(self.class_names)}]")
        if not torch.isfinite(logits).all():
            # Never hand NaN probabilities on (they are not valid JSON and poison every average).
            raise PosterError(f"the model ({self.checkpoint}) produced NaN or infinite outputs; "
                              "its weights are broken or it does not fit this input")
        return torch.softmax(logits, dim=1).double().numpy()

    # -- preprocessing ---------------------------------------------------------------------------

    def crops(self, image_bgr: np.ndarray, faces: Sequence[Face]) -> list[np.ndarray]:
        """The crop of each face, in the checkpoint's channel order (uint8 HxWx3)."""
        out = []
        for face in faces:
            crop = face_crop(image_bgr, face, self.crop_size, self.template)
            out.append(np.ascontiguousarray(crop[..., ::-1]) if self.channel_order == "RGB" else crop)
        return out

    def _decode(self, item: Any, color: str | None) -> np.ndarray:
        if isinstance(item, (bytes, bytearray, memoryview)):
            return decode_image_bytes(item, "BGR")
        return to_uint8_array(item, "BGR", assume=color)

    def _prepare(self, source: str, frame: int | None, item: Any, color: str | None) -> _Job:
        job = _Job(source=source, frame=frame)
        try:
            image = self._decode(item, color)
            faces = [f for f in self.detector.detect(image) if f.size >= self.min_face]
            tensors = [self.transform(c) for c in self.crops(image, faces)]
        except (DatasetError, ValueError, TypeError, OSError, cv2.error) as exc:
            job.error = exc
            return job
        job.image, job.faces, job.tensors = image, faces, tensors
        job.probs = [None] * len(faces)
        return job

    # -- running ---------------------------------------------------------------------------------

    def _run(self, jobs: Iterator[_Job], keep_images: bool, max_pending: int | None = None) -> Iterator[ImageResult]:
        """Batch the faces of consecutive jobs through the model; yield results in input order.

        At most ``max_pending`` inputs wait for a batch to fill (default ``2 * batch_size``; 1 for
        live sources, so that each frame comes out as soon as it is done)."""
        max_pending = max(1, max_pending if max_pending is not None else 2 * self.batch_size)
        if self.prefetch:
            jobs = _background(jobs, maxsize=max(2, self.batch_size))
        pending: deque[_Job] = deque()
        queued: list[tuple[_Job, int]] = []

        def flush() -> None:
            if not queued:
                return
            batch = torch.stack([job.tensors[i] for job, i in queued])
            probs = self.probabilities(batch)
            for (job, i), p in zip(queued, probs):
                job.probs[i] = p
                job.tensors[i] = None  # free memory early
            queued.clear()

        def ready() -> Iterator[ImageResult]:
            while pending and pending[0].done:
                yield self._result(pending.popleft(), keep_images)

        try:
            for job in jobs:
                pending.append(job)
                for i in range(len(job.tensors)):
                    queued.append((job, i))
                    if len(queued) >= self.batch_size:
                        flush()
                        yield from ready()
                if len(pending) >= max_pending:
                    flush()
                if not queued:
                    yield from ready()
            flush()
            yield from ready()
        finally:
            close = getattr(jobs, "close", None)
            if close is not None:
                close()  # stops the background thread, releases a video source

    def _result(self, job: _Job, keep_image: bool) -> ImageResult:
        if job.error is not None:
            return ImageResult(job.source, [], job.frame, error=str(job.error) or type(job.error).__name__)
        faces = [_make_face_result(f, p, self.class_names, i) for i, (f, p) in enumerate(zip(job.faces, job.probs))]
        return ImageResult(job.source, faces, job.frame, image=job.image if keep_image else None)

    def predict(self, image: Any, color: str | None = None, keep_image: bool = False) -> ImageResult:
        """All faces in one image: a path, a PIL image, encoded bytes or a uint8 numpy array (HxW, HxWx3,
        HxWx4).  ``color``: the channel order of a colour array, "BGR" (OpenCV images and frames) or
        "RGB" (PIL, imageio, matplotlib); required for 3- and 4-channel arrays (``ColorOrderError``
        otherwise), ignored for everything else.

        An unreadable image raises ``DatasetError`` (``predict_many`` reports it instead)."""
        _check_color(color)
        job = self._prepare(_describe(image, 0), None, image, color)
        if job.error is not None:
            raise job.error
        if job.tensors:
            probs = self.probabilities(torch.stack(job.tensors))
            job.probs = list(probs)
        return self._result(job, keep_image)

    __call__ = predict

    def predict_many(self, images: Iterable[Any], color: str | None = None,
                     keep_images: bool = False) -> Iterator[ImageResult]:
        """Results for many images, in order, their faces batched together (``batch_size``).

        Items are like ``predict``'s (``color`` as there), or ``(name, image)`` pairs to name arrays.
        A colour array without ``color`` stops the iteration with ``ColorOrderError``.  An item that cannot
        be read gives an ``ImageResult`` with ``error`` set and the iteration goes on.  The input is
        consumed lazily (from a background thread when ``prefetch`` is on): memory stays bounded
        for any number of images.  Closing the returned iterator early stops the work."""
        _check_color(color)

        def jobs() -> Iterator[_Job]:
            for position, item in enumerate(images):
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                    name, item = item
                else:
                    name = _describe(item, position)
                yield self._prepare(name, None, item, color)

        return self._run(jobs(), keep_images)

    def predict_video(self, source: int | str | os.PathLike, every_n: int = 1, smoothing: float | None = None,
                      keep_images: bool = False, max_frames: int | None = None) -> "VideoPrediction":
        """Per-frame results of a video file, a webcam (``0``, ``"webcam:0"``) or a stream URL.

        ``every_n``: process one frame in ``every_n``.  ``smoothing``: ``None`` or an EMA factor
        ``alpha`` in [0, 1): each face is followed across frames (box overlap) and its probabilities
        become ``alpha * previous + (1 - alpha) * current``.  ``max_frames``: stop after this many
        processed frames.  Returns an iterable ``VideoPrediction`` (with ``fps``, ``frame_size``,
        ``frames_read`` and ``frames_failed``: frames that could not be decoded are skipped and
        counted).  The source is opened at once (``PosterError`` when it cannot be)."""
        return VideoPrediction(self, source, every_n=every_n, smoothing=smoothing, keep_images=keep_images,
                               max_frames=max_frames)

    def __repr__(self) -> str:
        return (f"Recognizer(checkpoint={self.checkpoint!r}, arch={self.meta.arch!r}, device={str(self.device)!r}, "
                f"detector={self.detector!r}, channel_order={self.channel_order!r}, crop_size={self.crop_size})")


def _check_color(color: str | None) -> None:
    if color is not None and color not in ("RGB", "BGR"):
        raise ValueError(f"color must be 'RGB' or 'BGR', got {color!r}")


# ---------------------------------------------------------------------------------------------
# Video


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    ix = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    iy = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class _EmaTracker:
    """Greedy IoU matching of faces between frames; exponential moving average of probabilities."""

    def __init__(self, alpha: float, class_names: Sequence[str], min_iou: float = 0.3, max_age: int = 5) -> None:
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.class_names = tuple(class_names)
        self.min_iou = min_iou
        self.max_age = max_age
        self.tracks: dict[int, dict[str, Any]] = {}
        self._next = 0

    def update(self, faces: list[FaceResult]) -> list[FaceResult]:
        for t in self.tracks.values():
            t["age"] += 1
        pairs = sorted(((_iou(f.box, t["box"]), i, tid) for i, f in enumerate(faces)
                        for tid, t in self.tracks.items()), reverse=True)
        assigned: dict[int, int] = {}
        used: set[int] = set()
        for iou, i, tid in pairs:
            if iou < self.min_iou:
                break
            if i in assigned or tid in used:
                continue
            assigned[i] = tid
            used.add(tid)
        out = []
        for i, f in enumerate(faces):
            p = np.array([f.probabilities[c] for c in self.class_names])
            if i in assigned:
                tid = assigned[i]
                p = self.alpha * self.tracks[tid]["probs"] + (1.0 - self.alpha) * p
            else:
                tid = self._next
                self._next += 1
            self.tracks[tid] = {"box": f.box, "probs": p, "age": 0}
            best = int(np.argmax(p))
            out.append(FaceResult(f.box, f.landmarks, f.score, {c: float(v) for c, v in zip(self.class_names, p)},
                                  self.class_names[best], float(p[best]), f.index, tid))
        self.tracks = {tid: t for tid, t in self.tracks.items() if t["age"] <= self.max_age}
        return out


class VideoPrediction:
    """Iterable of per-frame ``ImageResult`` for one video source (see ``Recognizer.predict_video``)."""

    def __init__(self, recognizer: Recognizer, source: int | str | os.PathLike, every_n: int = 1,
                 smoothing: float | None = None, keep_images: bool = False, max_frames: int | None = None) -> None:
        from .video import FrameReader

        self.recognizer = recognizer
        self.reader = FrameReader(source, every_n=every_n)
        self.source = self.reader.name
        self.smoothing = smoothing
        if smoothing is not None and not 0.0 <= float(smoothing) < 1.0:
            self.reader.close()
            raise ValueError(f"smoothing must be None or in [0, 1), got {smoothing}")
        self.keep_images = keep_images
        self.max_frames = max_frames
        self.frames_processed = 0
        self._started = False

    @property
    def fps(self) -> float:
        return self.reader.fps

    @property
    def frame_size(self) -> tuple[int, int] | None:
        return self.reader.frame_size

    @property
    def frames_read(self) -> int:
        return self.reader.frames_read

    @property
    def frames_failed(self) -> int:
        return self.reader.frames_failed

    def close(self) -> None:
        self.reader.close()

    def __iter__(self) -> Iterator[ImageResult]:
        if self._started:
            raise RuntimeError("a VideoPrediction can be iterated once")
        self._started = True
        rec = self.recognizer
        tracker = _EmaTracker(float(self.smoothing), rec.class_names) if self.smoothing is not None else None

        def jobs() -> Iterator[_Job]:
            count = 0
            for index, frame in self.reader:
                if self.max_frames is not None and count >= self.max_frames:
                    break
                count += 1
                yield rec._prepare(self.source, index, frame, "BGR")

        live = self.reader.kind in ("webcam", "stream")
        results = rec._run(jobs(), self.keep_images, max_pending=1 if live else None)
        try:
            for result in results:
                self.frames_processed += 1
                if tracker is not None and result.ok:
                    result.faces = tracker.update(result.faces)
                yield result
        finally:
            results.close()  # stops the decoding thread
            self.reader.close()


# ---------------------------------------------------------------------------------------------
# Drawing

_PALETTE = [(60, 180, 75), (230, 50, 50), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]  # RGB


def _class_colour(index: int) -> tuple[int, int, int]:
    r, g, b = _PALETTE[index % len(_PALETTE)]
    return (b, g, r)


_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PANEL_BG = (40, 40, 40)
_WHITE = (255, 255, 255)


@dataclass
class _Panel:
    """The label and probability bars of one face, drawn beside it (never on it)."""

    face: FaceResult
    rows: list[tuple[str, float]]
    width: int
    height: int
    x: int = 0
    y: int = 0
    tag: str = ""


@dataclass(frozen=True)
class _Style:
    """Sizes derived from the picture's size, so that text stays legible on small pictures and
    does not dominate large ones."""

    scale: float
    thick: int
    row: int
    pad: int
    bar: int

    @classmethod
    def for_image(cls, height: int, width: int) -> "_Style":
        side = min(height, width)
        scale = float(np.clip(side / 900.0, 0.38, 1.1))
        thick = max(1, int(round(side / 500.0)))
        row = cv2.getTextSize("Hg", _FONT, scale, thick)[0][1] + int(round(8 * scale)) + 4
        return cls(scale=scale, thick=thick, row=row, pad=max(2, int(round(6 * scale))),
                   bar=max(30, int(round(110 * scale))))


def _text_width(text: str, style: _Style) -> int:
    return cv2.getTextSize(text, _FONT, style.scale, style.thick)[0][0]


def _make_panel(face: FaceResult, top_k: int, style: _Style, tag: str = "") -> _Panel:
    rows = face.top_k(top_k) if top_k > 0 else []
    title = f"{tag}{face.label} {face.confidence * 100:.0f}%"
    name_w = max((_text_width(n, style) for n, _ in rows), default=0)
    width = max(_text_width(title, style), name_w + style.pad + style.bar) + 2 * style.pad
    return _Panel(face, rows, width, style.row * (1 + len(rows)) + style.pad, tag=tag)


def _box_px(box: Sequence[float]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    return int(round(x)), int(round(y)), int(round(x + w)), int(round(y + h))


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _place_inside(panel: _Panel, blocked: list[tuple[int, int, int, int]], height: int, width: int,
                  gap: int) -> bool:
    """Put the panel beside its face (right, left, below, above) where it fits in the picture and
    covers no face and no other panel; False when there is no such place."""
    x0, y0, x1, y1 = _box_px(panel.face.box)
    pw, ph = panel.width, panel.height
    clamp_y = min(max(0, y0), height - ph)
    clamp_x = min(max(0, x0), width - pw)
    for x, y in ((x1 + gap, clamp_y), (x0 - gap - pw, clamp_y), (clamp_x, y1 + gap), (clamp_x, y0 - gap - ph)):
        rect = (x, y, x + pw, y + ph)
        if x < 0 or y < 0 or rect[2] > width or rect[3] > height:
            continue
        if any(_overlaps(rect, b) for b in blocked):
            continue
        panel.x, panel.y = x, y
        blocked.append(rect)
        return True
    return False


def _draw_panel(out: np.ndarray, panel: _Panel, names: list[str], style: _Style) -> None:
    x, y = panel.x, panel.y
    face = panel.face
    colour = _class_colour(names.index(face.label) if face.label in names else 0)
    cv2.rectangle(out, (x, y), (x + panel.width - 1, y + panel.height - 1), _PANEL_BG, -1)
    cv2.rectangle(out, (x, y), (x + panel.width - 1, y + style.row - 1), colour, -1)
    baseline = y + style.row - int(round(style.row * 0.3))
    cv2.putText(out, f"{panel.tag}{face.label} {face.confidence * 100:.0f}%", (x + style.pad, baseline), _FONT,
                style.scale, _WHITE, style.thick, cv2.LINE_AA)
    name_w = max((_text_width(n, style) for n, _ in panel.rows), default=0)
    for r, (name, prob) in enumerate(panel.rows, start=1):
        top = y + r * style.row
        cv2.putText(out, name, (x + style.pad, top + style.row - int(round(style.row * 0.3))), _FONT, style.scale,
                    _WHITE, style.thick, cv2.LINE_AA)
        bx = x + 2 * style.pad + name_w
        c = _class_colour(names.index(name) if name in names else r)
        cv2.rectangle(out, (bx, top + 3), (bx + style.bar - 1, top + style.row - 3), (90, 90, 90), -1)
        cv2.rectangle(out, (bx, top + 3), (bx + int(round((style.bar - 1) * prob)), top + style.row - 3), c, -1)


def annotate(image_bgr: np.ndarray, result: ImageResult, top_k: int = 3, class_names: Sequence[str] | None = None,
             draw_landmarks: bool = False, extend_canvas: bool = True) -> np.ndarray:
    """A copy of ``image_bgr`` with each face's box and, beside it, a panel with its label,
    confidence and the bars of the ``top_k`` most probable classes (colours by class).

    Nothing is drawn over a face: the panel goes right of, left of, below or above the box, where
    it covers no face and no other panel, in text sized to the picture.  Where no such place
    exists (a face filling the picture, a crowded group), the canvas is extended to the right and
    the panel goes there, numbered like its face (``extend_canvas=False``, e.g. for video frames
    that must keep their size: the panel is then put in the picture's top-left corner area,
    over whatever is there).  ``draw_landmarks`` marks the 5 landmarks (on the face).
    """
    out = np.ascontiguousarray(image_bgr.copy())
    h, w = out.shape[:2]
    names = list(class_names) if class_names is not None else (
        list(result.faces[0].probabilities) if result.faces else [])
    style = _Style.for_image(h, w)
    boxes = [_box_px(f.box) for f in result.faces]
    outline = style.thick + 1
    blocked = [(x0 - outline - 1, y0 - outline - 1, x1 + outline + 1, y1 + outline + 1) for x0, y0, x1, y1 in boxes]
    placed, homeless = [], []
    for face in result.faces:
        panel = _make_panel(face, top_k, style)
        (placed if _place_inside(panel, blocked, h, w, gap=outline + 2) else homeless).append(panel)
    if homeless:
        tagged = len(result.faces) > 1
        homeless = [_make_panel(p.face, top_k, style, tag=f"{p.face.index + 1}: " if tagged else "")
                    for p in homeless]
        out = _extend_for(out, homeless, style) if extend_canvas else out
        _stack_panels(homeless, start_x=w + style.pad if extend_canvas else 0, height=out.shape[0])
    for face, (x0, y0, x1, y1) in zip(result.faces, boxes):
        colour = _class_colour(names.index(face.label) if face.label in names else 0)
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, outline, cv2.LINE_AA)
        if draw_landmarks and face.landmarks is not None:
            for lx, ly in face.landmarks:
                cv2.circle(out, (int(round(lx)), int(round(ly))), outline, (0, 255, 255), -1, cv2.LINE_AA)
    for panel in placed + homeless:
        _draw_panel(out, panel, names, style)
    if homeless and len(result.faces) > 1:
        for panel in homeless:
            _draw_face_number(out, panel, style, outline, boxes)
    return out


def _extend_for(out: np.ndarray, panels: list[_Panel], style: _Style) -> np.ndarray:
    """The picture with a dark strip on its right, wide and tall enough for ``panels``."""
    h, w = out.shape[:2]
    strip_w = max(p.width for p in panels) + 2 * style.pad
    strip_h = max(h, sum(p.height + style.pad for p in panels) + style.pad)
    canvas = np.full((strip_h, w + strip_w, 3), 20, np.uint8)
    canvas[:h, :w] = out
    return canvas


def _stack_panels(panels: list[_Panel], start_x: int, height: int) -> None:
    """Panels one under the other, each as near its face's height as the others allow."""
    y = 0
    for panel in sorted(panels, key=lambda p: p.face.box[1]):
        wanted = int(round(panel.face.box[1]))
        panel.x = start_x
        panel.y = max(y, min(wanted, height - panel.height))
        y = panel.y + panel.height + 2


def _draw_face_number(out: np.ndarray, panel: _Panel, style: _Style, outline: int,
                      boxes: list[tuple[int, int, int, int]]) -> None:
    """The face's number just outside its box (above it, else below), matching the number in its
    panel; left out where it would cover another face (the panels are in the faces' top-down order)."""
    x0, y0, x1, y1 = _box_px(panel.face.box)
    text = str(panel.face.index + 1)
    (tw, th), base = cv2.getTextSize(text, _FONT, style.scale, style.thick)
    others = [b for b in boxes if b != (x0, y0, x1, y1)]
    for top in (y0 - outline - 2 - th - base, y1 + outline + 2):
        rect = (x0, top, x0 + tw + 4, top + th + base)
        if top < 0 or rect[3] > out.shape[0] or any(_overlaps(rect, b) for b in others):
            continue
        cv2.rectangle(out, rect[:2], rect[2:], _PANEL_BG, -1)
        cv2.putText(out, text, (x0 + 2, top + th), _FONT, style.scale, _WHITE, style.thick, cv2.LINE_AA)
        return
