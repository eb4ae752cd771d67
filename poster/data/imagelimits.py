"""Limits on what an image file may cost before it is decoded.

An image's size is known from its header, before any pixel is decoded: a 1 MB PNG can claim
32,000 x 32,000 pixels (3 GB decoded, several times that while OpenCV works), and a 2 GB sparse
file named ``.jpg`` would be read whole before it is found not to be an image.  So:

* **pixel budget**: an image whose header claims more than ``max_image_pixels()`` pixels
  (default ``2**29`` = 537 MP, e.g. 23,000 x 23,000; a 20,000 x 20,000 photo is within it) is
  refused from its header.  ``POSTER_MAX_IMAGE_PIXELS`` changes it (OpenCV's own limit,
  ``OPENCV_IO_MAX_IMAGE_PIXELS``, 2**30 by default, still applies above it);
* **file size**: a file is read only if it is a regular file (a FIFO or device named ``.jpg``
  would block or never end) and its size fits the pixels its header claims (at most 8 bytes per
  pixel, 16-bit RGBA, plus 16 MiB of metadata); a file over 64 MiB whose header is not a known
  image header is refused without being read.

Headers read here: PNG, JPEG, BMP, WebP, and whatever PIL identifies below its own
decompression-bomb limit; other files go to the decoder, which has OpenCV's limit.
"""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
from pathlib import Path

import numpy as np

from ..errors import DatasetError

DEFAULT_MAX_IMAGE_PIXELS = 1 << 29
HEAD_BYTES = 1 << 18  # where image headers are looked for in a large file
UNKNOWN_HEADER_MAX_BYTES = 64 << 20
METADATA_SLACK_BYTES = 16 << 20

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def max_image_pixels() -> int:
    """The pixel budget: ``$POSTER_MAX_IMAGE_PIXELS`` when set (a positive integer), else 2**29."""
    text = os.environ.get("POSTER_MAX_IMAGE_PIXELS", "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(text))
    except ValueError:
        raise DatasetError(f"POSTER_MAX_IMAGE_PIXELS must be a positive number of pixels, got {text!r}") from None
    if value < 1:
        raise DatasetError(f"POSTER_MAX_IMAGE_PIXELS must be a positive number of pixels, got {text!r}")
    return value


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24 and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from the first frame header (SOFn) of a JPEG, walking its segments."""
    if not head.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        if marker in _SOF_MARKERS:
            if i + 9 > len(head):
                return None
            height, width = struct.unpack(">HH", head[i + 5:i + 9])
            return width, height
        i += 2 + struct.unpack(">H", head[i + 2:i + 4])[0]
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    return None


def _webp_size(head: bytes) -> tuple[int, int] | None:
    if not (head[:4] == b"RIFF" and head[8:12] == b"WEBP") or len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8X":
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", head[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    return None


def _pil_size(head: bytes) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(head)) as im:  # reads the header only
                return im.size
    except Exception:  # not identified, or over PIL's own bomb limit: the decoder decides
        return None


def header_size(head: bytes | memoryview) -> tuple[int, int] | None:
    """``(width, height)`` claimed by an image's header, or ``None`` when it cannot be told."""
    head = bytes(head[:HEAD_BYTES])
    for reader in (_png_size, _jpeg_size, _bmp_size, _webp_size, _pil_size):
        size = reader(head)
        if size is not None:
            return size
    return None


def check_pixel_budget(head: bytes | memoryview | np.ndarray, name: str) -> tuple[int, int] | None:
    """Refuse (``DatasetError``) an image whose header claims more pixels than the budget."""
    if isinstance(head, np.ndarray):
        head = memoryview(np.ascontiguousarray(head.reshape(-1)[:HEAD_BYTES]).view(np.uint8))
    size = header_size(head)
    budget = max_image_pixels()
    if size is not None and size[0] * size[1] > budget:
        w, h = size
        raise DatasetError(f"image too large to decode ({w} x {h} = {w * h / 1e6:.0f} MP, over the pixel budget "
                           f"of {budget / 1e6:.0f} MP; set POSTER_MAX_IMAGE_PIXELS to change it): {name}")
    return size


def read_image_file(path: str | os.PathLike) -> np.ndarray:
    """The bytes of an image file, refusing what is not a regular file, what claims more pixels
    than the budget, and what is larger than its header can explain, before reading it whole."""
    p = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(p, flags)  # non-blocking: opening a FIFO must not wait for a writer
    except FileNotFoundError as exc:
        raise DatasetError(f"image file not found: {p}") from exc
    except OSError as exc:
        raise DatasetError(f"cannot read image file {p}: {exc.strerror or exc}") from exc
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO, device or socket, never read"
        raise DatasetError(f"not a regular file ({what}): {p}")
    with os.fdopen(fd, "rb") as f:
        head = f.read(HEAD_BYTES)
        size = check_pixel_budget(head, str(p))
        if size is None and info.st_size > UNKNOWN_HEADER_MAX_BYTES:
            raise DatasetError(f"not an image: no known image header in this {info.st_size / 2**20:.0f} MiB file: {p}")
        if size is not None and info.st_size > size[0] * size[1] * 8 + METADATA_SLACK_BYTES:
            raise DatasetError(f"file too large for the {size[0]} x {size[1]} image its header claims "
                               f"({info.st_size / 2**20:.0f} MiB): {p}")
        data = np.empty(max(info.st_size, len(head)), dtype=np.uint8)  # one buffer, no copy of the bytes
        data[:len(head)] = np.frombuffer(head, dtype=np.uint8)
        filled = len(head) + (f.readinto(memoryview(data)[len(head):]) or 0) if info.st_size > len(head) else len(head)
    return data[:filled]
