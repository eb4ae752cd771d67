"""Annotated pictures: each face's box and, beside it, its label and probability bars."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from .results import FaceResult, ImageResult

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
