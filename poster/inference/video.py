"""Video input and output for prediction: files, webcams, streams; annotated video files.

Sources (``parse_source``):

* an ``int`` or a string of digits, or ``"webcam:N"`` / ``"cam:N"`` / ``"camera:N"``: webcam ``N``;
* a string with a URL scheme (``rtsp://``, ``rtmp://``, ``http://``, ``https://``, ``udp://``, ...):
  a network stream, opened by OpenCV's FFmpeg back-end;
* anything else: a video file path.

``FrameReader`` yields ``(frame_index, frame_bgr)``; a frame that cannot be decoded is skipped and
counted (``frames_failed``) when a later frame decodes again; a run of failures at the end is the end
of the stream.  ``VideoSink`` writes frames to an MP4 (``mp4v``) file under a temporary name and
renames it into place when closed, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator, Protocol, Sequence

import cv2
import numpy as np

from ..errors import PosterError
from ..fileio import new_temporary_beside
from .follow import recognizer_following
from .results import ImageResult
from .timeline import Timeline
from .tracking import VideoTracker, with_probabilities

__all__ = ["VIDEO_EXTENSIONS", "parse_source", "is_video_path", "FrameReader", "VideoSink"]

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".ts", ".mts", ".m2ts", ".ogv")
_WEBCAM = re.compile(r"^(?:webcam|cam|camera):(\d+)$", re.IGNORECASE)
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_video_path(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def parse_source(source: int | str | os.PathLike) -> tuple[str, int | str]:
    """``("webcam", index)``, ``("stream", url)`` or ``("file", path)``."""
    if isinstance(source, bool):
        raise TypeError("a video source is a path, a URL or a webcam index, not a bool")
    if isinstance(source, int):
        return "webcam", source
    text = os.fspath(source)
    m = _WEBCAM.match(text.strip())
    if m:
        return "webcam", int(m.group(1))
    if text.strip().isdigit():
        return "webcam", int(text.strip())
    if _URL.match(text):
        return "stream", text
    return "file", text


def source_name(source: int | str | os.PathLike) -> str:
    kind, target = parse_source(source)
    return f"webcam:{target}" if kind == "webcam" else str(target)


def _stream_timeouts() -> list[int]:
    """OpenCV's open and read timeouts for a network stream: one that stalls ends (as a stream ends)
    after ``POSTER_STREAM_TIMEOUT`` seconds (default 30) instead of blocking the run for ever."""
    text = os.environ.get("POSTER_STREAM_TIMEOUT", "30")
    try:
        seconds = float(text)
    except ValueError:
        raise PosterError(f"POSTER_STREAM_TIMEOUT={text!r} is not a number of seconds") from None
    if not seconds == seconds:  # nan
        raise PosterError(f"POSTER_STREAM_TIMEOUT={text!r} is not a number of seconds")
    ms = int(min(max(seconds, 0.1), 3600) * 1000)
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]


class FrameReader:
    """Frames of a video file, webcam or stream (``cv2.VideoCapture``), opened on construction.

    ``every_n``: decode only every n-th frame (the others are grabbed, not decoded); indices stay
    those of the source.  ``max_failures``: consecutive unreadable frames after which the source is
    considered finished.  Attributes: ``fps`` (0 when unknown), ``frame_size`` ((w, h), once known),
    ``frame_count`` (files only, else 0), ``frames_read``, ``frames_failed``, ``position_s`` (the
    container's timestamp of the last frame read, seconds; ``None`` where there is none).
    """

    def __init__(self, source: int | str | os.PathLike, every_n: int = 1, max_failures: int = 25) -> None:
        if every_n < 1:
            raise ValueError(f"every_n must be >= 1, got {every_n}")
        self.kind, target = parse_source(source)
        self.name = source_name(source)
        if self.kind == "file" and not Path(target).is_file():
            raise PosterError(f"video file not found: {target}")
        self.every_n = int(every_n)
        self.max_failures = int(max_failures)
        self._cap = cv2.VideoCapture(target, cv2.CAP_ANY, _stream_timeouts()) if self.kind == "stream" \
            else cv2.VideoCapture(target)
        if not self._cap.isOpened():
            self._cap.release()
            what = {"webcam": "webcam", "stream": "stream", "file": "video file"}[self.kind]
            raise PosterError(f"cannot open {what} {self.name} (not a video, unsupported codec or unavailable)")
        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and 0 < fps < 1000 else 0.0
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT) if self.kind == "file" else 0
        self.frame_count = int(count) if count and np.isfinite(count) and count > 0 else 0
        w, h = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        self.frame_size = (w, h) if w > 0 and h > 0 else None
        self.frames_read = 0
        self.frames_failed = 0
        self.position_s: float | None = None
        self.frames_seen = 0  # the source's frames up to the last one grabbed or decoded
        self.reached_end = False  # the source ran out (rather than being closed early)
        self._lock = threading.Lock()  # close() from another thread waits for the current read

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        index = -1
        pending_failures = 0
        try:
            while True:
                index += 1
                with self._lock:
                    if self._cap is None:
                        break
                    if index % self.every_n:
                        ok, frame = self._cap.grab(), None
                    else:
                        ok, frame = self._cap.read()
                        ok = bool(ok) and frame is not None and frame.size > 0
                        if ok and self.kind == "file":
                            self.position_s = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
                if not ok:
                    if self.frame_count and index >= self.frame_count:
                        self.reached_end = True
                        break  # past the announced end of the file
                    pending_failures += 1
                    if pending_failures >= self.max_failures:
                        self.reached_end = True
                        break  # the end of the stream, not failed frames
                    continue
                self.frames_seen = index + 1
                self.frames_failed += pending_failures
                pending_failures = 0
                if frame is None:  # grabbed, skipped by every_n
                    continue
                if frame.ndim == 2:
                    frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
                elif frame.shape[2] == 4:
                    frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
                self.frames_read += 1
                if self.frame_size is None:
                    self.frame_size = (frame.shape[1], frame.shape[0])
                yield index, frame
        finally:
            self.close()

    @property
    def cut_short(self) -> bool:
        """A file that ran out well before the frame count its header announces (cut mid-way, say);
        containers that only estimate the count (from the duration) are a frame or two off."""
        missing = self.frame_count - self.frames_seen
        return self.kind == "file" and self.reached_end and self.frame_count > 0 and \
            missing > max(2, self.frame_count // 100)

    def close(self) -> None:
        with self._lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None


class VideoSink:
    """An MP4 (``mp4v``) writer that opens on the first frame and renames into place on ``close``.

    Frames of an odd width or height go to an MJPEG ``.avi`` instead (``self.path`` changes suffix):
    OpenCV's FFmpeg writers encode 4:2:0 and round such sizes down, losing the last row or column,
    while OpenCV's own MJPEG writer keeps the exact size.
    """

    def __init__(self, path: str | os.PathLike, fps: float = 25.0, fourcc: str = "mp4v") -> None:
        self.path = Path(path)
        self.fps = float(fps) if fps and fps > 0 else 25.0
        self.fourcc = fourcc
        self._writer: cv2.VideoWriter | None = None
        self._tmp: str | None = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, frame_bgr: np.ndarray) -> None:
        h, w = frame_bgr.shape[:2]
        if self._writer is None:
            self._open((w, h))
        if (w, h) != self._size:
            frame_bgr = cv2.resize(frame_bgr, self._size, interpolation=cv2.INTER_AREA)
        self._writer.write(np.ascontiguousarray(frame_bgr))
        self.frames_written += 1

    def _open(self, size: tuple[int, int]) -> None:
        odd = size[0] % 2 or size[1] % 2
        if odd:
            self.path, self.fourcc = self.path.with_suffix(".avi"), "MJPG"
        # the temporary keeps the target's extension: OpenCV picks the container from it
        self._tmp = str(new_temporary_beside(self.path, suffix=self.path.suffix or ".mp4"))
        backend = (cv2.CAP_OPENCV_MJPEG,) if odd else ()
        self._writer = cv2.VideoWriter(self._tmp, *backend, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, size)
        if not self._writer.isOpened():
            self.abort()
            raise PosterError(f"cannot write video {self.path} (codec {self.fourcc!r} unavailable in OpenCV)")
        self._size = size

    def close(self) -> Path | None:
        """Finish the file; returns its path, or ``None`` when no frame was written."""
        if self._writer is None:
            return None
        self._writer.release()
        self._writer = None
        os.replace(self._tmp, self.path)
        self._tmp = None
        return self.path

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        if self._tmp is not None:
            try:
                os.unlink(self._tmp)
            except FileNotFoundError:
                pass
            self._tmp = None


class FrameRecognizer(Protocol):
    """What ``VideoPrediction`` needs of a recogniser (``poster.Recognizer`` is one).  Where it also
    has ``prepare_for_frames(frames)``, that is called first with ``frames_expected`` (``None``:
    no known end), so that a long run can pay a one-off start-up for faster frames."""

    class_names: Sequence[str]

    def predict_frames(self, source: str, frames: Iterable[tuple[int, np.ndarray]], keep_images: bool = False,
                       live: bool = False) -> Iterator[ImageResult]: ...


DEFAULT_SMOOTHING = 0.6  # the timeline's smoothed probabilities when no smoothing is asked for


class VideoPrediction:
    """Iterable of per-frame ``ImageResult`` for one video source (see ``Recognizer.predict_video``).

    Every face gets a ``track`` id; ``timeline`` (``poster.inference.timeline.Timeline``) collects
    one timeline per face as the frames go by, ``to_dataframe()`` gives its rows (one per face per
    frame).  ``timeline_sink``: called with each frame's timeline rows (then none are kept in
    memory); ``detect_every``: a full face detection every K frames, faces followed in between
    (``poster.inference.follow``; 1: detect in every frame).
    """

    def __init__(self, recognizer: "FrameRecognizer", source: int | str | os.PathLike, every_n: int = 1,
                 smoothing: float | None = None, keep_images: bool = False, max_frames: int | None = None,
                 detect_every: int = 1, timeline_sink=None) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        if smoothing is not None and not 0.0 <= float(smoothing) < 1.0:
            raise ValueError(f"smoothing must be None or in [0, 1), got {smoothing}")
        self.recognizer = recognizer
        self.reader = FrameReader(source, every_n=every_n)
        self.source = self.reader.name
        self.smoothing = smoothing
        self.keep_images = keep_images
        self.max_frames = max_frames
        self.detect_every = int(detect_every)
        self.follower = None  # the FollowingDetector once running, with its counts
        self.frames_processed = 0
        self.timeline = Timeline(recognizer.class_names, self.source, self.reader.fps, every_n,
                                 keep_rows=timeline_sink is None, sink=timeline_sink)
        self._times: dict[int, float] = {}
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

    @property
    def frames_expected(self) -> int | None:
        """Frames this run will process as far as the container says (``None``: a webcam or stream,
        or a file that does not say)."""
        if self.reader.kind != "file" or not self.reader.frame_count:
            return None if self.max_frames is None else int(self.max_frames)
        count = -(-self.reader.frame_count // self.reader.every_n)
        return count if self.max_frames is None else min(count, int(self.max_frames))

    def close(self) -> None:
        self.reader.close()

    def to_dataframe(self):
        """The rows so far as a pandas DataFrame, one per face per frame (``Timeline.to_dataframe``)."""
        return self.timeline.to_dataframe()

    def __iter__(self) -> Iterator[ImageResult]:
        if self._started:
            raise RuntimeError("a VideoPrediction can be iterated once")
        self._started = True
        prepare = getattr(self.recognizer, "prepare_for_frames", None)
        if prepare is not None:
            prepare(self.frames_expected)
        rec, self.follower = recognizer_following(self.recognizer, self.detect_every)
        names = tuple(rec.class_names)
        tracker = VideoTracker(names, DEFAULT_SMOOTHING if self.smoothing is None else float(self.smoothing))
        live = self.reader.kind in ("webcam", "stream")
        results = rec.predict_frames(self.source, self._frames(), True, live=live)  # frames kept for thumbnails
        try:
            for result in results:
                self.frames_processed += 1
                stamp = self._times.pop(result.frame, None)
                if result.ok:
                    when = self.timeline.frame_time(stamp)
                    faces, smoothed = tracker.update(result.faces, when)
                    self.timeline.add(result.frame, when, faces, smoothed, result.image)
                    result.faces = faces if self.smoothing is None else [
                        with_probabilities(f, s, names, f.track) for f, s in zip(faces, smoothed)]
                if not self.keep_images:
                    result.image = None
                yield result
        finally:
            results.close()  # stops the decoding thread
            self.reader.close()

    def _frames(self) -> Iterator[tuple[int, np.ndarray]]:
        start = time.monotonic()
        for count, (index, frame) in enumerate(self.reader):
            if self.max_frames is not None and count >= self.max_frames:
                break
            # files: the container's timestamp (variable frame rates as they are); live: the clock
            self._times[index] = self.reader.position_s if self.reader.kind == "file" else time.monotonic() - start
            yield index, frame
