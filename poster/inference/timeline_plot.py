"""The timeline plot of a video (PNG): one panel per face, its smoothed probabilities over time,
the face's thumbnail at the left, and a title saying when it was seen and what it mostly showed.

Faces seen for less than ``MIN_FRAMES`` frames are left out of the plot (they stay in the tables);
at most ``MAX_PANELS`` faces are drawn, those seen longest, and the title says how many more there
are.  matplotlib's object-oriented API on an Agg canvas: no pyplot, no global backend switch.
"""

from __future__ import annotations

import io

import numpy as np

from .timeline import Timeline

__all__ = ["timeline_png", "MAX_PANELS", "MIN_FRAMES"]

MAX_PANELS = 8
MIN_FRAMES = 3


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def timeline_png(timeline: Timeline, dpi: int = 100) -> bytes:
    """The plot, PNG-encoded."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summaries = [s for s in timeline.summary() if s.frames >= MIN_FRAMES]
    shown = sorted(sorted(summaries, key=lambda s: -s.seen_s)[:MAX_PANELS], key=lambda s: s.track)
    rows = max(1, len(shown))
    fig = Figure(figsize=(11, 1.0 + 2.1 * rows))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, 2, width_ratios=(1, 7.5), hspace=0.55, wspace=0.14,
                            left=0.03, right=0.83, top=1 - 0.75 / (1.0 + 2.1 * rows), bottom=0.5 / (1.0 + 2.1 * rows))
    more = len(summaries) - len(shown)
    title = f"{timeline.source}: {len(timeline.tracks)} face{'s' * (len(timeline.tracks) != 1)}"
    fig.suptitle(title + (f" ({more} more not drawn)" if more > 0 else ""), fontsize=12)
    colours = _colours(len(timeline.class_names))
    end = max([s.end_s for s in summaries] + [timeline.info()["duration_s"], 1e-3])
    if not shown:
        ax = fig.add_subplot(grid[0, :])
        ax.text(0.5, 0.5, "no face followed for long enough to plot", ha="center", va="center")
        ax.set_axis_off()
    for row, summary in enumerate(shown):
        thumb_ax = fig.add_subplot(grid[row, 0])
        thumb_ax.set_axis_off()
        thumbnail = timeline.thumbnail(summary.track)
        if thumbnail is not None:
            thumb_ax.imshow(thumbnail)
        ax = fig.add_subplot(grid[row, 1])
        times, probs = _with_gaps(ax, *timeline.series(summary.track))
        for k, name in enumerate(timeline.class_names):
            ax.plot(times, probs[:, k], color=colours[k], linewidth=1.6 if name == summary.dominant else 1.0,
                    label=name, marker="." if len(times) < 3 else None)
        ax.set_xlim(0, end)
        ax.set_ylim(0, 1)
        ax.set_yticks([0, 0.5, 1])
        ax.grid(alpha=0.3)
        ax.set_title(f"face {summary.track}: {summary.start_s:.1f}-{summary.end_s:.1f} s, mostly {summary.dominant} "
                     f"({100 * summary.share[summary.dominant]:.0f}% of {summary.seen_s:.1f} s seen)",
                     fontsize=10, loc="left")
        ax.set_ylabel("probability", fontsize=8, labelpad=2)
        if row == rows - 1:
            ax.set_xlabel("time (s)")
        if row == 0:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.text(0.99, 0.01, "smoothed probabilities; grey: face not seen", ha="right", va="bottom", fontsize=8,
             color="0.4")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()



def _with_gaps(ax, times: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The series with a break (NaN) wherever the face was not seen for more than 3 usual steps,
    each such span shaded grey: a line drawn across an occlusion would claim what nobody saw."""
    if len(times) < 3:
        return times, probs
    steps = np.diff(times)
    gaps = np.flatnonzero(steps > 3 * np.median(steps))
    for g in gaps:
        ax.axvspan(times[g], times[g + 1], color="0.85", zorder=0)
    times = np.insert(times, gaps + 1, np.nan)
    probs = np.insert(probs, gaps + 1, np.nan, axis=0)
    return times, probs
