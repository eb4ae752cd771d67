"""The inference side of ``poster serve``: one image's bytes in, the ``predict`` record out.

The work is split so that the server can batch across requests: ``prepare`` (decode, detect,
align, transform; CPU work that runs in a thread pool, off the event loop) turns bytes into face
tensors, the micro-batcher runs the model on the tensors of many requests at once, and
``record`` turns the probabilities back into the record ``poster predict`` writes per face.
Nothing here knows about HTTP; input problems are ``InputRejected`` errors carrying the HTTP
status the server answers with.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.transforms import decode_image_bytes
from ..errors import DatasetError, InputRejected
from ..face import DETECTOR_NAMES
from ..face.detect import Face, build_detector

DETECTORS = DETECTOR_NAMES  # per-request choice: the built-in detectors


@dataclass(frozen=True)
class PredictOptions:
    """The per-request options of ``/v1/predict`` (query parameters), checked."""

    top_k: int = 3
    min_face: float = 0.0
    detector: str = "yunet"
    score_threshold: float = 0.6

    def __post_init__(self) -> None:
        if not 0 <= self.top_k <= 1000:
            raise InputRejected("top_k must be between 0 and 1000", 422)
        if not 0.0 <= self.min_face <= 1e6:
            raise InputRejected("min_face must be >= 0 pixels", 422)
        if self.detector not in DETECTORS:
            raise InputRejected(f"detector must be one of {', '.join(DETECTORS)}", 422)
        if not 0.0 <= self.score_threshold <= 1.0:
            raise InputRejected("score_threshold must be in [0, 1]", 422)


@dataclass
class PreparedImage:
    """One decoded image: its size, its faces and one model-ready tensor per face."""

    width: int
    height: int
    faces: list[Face] = field(default_factory=list)
    tensors: list[torch.Tensor] = field(default_factory=list)


def declared_pixels(data: bytes) -> int | None:
    """The pixel count the image header declares (no pixel is decoded); None if PIL cannot tell."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.size[0] * im.size[1]
        except Image.DecompressionBombError as exc:  # PIL's own guard fired first; its message has the size
            found = re.search(r"\((\d+) pixels\)", str(exc))
            return int(found.group(1)) if found else 1 << 40
        except Exception:
            return None


class InferenceEngine:
    """A ``poster.Recognizer`` plus what a server needs around it.

    ``recognizer``: built by ``load_recognizer`` (any checkpoint, release name, ONNX or TorchScript
    file).  ``max_pixels``: images declaring more pixels than this are refused before decoding (a
    small file can declare a 100,000 x 100,000 picture).  ``model_name``: what answers call the
    model (a release or file name, never a server path).
    """

    def __init__(self, recognizer, model_name: str, max_pixels: int = 40_000_000) -> None:
        self.recognizer = recognizer
        self.model_name = model_name
        self.max_pixels = int(max_pixels)
        self.class_names = tuple(recognizer.class_names)
        self._local = threading.local()  # detectors per thread: YuNet's OpenCV engine serialises calls on one instance

    # -- preparation (thread pool) ---------------------------------------------------------------

    def _detector(self, options: PredictOptions):
        cache: OrderedDict = getattr(self._local, "detectors", None) or OrderedDict()
        self._local.detectors = cache
        key = (options.detector, options.score_threshold if options.detector == "yunet" else None)
        if key not in cache:
            extra = {"score_threshold": options.score_threshold} if options.detector == "yunet" else {}
            cache[key] = build_detector(options.detector, **extra)
            while len(cache) > 8:  # thresholds are client-chosen: keep the cache bounded
                cache.popitem(last=False)
        cache.move_to_end(key)
        return cache[key]

    def decode(self, data: bytes) -> np.ndarray:
        """BGR pixels of an encoded image; ``InputRejected`` for empty, undecodable or too large ones."""
        if not data:
            raise InputRejected("the upload is empty (0 bytes)", 400)
        pixels = declared_pixels(data)
        if pixels is not None and pixels > self.max_pixels:
            raise InputRejected(f"image too large: it declares {pixels / 1e6:,.0f} MP, more than the server's "
                                f"limit of {self.max_pixels / 1e6:g} MP", 413)
        try:
            image = decode_image_bytes(data, "BGR", name="the upload")
        except DatasetError as exc:
            raise InputRejected(str(exc), 413 if "too large" in str(exc) else 400) from exc
        if image.shape[0] * image.shape[1] > self.max_pixels:
            raise InputRejected(f"image too large: {image.shape[1]} x {image.shape[0]} pixels, more than the "
                                f"server's limit of {self.max_pixels / 1e6:g} MP", 413)
        return image

    def prepare(self, data: bytes, options: PredictOptions) -> PreparedImage:
        """Decode, detect, align and transform, as ``Recognizer.predict`` does (CPU; thread-safe)."""
        rec = self.recognizer
        image = self.decode(data)
        faces = [f for f in self._detector(options).detect(image) if f.size >= options.min_face]
        tensors = [rec.transform(crop) for crop in rec.crops(image, faces)]
        return PreparedImage(width=int(image.shape[1]), height=int(image.shape[0]), faces=faces, tensors=tensors)

    # -- model and answer ------------------------------------------------------------------------

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Softmax probabilities [B, C] of a batch of face tensors (the model thread calls this)."""
        return self.recognizer.probabilities(batch)

    def record(self, prepared: PreparedImage, probabilities: list[np.ndarray], top_k: int,
               elapsed_ms: float) -> dict[str, Any]:
        """The answer: per face the fields ``poster predict`` writes to ``results.jsonl``."""
        from ..inference.results import face_result

        faces = []
        for index, (face, probs) in enumerate(zip(prepared.faces, probabilities)):
            result = face_result(face, probs, self.class_names, index)
            faces.append({**result.to_dict(), "top_k": [[n, round(p, 6)] for n, p in result.top_k(top_k)]})
        return {"faces": faces, "width": prepared.width, "height": prepared.height, "model": self.model_name,
                "elapsed_ms": round(elapsed_ms, 2)}

    def describe(self) -> dict[str, Any]:
        """``GET /v1/model``: what the model is and what it expects."""
        rec = self.recognizer
        meta = rec.meta
        return {"model": self.model_name, "architecture": meta.arch, "num_classes": len(self.class_names),
                "classes": list(self.class_names), "input": meta.input.to_dict(), "dataset": meta.dataset,
                "source": _without_server_path(str(meta.source or self.model_name)),
                "crop_size": rec.crop_size, "device": str(rec.device), "precision": rec.precision,
                "engine": rec.engine, "detectors": list(DETECTORS)}


def _without_server_path(source: str) -> str:
    """A checkpoint's ``source`` note, or only the file's name when it is a path on this server."""
    return Path(source).name if os.path.isabs(source) or os.path.exists(source) else source


def model_display_name(checkpoint: str | None) -> str:
    """A release name, or a file's name: answers never reveal the server's paths."""
    from ..checkpoint.releases import BUNDLED_RELEASE, RELEASES

    if checkpoint is None:
        return BUNDLED_RELEASE
    return checkpoint if checkpoint in RELEASES else Path(checkpoint).name


def load_recognizer(checkpoint: str | None, device: str = "auto", runtime: str = "auto", precision: str = "auto",
                    eager: bool = False):
    """A ``Recognizer`` for any checkpoint, release name, ONNX or TorchScript file, as ``predict`` builds it
    (``Recognizer.open``: the fast path with the prediction precision policy unless ``eager``), and on
    a CPU in fp32 as a traced graph where that is verified to give the same numbers: the server's
    event loop and decoding threads would stall an eager model at every op (the GIL).

    The detector is chosen per request by the engine, so the recogniser itself has none."""
    from ..inference.recognizer import Recognizer

    return Recognizer.open(checkpoint, runtime=runtime, device=device, detector="none", precision=precision,
                           eager=eager, trace=True, prefetch=False)
