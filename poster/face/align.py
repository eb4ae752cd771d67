"""Face alignment: a similarity transform from 5 landmarks to a canonical template.

POSTER models are trained on aligned face crops (RAF-DB's ``aligned/*_aligned.jpg``: 100x100
pixels, made by a similarity transform from 5 facial points, then resized to 224 by the
evaluation transform).  A face found in the wild must be cut out the same way or the model sees
something it was never trained on.  ``align_face`` estimates the rotation + uniform scale +
translation (least squares, Umeyama 1991, no reflection) that maps the detector's 5 landmarks
onto ``CANONICAL_TEMPLATE`` and warps the image with it.

The template
------------
The exact template RAF-DB used for its aligned images is **not published** (the RAF-DB paper only
says the faces were aligned by a similarity transform from five landmarks and cropped to 100x100),
and no RAF-DB image is available to this project to measure one.  The template was therefore
*measured* on the closest offline data, FER2013 (48x48 face crops that frame the face like RAF-DB's
aligned images: eyes level, the whole face from forehead to chin filling the picture): the bundled
YuNet detector, with its default landmark refinement (``poster.face.detect``), was run on the 3,589
PublicTest faces (each upscaled x3 and padded with replicated borders); 3,089 faces were found;
every landmark set was also mirrored (x -> 1 - x, left/right swapped) so that the template is
exactly symmetric, and the per-coordinate median was taken.  In units of the crop's side (0 =
left/top edge, 1 = right/bottom edge)::

    right eye    (0.323, 0.383)      left eye     (0.677, 0.383)
    nose tip     (0.500, 0.591)
    right mouth  (0.354, 0.733)      left mouth   (0.646, 0.733)

i.e. for a 100x100 crop: eyes level at 38% of the height, 35.4 px apart, the face centred, the mouth
at 73% of the height, which leaves the forehead above and the chin inside the crop (YuNet's median
box on those faces spans y = 1..98 %, x = 11..87 %).  It is meant to reproduce RAF-DB's framing
(eyes level, face centred, a loose crop from forehead to chin) but could not be checked against
RAF-DB images: it is an estimate, not RAF-DB's own template; pass ``template=...`` (5x2, same
units) to use another one.  (YuNet's landmarks without refinement sit slightly differently,
eyes ~2% lower and ~1.5% further apart; the template fits the refined ones.)  "Right eye" is the
subject's right eye (on the left of the image): YuNet's landmark order, see ``poster.face.detect``.

Coordinates
-----------
Template units are continuous image coordinates over the crop's area ([0, 1] from edge to edge);
pixel ``(i, j)`` of an ``S``-pixel crop has its centre at ``((j + 0.5) / S, (i + 0.5) / S)``.
``template_points(S)`` gives the template in OpenCV pixel-centre coordinates (``t * S - 0.5``),
which is what ``cv2.warpAffine`` and the detectors use.

Crop size: RAF-DB's aligned faces are 100x100 and the reference evaluation transform resizes them to
224 (PIL bilinear), so ``align_face(..., size=100)`` followed by ``EvalTransform`` reproduces the
training images' sampling best (``poster.Recognizer`` does this by default); aligning
straight to the model's input size is sharper but not what the model saw.  When the face is much
larger than the crop, the image is first shrunk with ``INTER_AREA`` so the warp does not alias.
Pixels the transform pulls from outside the image repeat the border (``BORDER_REPLICATE``).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

__all__ = [
    "CANONICAL_TEMPLATE", "DEFAULT_CROP_SIZE", "template_points", "similarity_transform", "align_face",
    "crop_box", "face_crop", "transform_points",
]

DEFAULT_CROP_SIZE = 100

# right eye, left eye, nose tip, right mouth corner, left mouth corner (YuNet order); units of the crop side.
CANONICAL_TEMPLATE = np.array([
    [0.323, 0.383],
    [0.677, 0.383],
    [0.500, 0.591],
    [0.354, 0.733],
    [0.646, 0.733],
], dtype=np.float64)
CANONICAL_TEMPLATE.setflags(write=False)

_BORDERS = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT, "reflect": cv2.BORDER_REFLECT_101}


def template_points(size: int = DEFAULT_CROP_SIZE, template: np.ndarray | None = None) -> np.ndarray:
    """The template's 5 points in pixel-centre coordinates of a ``size`` x ``size`` crop (5x2 float64)."""
    t = CANONICAL_TEMPLATE if template is None else np.asarray(template, dtype=np.float64)
    if t.shape != (5, 2):
        raise ValueError(f"a template is a 5x2 array of (x, y) in units of the crop side, got shape {t.shape}")
    return t * float(size) - 0.5


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix ``M`` of the rotation + uniform scale + translation minimising
    ``sum |M [src_i, 1] - dst_i|^2`` (Umeyama's closed form; never a reflection).

    ``src`` and ``dst`` are Nx2 point arrays (N >= 2) in the same order.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need two matching Nx2 point sets with N >= 2, got {src.shape} and {dst.shape}")
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmarks must be finite numbers")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s ** 2).sum() / len(src)
    if var_s <= 1e-12:
        raise ValueError("the source points all coincide: no similarity transform is defined")
    cov = d.T @ s / len(src)  # 2x2
    u, sig, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1.0
    rot = u @ sign @ vt
    scale = float(np.trace(np.diag(sig) @ sign)) / var_s
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = scale * rot
    m[:, 2] = mu_d - scale * rot @ mu_s
    return m


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to Nx2 points."""
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    m = np.asarray(matrix, dtype=np.float64)
    return p @ m[:, :2].T + m[:, 2]


def _warp(image: np.ndarray, matrix: np.ndarray, size: int, border: int) -> np.ndarray:
    """``cv2.warpAffine`` to ``size`` x ``size``, shrinking the source first when it would alias."""
    m = np.asarray(matrix, dtype=np.float64)
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))  # output pixels per source pixel
    if scale < 0.5:
        # Cut the part of the image the crop comes from, shrink it to ~2 source pixels per output
        # pixel with an area filter, and fold the shrink into the matrix.
        inv = cv2.invertAffineTransform(m)
        corners = transform_points(np.array([[-1, -1], [size, -1], [-1, size], [size, size]], float), inv)
        h, w = image.shape[:2]
        x0 = int(max(0, math.floor(corners[:, 0].min()) - 2))
        y0 = int(max(0, math.floor(corners[:, 1].min()) - 2))
        x1 = int(min(w, math.ceil(corners[:, 0].max()) + 3))
        y1 = int(min(h, math.ceil(corners[:, 1].max()) + 3))
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            r = 2.0 * scale
            roi = image[y0:y1, x0:x1]
            nw, nh = max(1, round((x1 - x0) * r)), max(1, round((y1 - y0) * r))
            small = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
            rx, ry = nw / (x1 - x0), nh / (y1 - y0)
            # source point p = origin + (q + 0.5) / r - 0.5 for a point q of the shrunk ROI
            lin = m[:, :2] @ np.diag([1.0 / rx, 1.0 / ry])
            shift = m[:, :2] @ np.array([x0 + 0.5 / rx - 0.5, y0 + 0.5 / ry - 0.5]) + m[:, 2]
            m = np.concatenate([lin, shift[:, None]], axis=1)
            image = small
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = DEFAULT_CROP_SIZE,
               template: np.ndarray | None = None, border: str = "replicate") -> tuple[np.ndarray, np.ndarray]:
    """Warp ``image`` (HxWx3 uint8, any channel order: it is kept) so that the 5 ``landmarks``
    land on the template; returns ``(crop, matrix)`` with the ``size`` x ``size`` crop and the 2x3
    matrix from image to crop pixel coordinates."""
    if border not in _BORDERS:
        raise ValueError(f"border must be one of {sorted(_BORDERS)}, got {border!r}")
    size = int(size)
    if size < 8:
        raise ValueError(f"crop size must be at least 8 pixels, got {size}")
    lm = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    if lm.shape != (5, 2):
        raise ValueError(f"align_face needs the 5 landmarks (5x2), got shape {lm.shape}")
    matrix = similarity_transform(lm, template_points(size, template))
    return _warp(image, matrix, size, _BORDERS[border]), matrix


def crop_box(image: np.ndarray, box: tuple[float, float, float, float], size: int | None = None,
             scale: float = 1.0, border: str = "replicate") -> tuple[np.ndarray, np.ndarray]:
    """A square crop centred on ``box`` (x, y, w, h) with side ``max(w, h) * scale``, for faces
    without landmarks; resized to ``size`` when given (else native resolution).  Returns
    ``(crop, matrix)`` like ``align_face``."""
    x, y, w, h = (float(v) for v in box)
    side = max(w, h) * float(scale)
    if side <= 0:
        raise ValueError(f"empty face box {box}")
    out = int(size) if size is not None else max(1, int(round(side)))
    k = out / side
    cx, cy = x + w / 2.0, y + h / 2.0  # continuous coordinates of the box centre
    # continuous u_out = k * (u_in - (cx - side/2)); pixel centres are continuous - 0.5
    matrix = np.array([[k, 0.0, k * (0.5 - cx + side / 2.0) - 0.5],
                       [0.0, k, k * (0.5 - cy + side / 2.0) - 0.5]])
    return _warp(image, matrix, out, _BORDERS[border]), matrix


def face_crop(image: np.ndarray, face, size: int | None = DEFAULT_CROP_SIZE, template: np.ndarray | None = None,
              border: str = "replicate") -> np.ndarray:
    """The crop a model should see for ``face`` (a ``poster.face.Face``):

    * with landmarks: ``align_face`` to ``size`` (``None``: 100);
    * without landmarks and a box covering the whole image (``NoDetector``): the image itself,
      untouched, so that ``EvalTransform`` sees exactly the file's pixels;
    * without landmarks otherwise: ``crop_box`` (square around the box, resized to ``size``).
    """
    if face.landmarks is not None:
        return align_face(image, face.landmarks, DEFAULT_CROP_SIZE if size is None else size, template, border)[0]
    h, w = image.shape[:2]
    x, y, bw, bh = face.box
    if abs(x) < 0.5 and abs(y) < 0.5 and abs(bw - w) < 0.5 and abs(bh - h) < 0.5:
        return image
    return crop_box(image, face.box, size, 1.0, border)[0]
