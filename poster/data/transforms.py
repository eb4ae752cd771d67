"""Image decoding and the evaluation transform, matching the reference pipeline bit for bit.

The reference test transform (docs/faithfulness.md#eval-transform) is torchvision's
``Resize((S, S))`` (PIL bilinear) -> ``ToTensor`` (uint8 / 255) -> ``Normalize`` (ImageNet),
applied to an array whose channels are *already* in the model's channel order: the V1 RAF-DB
release was trained on BGR arrays, everything else on RGB (docs/faithfulness.md#channel-order).  ``EvalTransform``
reproduces it without torchvision; ``tests/test_transforms.py`` checks it against
``golden/preprocess.npz`` with zero difference.

Channel-order conventions used throughout:

* ``load_image(path, channel_order)`` decodes with OpenCV (as the V1 loaders did) and returns
  the array in the requested order.
* ``EvalTransform`` takes an array already in its config's order and never reorders it.
* ``to_uint8_array(image, channel_order, assume)`` turns "anything image-like" (a path, a PIL
  image, a numpy array whose order is ``assume``) into an array in ``channel_order``.  A colour
  numpy array carries no channel order of its own (OpenCV gives BGR, PIL/imageio/matplotlib give
  RGB, and a wrong guess silently changes the probabilities), so ``assume`` has no default: a
  3- or 4-channel array without it is a ``ColorOrderError``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import ColorOrderError, DatasetError
from ..meta import CHANNEL_ORDERS, InputConfig, check_channel_order
from .imagelimits import check_pixel_budget, read_image_file

__all__ = [
    "IMAGE_EXTENSIONS",
    "CHANNEL_ORDERS",
    "load_image",
    "decode_image_bytes",
    "to_uint8_array",
    "to_normalized_tensor",
    "normalize_levels",
    "resize_square",
    "EvalTransform",
]


def _decodable(extension: str) -> bool:
    """True when this OpenCV build can write and read back ``extension`` (GIF and AVIF support
    depends on the OpenCV version and build)."""
    try:
        ok, buf = cv2.imencode(extension, np.zeros((8, 8, 3), np.uint8))
        return bool(ok) and cv2.imdecode(buf, cv2.IMREAD_COLOR) is not None
    except cv2.error:
        return False


# File endings that the folder datasets, ``poster test``, ``poster train`` and ``poster predict``
# pick up (compared case-insensitively): the formats OpenCV reads.  Left out: OpenEXR (disabled in
# OpenCV unless an environment variable enables it) and PFM (floats decoded without scaling to 8 bits).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".dib", ".webp", ".tif", ".tiff", ".jp2",
                    ".pbm", ".pgm", ".ppm", ".pnm", ".sr", ".ras", ".hdr", ".pic") + tuple(
    e for e in (".gif", ".avif") if _decodable(e))

_PIL_FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
    "box": Image.BOX,
    "hamming": Image.HAMMING,
}

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


def _reorder(arr: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Return a C-contiguous copy-or-view of an HxWx3 array converted from ``src`` to ``dst`` order."""
    if src != dst:
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr)


def _jpeg_is_truncated(data: bytes) -> bool:
    """True when a JPEG lacks its end-of-image marker (older OpenCV builds decode such files
    half-grey with only a warning).  Trailing padding is tolerated; anything else is confirmed by
    a full PIL decode, which stops at the EOI marker and fails on truly truncated data."""
    if not data.startswith(b"\xff\xd8"):
        return False
    if data.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
    except Exception:
        return True
    return False


def _too_large_reason(buf: np.ndarray) -> str | None:
    """Why OpenCV refused an image for its size, from the header alone; None if size is not why.

    OpenCV refuses images over ``OPENCV_IO_MAX_IMAGE_PIXELS`` (default 2**30 pixels, e.g.
    40,000 x 40,000) and returns no image, which would otherwise read as "corrupt"."""
    limit = int(os.environ.get("OPENCV_IO_MAX_IMAGE_PIXELS", 1 << 30))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(buf.tobytes())) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError as exc:
        return str(exc).split(",")[0]
    except Exception:
        return None
    if w * h > limit:
        return f"{w} x {h} = {w * h / 1e6:.0f} MP, more than OpenCV's limit of {limit / 1e6:.0f} MP"
    return None


def decode_image_bytes(data: bytes | bytearray | memoryview | np.ndarray, channel_order: str = "RGB",
                       name: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, BMP, WebP, ...) to an HxWx3 uint8 array.

    Grey images become 3 identical channels, alpha is dropped, 16-bit images are scaled to 8 bits
    (OpenCV ``IMREAD_COLOR``).  Empty, truncated or undecodable data raises ``DatasetError``
    naming ``name``.
    """
    check_channel_order(channel_order)
    if isinstance(data, np.ndarray):
        buf = np.ascontiguousarray(data.reshape(-1)).view(np.uint8)
    else:
        buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if buf.size == 0:
        raise DatasetError(f"image file is empty (0 bytes): {name}")
    check_pixel_budget(buf, name)  # refuse from the header what would cost too much to decode
    try:
        arr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        failure = None
    except cv2.error as exc:  # OpenCV 5 raises for over-size images; 4.x returns None
        arr, failure = None, exc
    if arr is None:
        too_large = _too_large_reason(buf)
        if too_large:
            raise DatasetError(f"image too large to decode ({too_large}): {name}") from failure
        if failure is not None:
            raise DatasetError(f"cannot decode image {name}: {failure}") from failure
        raise DatasetError(f"cannot decode image (not an image, unsupported format or corrupt): {name}")
    if _jpeg_is_truncated(buf.tobytes()):
        raise DatasetError(f"image file is truncated (JPEG end marker missing): {name}")
    if arr.ndim == 2:  # defensive: IMREAD_COLOR should always give 3 channels
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    return _reorder(arr, "BGR", channel_order)


def load_image(path: str | os.PathLike, channel_order: str = "RGB") -> np.ndarray:
    """Read an image file into an HxWx3 uint8 array in ``channel_order`` ("RGB" or "BGR").

    The file is read as bytes (``np.fromfile``) and decoded with ``cv2.imdecode``, so paths with
    non-ASCII characters work on every platform.  Note that OpenCV applies the EXIF orientation
    tag (like ``cv2.imread``, the V1 loader) whereas a plain PIL loader (V2's ImageFolder) does not.
    Errors (missing file, empty, truncated, not an image) raise ``DatasetError`` naming the file.
    """
    check_channel_order(channel_order)
    p = Path(path)
    buf = read_image_file(p)  # regular files only, within the pixel budget (poster.data.imagelimits)
    return decode_image_bytes(buf, channel_order, name=str(p))


COLOR_ORDER_HINT = ('pass color="BGR" for OpenCV images (cv2.imread, cv2.VideoCapture) or color="RGB" '
                    "for PIL, imageio, matplotlib and scikit-image arrays")


def to_uint8_array(image: ImageLike, channel_order: str = "RGB", assume: str | None = None) -> np.ndarray:
    """Turn a path, PIL image or numpy array into an HxWx3 uint8 array in ``channel_order``.

    * path (str / PathLike): decoded with ``load_image``.
    * PIL image: converted to RGB first (its modes define the channel meaning).
    * numpy array: HxW (grey), HxWx1, HxWx3 or HxWx4 (alpha dropped), dtype uint8.  The channels
      of a 3- or 4-channel array are in ``assume`` order ("RGB", or "BGR" for ``cv2.imread``
      output), which must be given: ``ColorOrderError`` otherwise.  Grey arrays need none.
    """
    check_channel_order(channel_order)
    if assume is not None:
        check_channel_order(assume, "assume")
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, channel_order)
    if isinstance(image, Image.Image):
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        return _reorder(rgb, "RGB", channel_order)
    if isinstance(image, torch.Tensor):
        raise TypeError("to_uint8_array expects a path, PIL image or numpy array, not a torch.Tensor "
                        "(a tensor is usually already normalized; pass the raw image instead)")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a path, PIL image or numpy array, got {type(image).__name__}")
    arr = image
    if arr.dtype != np.uint8:
        raise ValueError(f"image array must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"image array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}")
    if arr.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(arr, 3, axis=2))
    if assume is None:
        raise ColorOrderError(f"a {arr.shape[2]}-channel numpy image needs its channel order: {COLOR_ORDER_HINT}")
    return _reorder(arr[:, :, :3], assume, channel_order)


def normalize_levels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     scale: float = 255.0) -> torch.Tensor:
    """``(x / scale - mean) / std`` per channel of a float ``[3, H, W]`` or ``[B, 3, H, W]`` tensor:
    ToTensor + Normalize in torchvision's op order (the one normalisation of the package; every
    path that must match ``EvalTransform`` bit for bit goes through it)."""
    m = torch.as_tensor(tuple(mean), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(tuple(std), dtype=x.dtype, device=x.device).view(-1, 1, 1)
    if scale != 1.0:
        x = x.div(scale)
    return x.sub(m).div(s)


def to_normalized_tensor(arr: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """HxWx3 uint8 -> float32 [3,H,W]: ``(u8 / 255 - mean) / std`` in torchvision's op order."""
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
        arr = arr.copy()
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    return normalize_levels(t.to(torch.float32), mean, std)


def resize_square(arr: np.ndarray, size: int, resample: int = Image.BILINEAR) -> np.ndarray:
    """HxWxC uint8 -> size x size x C with PIL (bilinear by default): torchvision's
    ``Resize((S, S))`` on a PIL image, as the reference pipeline resizes."""
    return np.asarray(Image.fromarray(arr).resize((size, size), resample))


def to_grey3(arr: np.ndarray, order: str) -> np.ndarray:
    """An HxWx3 uint8 image in ``order`` made grey, as 3 equal channels (ITU-R 601 luma, OpenCV's)."""
    grey = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY if order == "RGB" else cv2.COLOR_BGR2GRAY)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2RGB)


class EvalTransform:
    """The reference evaluation transform for a given ``InputConfig``.

    Call it with an HxWx3 uint8 numpy array whose channels are ALREADY in
    ``input_config.channel_order`` (the array is never reordered); it returns a float32 tensor
    [3, S, S]:  ``PIL.Image.fromarray(arr).resize((S, S), BILINEAR)`` -> ``/255`` ->
    ``(x - mean) / std``; with ``grayscale`` set, the array is made grey (3 equal channels)
    before the resize.  A PIL image is also accepted: PIL images are RGB by definition, so it is
    converted to the config's order first.
    """

    def __init__(self, input_config: InputConfig | None = None) -> None:
        self.input_config = input_config if input_config is not None else InputConfig()
        interp = self.input_config.interpolation.lower()
        if interp not in _PIL_FILTERS:
            raise ValueError(f"unknown interpolation {self.input_config.interpolation!r}; "
                             f"expected one of {sorted(_PIL_FILTERS)}")
        self._filter = _PIL_FILTERS[interp]

    @property
    def channel_order(self) -> str:
        return self.input_config.channel_order

    @property
    def size(self) -> int:
        return int(self.input_config.input_size)

    def __call__(self, image: Any) -> torch.Tensor:
        if isinstance(image, Image.Image):
            arr = to_uint8_array(image, self.channel_order)
        elif isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(
                    f"EvalTransform expects an HxWx3 uint8 array, got shape {image.shape} dtype {image.dtype}"
                    " (use to_uint8_array to convert other images)")
            arr = np.ascontiguousarray(image)
        else:
            raise TypeError(f"EvalTransform expects a numpy array or PIL image, got {type(image).__name__}")
        if self.input_config.grayscale:
            arr = to_grey3(arr, self.channel_order)
        resized = resize_square(arr, self.size, self._filter)
        return to_normalized_tensor(resized, self.input_config.mean, self.input_config.std)

    def __repr__(self) -> str:
        c = self.input_config
        return (f"EvalTransform(size={c.input_size}, channel_order={c.channel_order!r}, "
                f"interpolation={c.interpolation!r}, mean={c.mean}, std={c.std})")
