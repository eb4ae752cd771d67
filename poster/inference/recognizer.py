"""Expression recognition in the wild: the Python API.

::

    from poster import Recognizer

    rec = Recognizer.from_checkpoint("rafdb_best.pth", device="cuda")  # or a loaded model (with .meta)
    result = rec.predict("photo.jpg")                         # path, PIL image or numpy array
    for face in result.faces:
        print(face.box, face.label, face.confidence, face.top_k(3))

    rec.predict(frame, color="BGR")                           # colour numpy arrays must say their order
    for r in rec.predict_many(paths): ...                      # faces of many images batched together
    for r in rec.predict_video("clip.mp4", smoothing=0.6): ... # one ImageResult per frame

    backend, meta = poster.inference.runtime.load_backend("rafdb.onnx")
    rec = Recognizer(backend, meta)                           # any callable batch -> logits

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

import os
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.transforms import EvalTransform, decode_image_bytes, to_uint8_array
from ..device import default_batch_size, resolve_device
from ..errors import CheckpointError, DatasetError, PosterError
from ..face.align import DEFAULT_CROP_SIZE, face_crop
from ..face.detect import Face, FaceDetector, build_detector
from ..meta import ModelMeta, check_channel_order
from ..precision import PRECISIONS
from .model_pool import open_model_pool
from .prefetch import Prefetched, ordered_map
from .results import ImageResult, face_result
from .video import VideoPrediction

__all__ = ["Recognizer", "default_checkpoint"]

Backend = Callable[[torch.Tensor], Any]


def default_checkpoint() -> str:
    """Path of the model bundled with the package (used when no checkpoint is given): the compact
    FER2013-trained ``poster_v1_tiny.fer2013`` (docs/results.md), not an official POSTER release."""
    from ..checkpoint.releases import bundled_model_path

    return str(bundled_model_path())


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


class Recognizer:
    """Find faces, align them and recognise their expression with a POSTER model.

    ``backend``: a callable taking a float32 batch ``[B, 3, S, S]`` (CPU tensor) and returning the
    logits ``[B, num_classes]`` (tensor or array): a ``poster.inference.runtime`` backend (PyTorch,
    ONNX Runtime, TorchScript) or any function.  ``meta``: the ``poster.ModelMeta`` of its weights
    (class names, channel order, normalisation).  ``Recognizer.from_checkpoint`` builds both from a
    weights file, a release name or a model.

    ``detector``: ``"yunet"`` (bundled, offline), ``"none"`` (the whole image is one already aligned
    face) or an object with ``detect(image_bgr) -> list[Face]``; ``detector_options`` go to a
    detector built by name (e.g. ``{"score_threshold": 0.7}``).  ``device``: where the backend runs
    (reported; the backend itself decides).  ``batch_size``: faces per model batch (``None``:
    ``poster.device.default_batch_size``, 8 on a CPU, 32 on a GPU).  ``min_face``: faces whose box is smaller (in pixels,
    smaller side) are ignored.  ``crop_size``: side of the aligned crop before the evaluation
    transform resizes it (100 = RAF-DB's aligned faces; ``None``: the model's input size).
    With ``meta=None`` the first argument is a checkpoint instead (a weights file, a release name,
    a model with ``.meta``, or ``None`` for the bundled model) and is loaded as
    ``Recognizer.from_checkpoint`` does (``precision``, ``compile``, ``fast`` accepted too):
    ``Recognizer()`` and ``Recognizer("rafdb_best.pth")`` work as they always have.

    ``template``: another 5x2 alignment template.  ``grayscale``: turn each crop grey (3 equal
    channels) before the transform, for models trained on grey faces such as FER2013's; ``None``
    (default): as ``meta.input.grayscale`` says.  ``prefetch``: decode/detect in a background
    thread while the model runs.  ``name``: how errors and ``repr`` name the weights (default
    ``meta.source``).  ``model_workers``: model batches run at once (``None``: 2 for a PyTorch fast
    path on a CPU, each on half of the intra-op threads, else 1; ``resolved_model_workers()``).
    """

    def __init__(self, backend: Backend | str | os.PathLike | torch.nn.Module | None = None,
                 meta: ModelMeta | None = None, detector: str | FaceDetector | None = "yunet", *,
                 device: str | torch.device = "cpu", batch_size: int | None = None, min_face: float = 0.0,
                 crop_size: int | None = DEFAULT_CROP_SIZE, template: np.ndarray | None = None,
                 detector_options: dict[str, Any] | None = None, prefetch: bool = True,
                 grayscale: bool | None = None, name: str | None = None, model_workers: int | None = None,
                 **checkpoint_options: Any) -> None:
        if meta is None:
            # Shorthand kept for the first contact: Recognizer() is the bundled model, Recognizer(path)
            # a weights file or release name, exactly as Recognizer.from_checkpoint builds them.
            built = Recognizer.from_checkpoint(backend, device, detector, batch_size=batch_size, min_face=min_face,
                                               crop_size=crop_size, template=template, prefetch=prefetch,
                                               detector_options=detector_options, grayscale=grayscale,
                                               model_workers=model_workers, **checkpoint_options)
            self.__dict__.update(vars(built))
            return
        if checkpoint_options:
            raise TypeError(f"{sorted(checkpoint_options)} apply to checkpoints; Recognizer(backend, meta) takes none")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if model_workers is not None and model_workers < 1:
            raise ValueError(f"model_workers must be >= 1, got {model_workers}")
        if not isinstance(meta, ModelMeta):
            raise CheckpointError("meta must be a poster.ModelMeta (class names, channel order, normalisation), "
                                  f"got {type(meta).__name__}")
        if grayscale is not None:
            meta = meta.with_input(grayscale=bool(grayscale))
        self.backend = backend
        self.meta = meta
        self.device = resolve_device(device)
        self.checkpoint = name or meta.source or "<backend>"
        self.class_names = tuple(meta.class_names)
        self.grayscale = meta.input.grayscale
        self.transform = EvalTransform(meta.input)  # applies the grey conversion when it is set
        self.channel_order = meta.input.channel_order
        self.detector = build_detector(detector, **(detector_options or {}))
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(self.device)
        self.min_face = float(min_face)
        self.crop_size = int(crop_size) if crop_size is not None else int(meta.input.input_size)
        self.template = template
        self.prefetch = bool(prefetch)
        self.model_workers = int(model_workers) if model_workers is not None else None
        # set by from_checkpoint: the torch model and how it is run (None: a backend given as is)
        self.model: torch.nn.Module | None = None
        self.fast_inference = None
        self.precision = "fp32"
        self.engine = f"{type(backend).__name__} (given)"  # how the model runs, in words

    @classmethod
    def from_checkpoint(cls, checkpoint_or_model: str | os.PathLike | torch.nn.Module | None = None,
                        device: str | torch.device = "cpu", detector: str | FaceDetector | None = "yunet", *,
                        precision: str = "fp32", compile: bool = False, fast: bool = False,
                        **options: Any) -> "Recognizer":
        """A recogniser running a PyTorch model: a weights file / release name (``poster.load_model``),
        a model that carries ``.meta``, or ``None`` for the bundled default model (``default_checkpoint()``).

        ``precision``: ``"fp32"`` (default; the exact function) or ``"bf16"`` (autocast with pre-cast
        weights, BN folded, channels-last: several times faster on GPUs and on CPUs with bf16
        instructions such as AMX; probabilities within ~1e-2); ``"auto"``: the prediction policy of
        ``poster.precision`` (bf16 where it is native, else fp32).  ``fast``: in fp32 too, fold the batch
        norms and use channels-last (within the golden tolerance of the exact function, faster on
        CPUs).  ``compile``: ``torch.compile`` the model (frozen weights on CPU; the first batch pays the
        compile time).  Without any of these the model runs as written.  ``Recognizer.open`` is the
        same with the commands' defaults (fast path, ``precision="auto"``, any runtime).
        ``options`` as for ``Recognizer``."""
        from ..precision import resolve_precision

        if precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}")
        resolved = resolve_precision(precision, resolve_device(device), "predict")
        eager = resolved == "fp32" and not (fast or compile)
        return cls.open(checkpoint_or_model, runtime="torch", device=device, detector=detector,
                        precision="fp32" if eager else resolved, eager=eager, compile=compile, **options)

    @classmethod
    def open(cls, source: str | os.PathLike | torch.nn.Module | None = None, *, runtime: str = "auto",
             device: str | torch.device = "cpu", detector: str | FaceDetector | None = "yunet",
             precision: str = "auto", eager: bool = False, compile: bool = False, trace: bool = False,
             **options: Any) -> "Recognizer":
        """A recogniser for any weights file, release name, export or model, built as ``poster predict``
        and ``poster serve`` build it (``poster.inference.runtime.open_backend``: the fast path with the
        prediction precision policy unless ``eager``; ONNX/TorchScript exports by their runtime).
        ``rec.engine`` says how the model runs.  ``options`` as for ``Recognizer``."""
        from .runtime import open_backend

        if options.get("batch_size") is not None and options["batch_size"] < 1:
            raise ValueError(f"batch_size must be >= 1, got {options['batch_size']}")
        opened = open_backend(source, runtime=runtime, device=device, precision=precision, eager=eager,
                              compile=compile, trace=trace, purpose="predict")
        rec = cls(opened.backend, opened.meta, detector, device=opened.device, name=opened.source, **options)
        rec.model, rec.fast_inference, rec.precision, rec.engine = opened.model, opened.fast, opened.precision, \
            opened.description
        return rec

    # -- model -----------------------------------------------------------------------------------

    LONG_RUN_FRAMES = 500  # frames from which a video earns the traced graph's start-up

    def prepare_for_frames(self, frames: int | None) -> bool:
        """Before a run of ``frames`` video frames (``None``: a webcam or stream, no known end): an
        fp32 CPU fast path becomes the verified traced graph (``accelerate.use_traced_graph``) when
        the run is long enough to earn it.  Tracing and checking cost ~2 CPU-seconds once; the graph
        then saves ~5-8 CPU-ms per frame and runs its ops without Python's lock, so decoding and
        face detection in the other thread no longer stall it (docs/benchmarks.md, video).  Returns
        True when the model now runs as that graph (also when it already did)."""
        fast = self.fast_inference
        if fast is None or (frames is not None and frames < self.LONG_RUN_FRAMES):
            return bool(fast is not None and fast.traced)
        from .accelerate import describe_inference, use_traced_graph

        if use_traced_graph(fast, self.meta.input.input_size):
            self.engine = describe_inference(fast)
        return fast.traced


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
        return torch.softmax(logits.double(), dim=1).numpy()  # in float64: each row sums to 1 within 1e-15

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

    def _run(self, jobs: Iterator[_Job], keep_images: bool, live: bool = False) -> Iterator[ImageResult]:
        """Batch the faces of consecutive jobs through the model; yield results in input order.

        At most ``2 * batch_size`` inputs wait for a batch to fill.  ``live`` sources batch each
        input alone, and its result comes out as soon as it is done.  With more than one model
        worker (``model_workers``), up to that many batches run at once; live, a batch is waited
        for when no next input is ready (the source would make us wait anyway), so batches
        overlap only while inputs queue up."""
        max_pending = 1 if live else 2 * self.batch_size
        if self.prefetch:
            jobs = Prefetched(jobs, maxsize=max(2, self.batch_size))
        pool = open_model_pool(self.resolved_model_workers())
        pending: deque[_Job] = deque()
        queued: list[tuple[_Job, int]] = []
        running: deque[tuple[Future, list[tuple[_Job, int]]]] = deque()  # batches in the pool, oldest first

        def store(entries: list[tuple[_Job, int]], probs: np.ndarray) -> None:
            for (job, i), p in zip(entries, probs):
                job.probs[i] = p

        def collect(wait: bool, leave: int = 0) -> None:
            """Results of the pool's batches, oldest first: those finished, or with ``wait`` all
            but the newest ``leave`` (waiting for them)."""
            while len(running) > leave and (wait or running[0][0].done()):
                future, entries = running.popleft()
                store(entries, future.result())

        def flush() -> None:
            if not queued:
                return
            entries = list(queued)
            queued.clear()
            batch = torch.stack([job.tensors[i] for job, i in entries])
            for job, i in entries:
                job.tensors[i] = None  # free memory early
            if pool is None:
                store(entries, self.probabilities(batch))
                return
            collect(wait=True, leave=pool.workers - 1)  # a worker free for this batch
            running.append((pool.submit(self.probabilities, batch), entries))

        def ready() -> Iterator[ImageResult]:
            collect(wait=False)
            while pending and pending[0].done:
                yield self._result(pending.popleft(), keep_images)

        waiting = 0  # inputs since the last batch was formed (those in running batches do not count)
        try:
            for job in jobs:
                pending.append(job)
                waiting += 1
                for i in range(len(job.tensors)):
                    queued.append((job, i))
                    if len(queued) >= self.batch_size:
                        flush()
                        waiting = 0
                        yield from ready()
                if waiting >= max_pending:
                    flush()
                    waiting = 0
                if live and running and not (isinstance(jobs, Prefetched) and jobs.backlog()):
                    collect(wait=True)
                if not queued:
                    yield from ready()
            flush()
            collect(wait=True)
            yield from ready()
        finally:
            if pool is not None:
                pool.close()
            close = getattr(jobs, "close", None)
            if close is not None:
                close()  # stops the background thread, releases a video source

    def resolved_model_workers(self) -> int:
        """Model batches run at once: ``model_workers`` when given, else 2 for a PyTorch fast path
        on a CPU with at least 2 intra-op threads (each batch then runs on half of them:
        ``poster.inference.model_pool``), else 1."""
        if self.model_workers is not None:
            return self.model_workers
        fast = self.fast_inference
        cpu_fast_path = fast is not None and fast.device.type == "cpu" and not fast.compiled
        return 2 if cpu_fast_path and torch.get_num_threads() >= 2 else 1

    def _result(self, job: _Job, keep_image: bool) -> ImageResult:
        if job.error is not None:
            return ImageResult(job.source, [], job.frame, error=str(job.error) or type(job.error).__name__)
        faces = [face_result(f, p, self.class_names, i) for i, (f, p) in enumerate(zip(job.faces, job.probs))]
        return ImageResult(job.source, faces, job.frame, image=job.image if keep_image else None)

    def predict(self, image: Any, color: str | None = None, keep_image: bool = False) -> ImageResult:
        """All faces in one image: a path, a PIL image, encoded bytes or a uint8 numpy array (HxW, HxWx3,
        HxWx4).  ``color``: the channel order of a colour array, "BGR" (OpenCV images and frames) or
        "RGB" (PIL, imageio, matplotlib); required for 3- and 4-channel arrays (``ColorOrderError``
        otherwise), ignored for everything else.

        An unreadable image raises ``DatasetError`` (``predict_many`` reports it instead)."""
        if color is not None:
            check_channel_order(color, "color")
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
        if color is not None:
            check_channel_order(color, "color")

        def named() -> Iterator[tuple[str, Any]]:
            for position, item in enumerate(images):
                if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
                    yield item
                else:
                    yield _describe(item, position), item

        jobs = ordered_map(lambda pair: self._prepare(pair[0], None, pair[1], color), named(), self._prepare_workers())
        return self._run(jobs, keep_images)

    def _prepare_workers(self) -> int:
        """Threads that decode, detect and crop independent images: 2 where the detector is one of
        ours (thread-safe) and there are 2 cores, else 1.  Detection with its refinement passes
        costs more than the model on a photo (~60 against ~45 ms), so one thread left the model
        waiting: on 2 cores, 30 photos took 69-72 ms each with two against 84-88 with one
        (docs/benchmarks.md).  A video's frames stay in one thread (following is sequential)."""
        from ..face.detect import NoDetector, YuNetDetector

        ours = type(self.detector) in (YuNetDetector, NoDetector)
        return 2 if self.prefetch and ours and (os.cpu_count() or 1) >= 2 else 1

    def predict_frames(self, source: str, frames: Iterable[tuple[int, np.ndarray]], keep_images: bool = False,
                       live: bool = False) -> Iterator[ImageResult]:
        """Results for ``(index, BGR frame)`` pairs of one source, in order, their faces batched
        together.  ``live`` (webcams, streams): each frame comes out as soon as it is done instead
        of waiting for a batch to fill.  Closing the returned iterator early stops the work."""
        jobs = (self._prepare(source, index, frame, "BGR") for index, frame in frames)
        return self._run(jobs, keep_images, live=live)

    def predict_video(self, source: int | str | os.PathLike, every_n: int = 1, smoothing: float | None = None,
                      keep_images: bool = False, max_frames: int | None = None, detect_every: int = 5,
                      timeline_sink: Callable[[list], Any] | None = None) -> "VideoPrediction":
        """Per-frame results of a video file, a webcam (``0``, ``"webcam:0"``) or a stream URL.

        ``every_n``: process one frame in ``every_n``.  Each face gets a ``track`` id across frames
        (kept through short occlusions).  ``smoothing``: ``None`` or an EMA factor ``alpha`` in
        [0, 1): the probabilities become ``alpha * previous + (1 - alpha) * current`` per track.
        ``max_frames``: stop after this many processed frames.  ``detect_every``: a full face
        detection every K processed frames, faces followed in between (``poster.inference.follow``;
        1: every frame).  Returns an iterable ``VideoPrediction`` (with ``fps``, ``frame_size``,
        ``frames_read``, ``frames_failed``: frames that could not be decoded are skipped and
        counted; ``timeline`` and ``to_dataframe()``: one row per face per frame).  The source is
        opened at once (``PosterError`` when it cannot be)."""
        return VideoPrediction(self, source, every_n=every_n, smoothing=smoothing, keep_images=keep_images,
                               max_frames=max_frames, detect_every=detect_every, timeline_sink=timeline_sink)

    def __repr__(self) -> str:
        return (f"Recognizer(checkpoint={self.checkpoint!r}, arch={self.meta.arch!r}, device={str(self.device)!r}, "
                f"detector={self.detector!r}, channel_order={self.channel_order!r}, crop_size={self.crop_size})")
