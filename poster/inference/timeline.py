"""One timeline per face of a video: what ``VideoPrediction`` builds and ``poster predict`` writes.

Each face seen in a frame becomes a row: its track id (``poster.inference.tracking.FaceTracker``:
the id survives short occlusions), the frame, the time in seconds, the box, the detection score,
the model's probabilities and the per-track smoothed probabilities.  ``Timeline`` keeps, per
track, what the summary (duration, dominant expression, share of time per expression) and the
plot need, in bounded memory (the plotted series is halved whenever it grows past a few thousand
points); the rows themselves are kept only when asked (the Python API, for ``to_dataframe``) and
are streamed to ``TimelineFiles`` by ``poster predict``.

Time: a file's frames carry their own timestamps (variable frame rates are followed as they are);
where a timestamp is missing, stands still or goes backwards, the frame's time is the previous one plus one
nominal interval, and the frame is counted (``timestamps_repaired``).  Intervals further than 25%
from the nominal one are counted too (``irregular_intervals``: a variable frame rate, or dropped
frames).  The share of time of each expression weights each observation of a track by the time to
its next one (at most twice the nominal interval, so that an occlusion does not count as time
spent in the last expression seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from ..errors import PosterError
from .results import FaceResult

__all__ = ["Timeline", "TrackSummary", "row_columns", "require_pandas"]

_MAX_SERIES = 4096  # plotted points per track before the series is halved (a power of 2: buffers double up to it)
_THUMB = 96  # thumbnail height, pixels
_DEFAULT_INTERVAL = 1 / 25  # when the source tells no frame rate


def require_pandas():
    """pandas, or a clear error naming the missing package."""
    try:
        import pandas
    except ImportError:  # pragma: no cover - pandas is a dependency; a broken install is named
        raise PosterError("video tables need pandas: pip install pandas pyarrow") from None
    return pandas


def row_columns(class_names: Sequence[str]) -> list[str]:
    """The columns of a timeline row, in order."""
    return ["source", "track", "frame", "time_s", "face", "x", "y", "w", "h", "score", "label", "confidence",
            *[f"p_{c}" for c in class_names], *[f"smooth_{c}" for c in class_names], "smooth_label"]


@dataclass
class TrackSummary:
    """What one face did over the video (``Timeline.summary``)."""

    track: int
    first_frame: int
    last_frame: int
    start_s: float
    end_s: float
    frames: int
    seen_s: float  # time on screen: the observations' weights summed
    dominant: str
    share: dict[str, float]  # of the time seen, per expression (smoothed label)
    mean_probabilities: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"track": self.track, "first_frame": self.first_frame, "last_frame": self.last_frame,
                "start_s": round(self.start_s, 4), "end_s": round(self.end_s, 4),
                "duration_s": round(self.end_s - self.start_s, 4), "seen_s": round(self.seen_s, 4),
                "frames": self.frames, "dominant": self.dominant,
                **{f"share_{c}": round(v, 4) for c, v in self.share.items()},
                **{f"mean_{c}": round(v, 6) for c, v in self.mean_probabilities.items()}}


@dataclass
class _TrackState:
    first_frame: int
    start_s: float
    last_frame: int = 0
    last_s: float = 0.0
    frames: int = 0
    pending_label: int | None = None  # the last observation, weighted when the next one comes
    time_per_label: np.ndarray | None = None
    prob_sum: np.ndarray | None = None
    # the plotted series, in buffers that grow by doubling up to _MAX_SERIES: small arrays made per frame and kept
    # would pin the native heap between the frames' large buffers (hundreds of MB over a long video)
    times: np.ndarray | None = None
    series: np.ndarray | None = None
    points: int = 0
    step: int = 1  # each plotted point stands for this many observations
    carry_n: int = 0
    carry_t: float = 0.0
    carry_p: np.ndarray | None = None
    thumbnail: np.ndarray | None = None  # RGB
    thumbnail_score: float = -1.0


class Timeline:
    """Rows, per-track summaries and plot data of one video.

    ``fps``: the source's nominal frame rate (0: unknown); ``every_n``: one frame in N is processed
    (the nominal interval between rows is ``every_n / fps``); ``keep_rows``: keep every row in
    memory for ``rows`` / ``to_dataframe`` (the Python API; a long ``poster predict`` run streams
    them to files instead); ``sink``: called with each frame's rows as they come.
    """

    def __init__(self, class_names: Sequence[str], source: str, fps: float = 0.0, every_n: int = 1,
                 keep_rows: bool = True, sink: Any = None) -> None:
        self.class_names = tuple(class_names)
        self.source = source
        self.fps = float(fps or 0.0)
        self.interval = every_n / self.fps if self.fps > 0 else _DEFAULT_INTERVAL
        self.keep_rows = keep_rows
        self.sink = sink
        self.rows: list[tuple] = []
        self.tracks: dict[int, _TrackState] = {}
        self.frames = 0
        self.last_time: float | None = None
        self.timestamps_repaired = 0
        self.irregular_intervals = 0

    # -- time ------------------------------------------------------------------------------------

    def frame_time(self, timestamp_s: float | None) -> float:
        """The time of the next frame from its timestamp (``None``: unknown), repaired where needed."""
        previous = self.last_time
        if timestamp_s is None or not math.isfinite(timestamp_s) or (previous is not None and timestamp_s <= previous):
            self.timestamps_repaired += previous is not None or timestamp_s is not None
            timestamp_s = 0.0 if previous is None else previous + self.interval
        elif previous is not None and abs((timestamp_s - previous) - self.interval) > 0.25 * self.interval:
            self.irregular_intervals += 1
        self.last_time = float(timestamp_s)
        return self.last_time

    # -- rows ------------------------------------------------------------------------------------

    def add(self, frame: int, time_s: float, faces: Sequence[FaceResult], smoothed: Sequence[np.ndarray],
            image: np.ndarray | None = None) -> list[tuple]:
        """One frame's faces (with their ``track`` set; ``probabilities`` the model's own) and their
        smoothed probabilities; ``image``: the BGR frame, for the thumbnails.  Returns the rows."""
        self.frames += 1
        rows = []
        for face, smooth in zip(faces, smoothed):
            raw = np.array([face.probabilities[c] for c in self.class_names], dtype=np.float64)
            smooth = np.asarray(smooth, dtype=np.float64)
            best = int(np.argmax(smooth))
            rows.append((self.source, int(face.track), int(frame), float(time_s), int(face.index),
                         *(float(v) for v in face.box), float(face.score), face.label, float(face.confidence),
                         *raw.tolist(), *smooth.tolist(), self.class_names[best]))
            self._observe(int(face.track), int(frame), float(time_s), smooth, best, face, image)
        if self.keep_rows:
            self.rows.extend(rows)
        if self.sink is not None:
            self.sink(rows)
        return rows

    def _observe(self, track: int, frame: int, time_s: float, smooth: np.ndarray, best: int, face: FaceResult,
                 image: np.ndarray | None) -> None:
        n = len(self.class_names)
        state = self.tracks.get(track)
        if state is None:
            state = self.tracks[track] = _TrackState(frame, time_s, time_per_label=np.zeros(n), prob_sum=np.zeros(n),
                                                     times=np.empty(64), series=np.empty((64, n)),
                                                     carry_p=np.zeros(n))
        elif state.pending_label is not None:
            state.time_per_label[state.pending_label] += min(max(time_s - state.last_s, 0.0), 2 * self.interval)
        state.pending_label = best
        state.last_frame, state.last_s = frame, time_s
        state.frames += 1
        state.prob_sum += smooth
        self._plot_point(state, time_s, smooth)
        if image is not None and face.score > state.thumbnail_score + 0.02:
            state.thumbnail, state.thumbnail_score = _thumbnail(image, face.box), face.score

    @staticmethod
    def _plot_point(state: _TrackState, time_s: float, smooth: np.ndarray) -> None:
        state.carry_n += 1
        state.carry_t += time_s
        state.carry_p += smooth
        if state.carry_n < state.step:
            return
        if state.points == len(state.times):  # grown by doubling: few allocations, small for short tracks
            state.times = np.resize(state.times, 2 * state.points)
            state.series = np.resize(state.series, (2 * state.points, state.series.shape[1]))
        state.times[state.points] = state.carry_t / state.carry_n
        np.divide(state.carry_p, state.carry_n, out=state.series[state.points])
        state.points += 1
        state.carry_n, state.carry_t = 0, 0.0
        state.carry_p[:] = 0.0
        if state.points == _MAX_SERIES:  # bounded memory for any length: halve the resolution
            half = _MAX_SERIES // 2
            state.times[:half] = (state.times[0::2] + state.times[1::2]) / 2
            state.series[:half] = (state.series[0::2] + state.series[1::2]) / 2
            state.points, state.step = half, state.step * 2

    # -- what it gives ---------------------------------------------------------------------------

    def summary(self) -> list[TrackSummary]:
        """One summary per track, in order of first appearance."""
        out = []
        for track, s in sorted(self.tracks.items()):
            per_label = s.time_per_label.copy()
            if s.pending_label is not None:
                per_label[s.pending_label] += self.interval  # the last observation lasts one interval
            seen = float(per_label.sum())
            share = per_label / seen if seen > 0 else per_label
            mean = s.prob_sum / max(s.frames, 1)
            out.append(TrackSummary(track, s.first_frame, s.last_frame, s.start_s, s.last_s + self.interval, s.frames,
                                    seen, self.class_names[int(np.argmax(per_label))],
                                    {c: float(v) for c, v in zip(self.class_names, share)},
                                    {c: float(v) for c, v in zip(self.class_names, mean)}))
        return out

    def series(self, track: int) -> tuple[np.ndarray, np.ndarray]:
        """Times (s) and smoothed probabilities ``[T, C]`` of one track, as plotted (bounded length)."""
        s = self.tracks[track]
        times, probs = s.times[:s.points].copy(), s.series[:s.points].copy()
        if s.carry_n:
            times = np.append(times, s.carry_t / s.carry_n)
            probs = np.vstack([probs, s.carry_p / s.carry_n])
        return times, probs

    def thumbnail(self, track: int) -> np.ndarray | None:
        return self.tracks[track].thumbnail

    def info(self) -> dict[str, Any]:
        """The video-level part of the summary."""
        return {"source": self.source, "fps": round(self.fps, 4), "frames": self.frames,
                "duration_s": round((self.last_time or 0.0) + (self.interval if self.frames else 0.0), 4),
                "tracks": len(self.tracks), "timestamps_repaired": self.timestamps_repaired,
                "irregular_intervals": self.irregular_intervals}

    def to_dataframe(self):
        """A pandas DataFrame, one row per face per frame (columns ``row_columns``)."""
        pandas = require_pandas()
        if not self.keep_rows:
            raise PosterError("this timeline streamed its rows to files and kept none in memory")
        return rows_dataframe(pandas, self.rows, self.class_names)

    def summary_dataframe(self):
        """A pandas DataFrame, one row per track (``TrackSummary.to_dict``)."""
        pandas = require_pandas()
        return pandas.DataFrame([s.to_dict() for s in self.summary()])


def rows_dataframe(pandas: Any, rows: Iterable[tuple], class_names: Sequence[str]):
    frame = pandas.DataFrame(list(rows), columns=row_columns(class_names))
    return frame.astype({"track": "int64", "frame": "int64", "face": "int64"})


def _thumbnail(image: np.ndarray, box: Sequence[float]) -> np.ndarray | None:
    h, w = image.shape[:2]
    x, y, bw, bh = box
    pad = 0.15 * max(bw, bh)
    x0, y0 = max(0, int(x - pad)), max(0, int(y - pad))
    x1, y1 = min(w, int(x + bw + pad)), min(h, int(y + bh + pad))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = image[y0:y1, x0:x1]
    size = (max(1, round(crop.shape[1] * _THUMB / crop.shape[0])), _THUMB)
    return cv2.cvtColor(cv2.resize(crop, size, interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
