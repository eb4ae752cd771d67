"""The options of a batch job (what ``poster predict`` runs), importable without torch or OpenCV:
the command line reads its flag defaults from here (tests/test_cli_options.py checks each one)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchOptions"]


@dataclass(frozen=True)
class BatchOptions:
    """What a batch job does with each input: ``fmt`` of the results file (``"jsonl"`` or ``"csv"``),
    ``top_k`` classes per record and annotation, ``annotate`` (write annotated copies), and for
    videos ``every_n`` (one frame in N), ``smoothing`` (EMA factor), ``max_frames``,
    ``detect_every`` (a full face detection every K frames, faces followed in between; 1: every
    frame) and ``timeline`` (write ``timelines/``: per-face tables, summaries, plot)."""

    fmt: str = "jsonl"
    top_k: int = 3
    annotate: bool = True
    every_n: int = 1
    smoothing: float | None = None
    max_frames: int | None = None
    detect_every: int = 5
    timeline: bool = True
