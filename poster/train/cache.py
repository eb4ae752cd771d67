"""The input pipeline at the resolution the model really sees (issue 4, docs/faithfulness.md#input).

Long because the cache's whole life is here: the bit-exact preprocessing, building the file (locked
between processes), checking it against its record, and the batches read from it change together.

Both POSTER backbones read only the even rows and columns of their 224x224 input
(``F.interpolate(x, size=112)``, nearest, is exactly ``x[:, :, ::2, ::2]``).  So every image is
decoded once, resized to 224 with PIL bilinear exactly like the reference transform, and kept as
uint8 at 112x112 in two *phases*:

* ``even`` = ``x224[::2, ::2]``: what the model sees of the image;
* ``odd``  = ``x224[::2, 1::2]``: what it sees of the horizontally flipped image, because
  ``hflip(x224)[::2, ::2] == x224[::2, 1::2][:, ::-1]``.

A PIL bilinear resize commutes with a horizontal flip (its filter taps are mirror symmetric), so a
flipped training sample is reconstructed exactly at 112 (tests/test_cache.py checks both phases
against ``EvalTransform`` bit for bit).  The cache is a numpy array ``[N, P, 3, 112, 112]`` uint8
(P = 2 phases, or 1 with ``phase=False``), 75 KB per image with both phases.

Where it lives: in memory (``path=None``) or as a memory-mapped ``.npy`` file in the folder
``path``, named by a hash of (record paths, file sizes and modification times, channel order,
size, phases, cache version).  Runs and ranks that build the same cache reuse the file; one
process builds it (a lock file) while the others wait, and it is written to a temporary name and
renamed, so a reader never sees half a cache.  Any changed file changes the hash (a new file is
built; old ones are left for the user to delete).

Random augmentation runs batched on the device, from one ``torch.Generator``, with no per-image
Python (:func:`augment_cached`, :class:`CachedBatches`):

* V1 flip-or-noise, then RandomHorizontalFlip: the two flips combine into one (their XOR), which
  picks the odd phase, reversed.  The Gaussian noise N(0, var 30), clipped and truncated to whole
  levels, is added here to the 112x112 uint8 pixels; the reference adds it to the original image
  (100x100 for RAF-DB) before the bilinear upsampling, which smooths it a little.  This is the
  one statistical difference from the reference recipe (documented, not hidden).
* normalisation (the cache is already in the model's channel order), exactly the eval transform's
  arithmetic: ``(u8 / 255 - mean) / std``.
* random erasing: the rectangle is drawn on the 224 grid with torchvision's statistics
  (``sample_erasing_boxes``) and the model-visible part of it, its even rows and columns, is
  erased on the 112 grid.  The erased pixels are therefore distributed exactly as in the
  reference (``erase_mask_112`` equals the 224 mask subsampled).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..data import load_image
from ..data.transforms import normalize_levels, resize_square
from ..errors import PosterError
from ..fileio import atomic_output, atomic_write_text
from ..meta import check_channel_order
from ..runlock import pid_alive
from .augment import AugmentConfig, _rand, _randn, add_noise_levels, sample_erasing_boxes, to_grey3_uint8

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_VERSION",
    "UInt8Cache",
    "cache_key",
    "build_uint8_cache",
    "check_and_cache",
    "decode_phases",
    "erase_mask_112",
    "augment_cached",
    "CachedBatches",
]

CACHE_VERSION = 1
_LOCK_POLL_S = 0.2


# --------------------------------------------------------------------------- decoding
def decode_phases(path: str | os.PathLike, channel_order: str, size: int = 224, phase: bool = True) -> np.ndarray:
    """One image as uint8 ``[P, 3, size/2, size/2]``: PIL bilinear resize to ``size`` (the reference
    transform), then the even phase and (``phase=True``) the odd-column phase."""
    resized = resize_square(load_image(path, channel_order), size)
    phases = [resized[::2, ::2]] + ([resized[::2, 1::2]] if phase else [])
    return np.stack([p.transpose(2, 0, 1) for p in phases])


def cache_key(records: Sequence[tuple[str, int]], channel_order: str, size: int = 224, phase: bool = True) -> str:
    """SHA-256 (hex) of what determines the cached pixels: every record's absolute path, file size
    and modification time (ns), the channel order, the size, the phases and ``CACHE_VERSION``."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, "channel_order": channel_order, "size": int(size),
                         "phase": bool(phase), "n": len(records)}, sort_keys=True).encode())
    for path, _ in records:
        p = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(p)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\0{p}\0{stamp}".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


@dataclass
class UInt8Cache:
    """Decoded images at the model's resolution.

    ``data``: uint8 ``[N, P, 3, S/2, S/2]`` (numpy array or read-only memory map), phase 0 = even,
    phase 1 = odd columns (present when ``phases == 2``); ``labels``: int64 ``[N]`` (from the
    records, never from the file); ``channel_order``: order of the stored channels;
    ``path``: the ``.npy`` file or None; ``reused``: True when it was loaded from disk.
    """

    data: np.ndarray
    labels: np.ndarray
    channel_order: str
    size: int
    key: str
    path: Path | None = None
    reused: bool = False

    @property
    def phases(self) -> int:
        return int(self.data.shape[1])

    @property
    def grid(self) -> int:
        return int(self.data.shape[-1])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def to_tensor(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """The whole cache as one uint8 tensor on ``device`` (shares memory with an in-memory cache on
        the CPU; a memory-mapped cache is read into memory)."""
        device = torch.device(device)
        if device.type == "cpu" and not isinstance(self.data, np.memmap) and self.data.flags.writeable:
            return torch.from_numpy(self.data)
        return torch.from_numpy(np.array(self.data, copy=True)).to(device)


def _fill(out: np.ndarray, records: Sequence[tuple[str, int]], channel_order: str, size: int, phase: bool,
          workers: int) -> None:
    def work(i: int) -> None:
        out[i] = decode_phases(records[i][0], channel_order, size, phase)

    if workers <= 1 or len(records) < 2:
        for i in range(len(records)):
            work(i)
        return
    # cv2.imdecode and PIL's resize release the GIL: threads decode in parallel without pickling.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(work, range(len(records)), chunksize=16):
            pass


def check_and_cache(records: Sequence[tuple[str, int]], channel_order: str, size: int = 224,
                    skip_bad: bool = False, origins: dict[str, str] | None = None,
                    workers: int | None = None) -> tuple[UInt8Cache, list[tuple[str, int]], list[tuple[str, str]]]:
    """The up-front image check and the in-memory cache in ONE decoding pass (instead of two).

    Every image is decoded once by ``poster.data.datasets.check_images`` (same errors, same
    ``skip_bad`` policy, same file-and-line messages), and each decoded image goes straight into
    its slot of the cache.  Returns ``(cache, good_records, bad)``; the cache holds the good
    records, in order, exactly as ``build_uint8_cache(good_records, ...)`` would.
    """
    from ..data.datasets import check_images

    if size <= 0 or size % 2:
        raise ValueError(f"size must be a positive even number, got {size}")
    records = [(os.fspath(p), int(label)) for p, label in records]
    slots: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(records):
        slots.setdefault(path, []).append(i)
    data = np.empty((len(records), 2, 3, size // 2, size // 2), dtype=np.uint8)

    def decode_into_slots(path: str) -> None:
        phases = decode_phases(path, channel_order, size, True)
        for i in slots[path]:
            data[i] = phases

    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    good, bad = check_images(records, skip_bad, origins=origins, workers=workers, decode=decode_into_slots)
    if bad:  # keep the good slots only (a copy, once)
        bad_paths = {path for path, _ in bad}
        data = data[[i for i, (path, _) in enumerate(records) if path not in bad_paths]]
    labels = np.asarray([label for _, label in good], dtype=np.int64)
    return UInt8Cache(data, labels, channel_order, size, cache_key(good, channel_order, size, True)), good, bad


def _try_lock(lock: Path) -> bool:
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:  # a lock left by a dead process on this host is stale
            host, pid = lock.read_text().split(":")
            if host == socket.gethostname() and not pid_alive(int(pid)):
                lock.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{socket.gethostname()}:{os.getpid()}")
    return True


def build_uint8_cache(records: Sequence[tuple[str, int]], channel_order: str, size: int = 224, phase: bool = True,
                      path: str | os.PathLike | None = None, workers: int | None = None,
                      wait_timeout: float = 3600.0) -> UInt8Cache:
    """Decode every record once into a :class:`UInt8Cache`.

    Args:
        records: ``(image path, label)`` pairs (e.g. ``dataset.records``).
        channel_order: "RGB" or "BGR": the model's channel order (stored that way).
        size: the reference resize (224); the cache holds ``size/2`` squares.
        phase: also store the odd-column phase (needed for horizontal flips).
        path: None (in memory) or a folder for the memory-mapped ``.npy`` (created if needed).
        workers: decoding threads (default ``min(8, cpu count)``).
        wait_timeout: seconds to wait for another process building the same file.
    """
    check_channel_order(channel_order)
    if size <= 0 or size % 2:
        raise ValueError(f"size must be a positive even number, got {size}")
    records = [(os.fspath(p), int(label)) for p, label in records]
    labels = np.asarray([label for _, label in records], dtype=np.int64)
    workers = min(8, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    shape = (len(records), 2 if phase else 1, 3, size // 2, size // 2)
    key = cache_key(records, channel_order, size, phase)
    if path is None:
        data = np.empty(shape, dtype=np.uint8)
        _fill(data, records, channel_order, size, phase, workers)
        return UInt8Cache(data, labels, channel_order, size, key)

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"u8cache-v{CACHE_VERSION}-{key[:32]}.npy"
    lock = final.with_suffix(".lock")
    deadline = time.monotonic() + wait_timeout
    built = False
    while not final.exists():
        if _try_lock(lock):
            try:
                if not final.exists():
                    _write_cache_file(final, shape, records, channel_order, size, phase, workers, key)
                    built = True
            finally:
                lock.unlink(missing_ok=True)
            break
        if time.monotonic() > deadline:
            raise PosterError(f"timed out waiting for {lock} (another process building the cache); "
                              "delete the lock file if no such process runs")
        time.sleep(_LOCK_POLL_S)
    return _open(final, shape, labels, channel_order, size, key, reused=not built)


def _write_cache_file(final: Path, shape: tuple[int, ...], records, channel_order: str, size: int, phase: bool,
                      workers: int, key: str) -> None:
    start = time.perf_counter()
    with atomic_output(final) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _fill(out, records, channel_order, size, phase, workers)
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        info = {"version": CACHE_VERSION, "key": key, "images": len(records), "channel_order": channel_order,
                "size": size, "phases": shape[1], "first": records[0][0] if records else None,
                "shape": list(shape), "bytes": os.path.getsize(tmp), "sha256": _file_sha256(tmp)}
        # The record goes first: a published cache file always has the record it is checked against.
        atomic_write_text(_record_path(final), json.dumps(info, indent=2))
    log.info("built image cache %s (%d images, %.1f MB) in %.1fs", final, len(records),
             np.prod(shape) / 1e6, time.perf_counter() - start)


def _record_path(final: Path) -> Path:
    return final.parent / (final.stem + ".json")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_cache_file(final: Path, key: str, shape: tuple[int, ...]) -> None:
    """A cache built earlier must still be what was built: size and SHA-256 against its record.

    The file is trusted for training only after this check (a zeroed, truncated or swapped file
    would otherwise train the model on garbage without a word).
    """
    def refuse(problem: str) -> PosterError:
        return PosterError(f"image cache {final} {problem}; delete it (and {_record_path(final).name}) to rebuild it")

    try:
        info = json.loads(_record_path(final).read_text())
    except (OSError, ValueError) as e:
        raise refuse(f"has no readable build record ({type(e).__name__})") from None
    if not isinstance(info, dict) or info.get("key") != key or info.get("shape") != list(shape):
        raise refuse("does not match its build record (key or shape)")
    if os.path.getsize(final) != info.get("bytes"):
        raise refuse(f"has {os.path.getsize(final)} bytes, its build record says {info.get('bytes')}")
    if _file_sha256(final) != info.get("sha256"):
        raise refuse("has changed since it was built (SHA-256 differs from its build record)")


def _open(final: Path, shape, labels, channel_order, size, key, reused: bool) -> UInt8Cache:
    if reused:
        verify_cache_file(final, key, shape)
    data = np.load(final, mmap_mode="r")
    if data.shape != shape or data.dtype != np.uint8:
        raise PosterError(f"{final}: cache file has shape {data.shape} {data.dtype}, expected {shape} uint8; "
                          "delete it to rebuild")
    return UInt8Cache(data, labels, channel_order, size, key, path=final, reused=reused)


# --------------------------------------------------------------------------- augmentation
def erase_mask_112(top: torch.Tensor, left: torch.Tensor, h: torch.Tensor, w: torch.Tensor, grid: int = 112
                   ) -> torch.Tensor:
    """``[B, 1, grid, grid]`` mask of the even rows/columns inside rectangles drawn on the
    ``2*grid`` image: row ``i`` is erased when ``top <= 2i < top + h``, i.e.
    ``ceil(top/2) <= i < ceil((top+h)/2)`` (same for columns)."""
    idx = torch.arange(grid, device=top.device).view(1, -1)
    r0, r1 = ((top + 1) // 2).view(-1, 1), ((top + h + 1) // 2).view(-1, 1)
    c0, c1 = ((left + 1) // 2).view(-1, 1), ((left + w + 1) // 2).view(-1, 1)
    rows = (idx >= r0) & (idx < r1)
    cols = (idx >= c0) & (idx < c1)
    return (rows.unsqueeze(2) & cols.unsqueeze(1)).unsqueeze(1)




class _Source:
    """Gathers ``[B, 3, g, g]`` uint8 samples of given phases from a device tensor or a numpy array."""

    def __init__(self, data: torch.Tensor | np.ndarray, device: torch.device):
        self.data = data
        self.device = device

    def gather(self, indices: torch.Tensor, phase: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.data, torch.Tensor):
            idx = indices.to(self.data.device)
            ph = torch.zeros_like(idx) if phase is None else phase.to(self.data.device, torch.long)
            out = self.data[idx, ph]
            return out.to(self.device, non_blocking=True)
        idx = indices.cpu().numpy()
        ph = np.zeros_like(idx) if phase is None else phase.cpu().numpy().astype(np.int64)
        batch = torch.from_numpy(np.ascontiguousarray(self.data[idx, ph]))
        if self.device.type == "cuda":
            batch = batch.pin_memory()
        return batch.to(self.device, non_blocking=True)


def augment_cached(data: torch.Tensor | np.ndarray, indices: torch.Tensor | Sequence[int], config: AugmentConfig,
                   generator: torch.Generator | None = None, device: str | torch.device | None = None,
                   train: bool = True, size: int = 224) -> torch.Tensor:
    """A normalised float32 batch ``[B, 3, g, g]`` of cached samples, augmented as ``config`` says.

    ``data`` is a cache array/tensor ``[N, P, 3, g, g]`` (``UInt8Cache.data`` or its
    ``to_tensor()``), already in the model's channel order (``config.input_order`` is ignored;
    ``config.channel_order`` must equal the cache's).  ``train=False`` gives the evaluation batch:
    the even phase, normalised (bit-identical to ``EvalTransform(img)[:, ::2, ::2]``).

    Random numbers, drawn in this order from ``generator`` with shapes depending only on the batch
    size: flip-or-noise coins [B,2] (if enabled), hflip coins [B], erasing boxes (if enabled,
    ``sample_erasing_boxes`` on the ``size`` grid), Gaussian noise [B,3,g,g] (if flip-or-noise).
    """
    idx = torch.as_tensor(indices, dtype=torch.long)
    if device is None:
        device = data.device if isinstance(data, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    source = _Source(data, device)
    b = int(idx.numel())
    grid = int(data.shape[-1])
    phases = int(data.shape[1])
    if not train:
        x = source.gather(idx, None)
        x = to_grey3_uint8(x, config.channel_order) if config.grayscale else x
        return normalize_levels(x.to(torch.float32), config.mean, config.std)

    fon_flip = torch.zeros(b, dtype=torch.bool, device=device)
    do_noise = torch.zeros(b, dtype=torch.bool, device=device)
    if config.flip_or_noise:
        u = _rand((b, 2), generator, device)
        apply = u[:, 0] < config.flip_or_noise_p
        fon_flip = apply & (u[:, 1] < 0.5)
        do_noise = apply & ~(u[:, 1] < 0.5)
    hflip = (_rand((b,), generator, device) < config.hflip_p) if config.hflip_p > 0 else torch.zeros_like(fon_flip)
    flip = fon_flip ^ hflip
    boxes = None
    if config.erasing_p > 0:
        boxes = sample_erasing_boxes(b, size, size, generator, p=config.erasing_p, scale=config.erasing_scale,
                                     ratio=config.erasing_ratio, device=device)
    noise = _randn((b, 3, grid, grid), generator, device) if config.flip_or_noise else None
    if phases < 2 and bool(flip.any()):
        raise PosterError("this cache has no odd phase (built with phase=False): horizontal flips need it")

    x = source.gather(idx, flip if phases > 1 else None)
    if config.grayscale:  # per pixel, so it commutes with the flip and the phase gather
        x = to_grey3_uint8(x, config.channel_order)
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x).to(torch.float32)
    if noise is not None:
        noisy = add_noise_levels(x, noise, config.noise_std)
        x = torch.where(do_noise.view(-1, 1, 1, 1), noisy, x)
    x = normalize_levels(x, config.mean, config.std)
    if boxes is not None:
        top, left, h, w, _ = boxes
        x = x.masked_fill(erase_mask_112(top, left, h, w, grid), float(config.erasing_value))
    return x


class CachedBatches:
    """Training/evaluation batches from a :class:`UInt8Cache`, produced on ``device``.

    Args:
        cache: the decoded images.
        config: the augmentation (``AugmentConfig.from_recipe(recipe)``); its ``channel_order``
            must be the cache's.
        batch_size: samples per batch.
        device: where batches are made (and the model runs).
        sampler: an iterable of indices per epoch (e.g. ``EpochSampler``); default: in order.
        generator: the augmentation generator (on ``device`` for CUDA).
        resident: copy the whole cache to ``device`` once (default: True when it takes less than
            half of the free memory of a CUDA device, always on CPU for in-memory caches, never
            for memory-mapped caches on CPU, which are gathered from the map).
        train: augment (True) or only normalise the even phase (False).

    Iterating yields ``(x, y)``: normalised float32 ``[B, 3, 112, 112]`` and int64 labels on ``device``.
    """

    def __init__(self, cache: UInt8Cache, config: AugmentConfig, batch_size: int,
                 device: str | torch.device = "cpu", sampler: Sequence[int] | None = None,
                 generator: torch.Generator | None = None, resident: bool | None = None, train: bool = True,
                 drop_last: bool = False):
        if config.channel_order != cache.channel_order:
            raise PosterError(f"the cache holds {cache.channel_order} images but the augmentation expects "
                              f"{config.channel_order}")
        self.cache = cache
        self.config = config
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.sampler = sampler
        self.generator = generator
        self.train = train
        self.drop_last = drop_last
        if resident is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                resident = cache.nbytes < free // 2
            else:
                resident = cache.path is None
        self.resident = bool(resident)
        if self.resident:
            self.data: torch.Tensor | np.ndarray = cache.to_tensor(self.device)
        else:
            self.data = cache.data
        self.labels = torch.from_numpy(cache.labels).to(self.device)

    def batch(self, indices: torch.Tensor | Sequence[int], generator: torch.Generator | None = None,
              train: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = augment_cached(self.data, idx, self.config, generator if generator is not None else self.generator,
                           self.device, self.train if train is None else train, self.cache.size)
        return x, self.labels[idx.to(self.device)]

    def __len__(self) -> int:
        n = len(self.sampler) if self.sampler is not None else len(self.cache)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler) if self.sampler is not None else range(len(self.cache)),
                                dtype=torch.long)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            if self.drop_last and len(chunk) < self.batch_size:
                break
            yield self.batch(chunk)
