"""The uint8 112x112 cache (poster.train.cache): exact against the reference eval transform,
exact flips, bit-identical model outputs, disk reuse/invalidation, augmentation statistics."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from poster.data.transforms import EvalTransform, load_image
from poster.meta import InputConfig
from poster.train.augment import AugmentConfig, random_erasing, sample_erasing_boxes
from poster.train.cache import (
    CachedBatches,
    UInt8Cache,
    augment_cached,
    build_uint8_cache,
    erase_mask_112,
)
from poster.train.data import EpochSampler

DATA = Path(__file__).resolve().parent / "data"
NO_AUG = dict(hflip_p=0.0, erasing_p=0.0, flip_or_noise=False)


@pytest.fixture(scope="module")
def golden():
    with np.load(DATA / "preprocess.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def image_files(golden, tmp_path_factory):
    """The three golden JPEGs plus generated images of odd sizes, grey and colour."""
    d = tmp_path_factory.mktemp("cache_images")
    paths = []
    for i in range(3):
        p = d / f"golden_{i}.jpg"
        p.write_bytes(golden[f"jpeg_{i}"].tobytes())
        paths.append(p)
    rng = np.random.default_rng(0)
    for (h, w, grey, ext) in [(37, 53, False, ".png"), (101, 99, True, ".png"), (48, 48, True, ".jpg"),
                              (300, 251, False, ".jpg"), (224, 224, False, ".png"), (7, 230, False, ".png")]:
        base = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 1 if grey else 3), dtype=np.uint8)
        img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
        p = d / f"gen_{h}x{w}{'_grey' if grey else ''}{ext}"
        assert cv2.imwrite(str(p), img)
        paths.append(p)
    return paths


def _records(paths):
    return [(str(p), i % 7) for i, p in enumerate(paths)]


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_even_phase_is_the_eval_transform_exactly(image_files, golden, order):
    cache = build_uint8_cache(_records(image_files), order, workers=2)
    cfg = AugmentConfig(**NO_AUG, channel_order=order, input_order=order)
    x = augment_cached(cache.data, range(len(cache)), cfg, train=False)
    tf = EvalTransform(InputConfig(channel_order=order))
    ref = torch.stack([tf(load_image(p, order))[:, ::2, ::2] for p in image_files])
    assert x.dtype == torch.float32 and x.shape == (len(image_files), 3, 112, 112)
    assert torch.equal(x, ref)
    # and the stored golden tensors of the reference pipeline (V1 RAF-DB is BGR, AffectNet RGB)
    key = "v1_rafdb_seen112" if order == "BGR" else "v1_affectnet_seen112"
    assert torch.equal(x[:3], torch.from_numpy(golden[key]))


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_flipped_sample_is_exact(image_files, order):
    cache = build_uint8_cache(_records(image_files), order, workers=1)
    cfg = AugmentConfig(hflip_p=1.0, erasing_p=0.0, channel_order=order, input_order=order)
    x = augment_cached(cache.data, range(len(cache)), cfg, torch.Generator().manual_seed(0))
    tf = EvalTransform(InputConfig(channel_order=order))
    ref = torch.stack([tf(np.ascontiguousarray(cv2.flip(load_image(p, order), 1)))[:, ::2, ::2]
                       for p in image_files])
    assert torch.equal(x, ref)


def test_model_output_on_cache_is_bit_identical(image_files):
    from poster.models import create_model

    torch.manual_seed(0)
    model = create_model("poster_v1_tiny").eval()
    files = image_files[:4]
    cache = build_uint8_cache(_records(files), "RGB")
    x112, _ = CachedBatches(cache, AugmentConfig(**NO_AUG), batch_size=4, train=False).batch(range(4))
    tf = EvalTransform(InputConfig())
    x224 = torch.stack([tf(load_image(p, "RGB")) for p in files])
    with torch.no_grad():
        a, b = model(x224), model(x112)
    assert torch.equal(a, b)


def test_disk_cache_reuse_and_invalidation(image_files, tmp_path):
    files = []
    for i, p in enumerate(image_files[:3]):
        q = tmp_path / "img" / f"{i}.jpg"
        q.parent.mkdir(exist_ok=True)
        q.write_bytes(Path(p).read_bytes())
        files.append(q)
    store = tmp_path / "cache"
    first = build_uint8_cache(_records(files), "BGR", path=store)
    assert not first.reused and first.path.is_file() and first.path.parent == store
    assert not list(store.glob("*.tmp")) and not list(store.glob("*.lock"))
    second = build_uint8_cache(_records(files), "BGR", path=store)
    assert second.reused and second.path == first.path and isinstance(second.data, np.memmap)
    assert np.array_equal(np.asarray(first.data), np.asarray(second.data))
    mem = build_uint8_cache(_records(files), "BGR")
    assert np.array_equal(mem.data, np.asarray(second.data)) and mem.key == second.key
    # another channel order is another cache
    assert build_uint8_cache(_records(files), "RGB", path=store).path != first.path
    # a changed file changes the key and the pixels
    files[1].write_bytes(Path(image_files[5]).read_bytes())
    st = files[1].stat()
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    third = build_uint8_cache(_records(files), "BGR", path=store)
    assert not third.reused and third.path != first.path
    assert np.array_equal(np.asarray(third.data)[0], np.asarray(first.data)[0])
    assert not np.array_equal(np.asarray(third.data)[1], np.asarray(first.data)[1])


def test_erase_mask_is_the_224_mask_subsampled():
    g = torch.Generator().manual_seed(3)
    top, left, h, w, apply = sample_erasing_boxes(400, 224, 224, g, p=0.7, scale=(0.02, 0.33))
    mask112 = erase_mask_112(top, left, h, w)
    g = torch.Generator().manual_seed(3)
    erased224 = random_erasing(torch.ones(400, 1, 224, 224), g, p=0.7, scale=(0.02, 0.33)) == 0
    assert torch.equal(mask112, erased224[:, :, ::2, ::2])
    assert apply.any() and (~apply).any()


def _synthetic_cache(n=600, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, (n, 2, 3, 112, 112), dtype=np.uint8)
    return UInt8Cache(data, np.arange(n) % 7, "RGB", 224, key="synthetic")


def test_augmentation_statistics():
    cache = _synthetic_cache()
    n = len(cache)
    cfg = AugmentConfig(flip_or_noise=True, hflip_p=0.5, erasing_p=0.5, erasing_scale=(0.02, 0.1))
    x = augment_cached(cache.data, range(n), cfg, torch.Generator().manual_seed(1))
    assert x.shape == (n, 3, 112, 112) and x.dtype == torch.float32
    plain = augment_cached(cache.data, range(n), cfg, train=False)
    odd = torch.from_numpy(cache.data[:, 1]).flip(-1)
    odd_norm = (odd.float().div(255) - torch.tensor(cfg.mean).view(1, 3, 1, 1)) / torch.tensor(cfg.std).view(1, 3, 1, 1)
    erased = (x == 0).all(dim=1)  # erased pixels are 0 in every channel; no pixel normalises to 0
    keep = ~erased.unsqueeze(1)
    d_even = ((x - plain).abs() * keep).sum((1, 2, 3)) / keep.sum((1, 2, 3)) / 3
    d_odd = ((x - odd_norm).abs() * keep).sum((1, 2, 3)) / keep.sum((1, 2, 3)) / 3
    is_flip = d_odd < d_even
    exact = torch.minimum(d_even, d_odd) == 0
    assert 0.42 < is_flip.float().mean() < 0.58  # P(flip-or-noise flip XOR hflip) = 0.5
    assert 0.18 < (~exact).float().mean() < 0.32  # noise on 25 %
    area = erased.float().mean((1, 2))
    assert 0.40 < (area > 0).float().mean() < 0.60  # erasing p = 0.5
    assert 0.015 <= area[area > 0].min() and area.max() <= 0.125  # (0.02, 0.1) up to whole-pixel rounding
    assert 0.05 < area[area > 0].mean() < 0.07  # uniform (0.02, 0.1) of the area: mean 0.06
    # same generator state -> same batch
    y = augment_cached(cache.data, range(n), cfg, torch.Generator().manual_seed(1))
    assert torch.equal(x, y)


def test_cached_batches_iterate_with_sampler_and_numpy_source(tmp_path):
    cache = _synthetic_cache(n=10)
    cfg = AugmentConfig(hflip_p=0.5, erasing_p=0.5)
    sampler = EpochSampler(10, seed=0)
    batches = CachedBatches(cache, cfg, 4, sampler=sampler, generator=torch.Generator().manual_seed(0))
    out = list(batches)
    assert len(out) == len(batches) == 3 and [b[0].shape[0] for b in out] == [4, 4, 2]
    order = list(sampler)
    assert torch.cat([b[1] for b in out]).tolist() == [int(cache.labels[i]) for i in order]
    # the numpy (memory-map) gather path gives the same batch as the resident tensor path
    a = CachedBatches(cache, cfg, 4, resident=True).batch([3, 1, 7], torch.Generator().manual_seed(5))
    b = CachedBatches(cache, cfg, 4, resident=False).batch([3, 1, 7], torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_channel_order_mismatch_and_missing_phase_are_errors():
    from poster.errors import PosterError

    cache = _synthetic_cache(n=4)
    with pytest.raises(PosterError):
        CachedBatches(cache, AugmentConfig(channel_order="BGR"), 2)
    even_only = UInt8Cache(cache.data[:, :1].copy(), cache.labels, "RGB", 224, key="x")
    with pytest.raises(PosterError):
        augment_cached(even_only.data, range(4), AugmentConfig(hflip_p=1.0, erasing_p=0.0))
    x = augment_cached(even_only.data, range(4), AugmentConfig(hflip_p=0.0, erasing_p=0.0))
    assert x.shape == (4, 3, 112, 112)


def test_concurrent_builders_share_one_file(image_files, tmp_path):
    """Two builders of the same cache (e.g. two ranks): one builds under the lock, the other waits
    and reuses the renamed file; no temporary or lock file is left behind."""
    from concurrent.futures import ThreadPoolExecutor

    records = _records(image_files[:4])
    with ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(lambda _: build_uint8_cache(records, "RGB", path=tmp_path, workers=1), range(2)))
    assert caches[0].path == caches[1].path
    assert sorted(c.reused for c in caches) == [False, True]
    assert [p.suffix for p in tmp_path.iterdir() if p.suffix != ".json"] == [".npy"]
    assert np.array_equal(np.asarray(caches[0].data), np.asarray(caches[1].data))


@pytest.mark.parametrize("order", ["BGR", "RGB"])
def test_grayscale_training_batches_match_the_grey_eval_transform(image_files, order):
    """A grayscale recipe turns training images grey too (on the device, after the cache's resize);
    the evaluation transform greys before its resize, so the two agree to rounding (<= 2 grey levels
    before normalisation), and every channel carries the same grey."""
    from poster.train.augment import BatchAugment, to_grey3_uint8

    colour = np.random.default_rng(3).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    batch = torch.from_numpy(colour).permute(0, 3, 1, 2).contiguous()
    code = cv2.COLOR_RGB2GRAY if order == "RGB" else cv2.COLOR_BGR2GRAY
    ref = torch.from_numpy(np.stack([cv2.cvtColor(c, code) for c in colour]))
    grey = to_grey3_uint8(batch, order)
    assert (grey[:, 0].int() - ref.int()).abs().max() <= 1 and torch.equal(grey[:, 0], grey[:, 2])

    cache = build_uint8_cache(_records(image_files), order, workers=2)
    cfg = AugmentConfig(**NO_AUG, channel_order=order, input_order=order, grayscale=True)
    x = augment_cached(cache.data, range(len(cache)), cfg, train=False)
    tf = EvalTransform(InputConfig(channel_order=order, grayscale=True))
    want = torch.stack([tf(load_image(p, order))[:, ::2, ::2] for p in image_files])
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    assert ((x - want) * std * 255).abs().max() <= 2 + 1e-3
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    pixels = (x * std + mean) * 255
    assert (pixels[:, 0] - pixels[:, 1]).abs().max() < 1e-3
    trained = augment_cached(cache.data, range(len(cache)), AugmentConfig(channel_order=order, input_order=order,
                             grayscale=True, erasing_p=0.0), torch.Generator().manual_seed(0))
    pixels = (trained * std + mean) * 255
    assert (pixels[:, 0] - pixels[:, 2]).abs().max() < 1e-3
    aug = BatchAugment(AugmentConfig(channel_order=order, input_order=order, grayscale=True, erasing_p=0.0))
    pixels = (aug(batch, torch.Generator().manual_seed(0)) * std + mean) * 255
    assert (pixels[:, 0] - pixels[:, 1]).abs().max() < 1e-3


def test_check_and_cache_decodes_each_image_once_and_equals_the_plain_build(image_files, tmp_path, monkeypatch):
    """--cache memory: the up-front image check and the cache share one decoding pass; the cache
    equals build_uint8_cache's on the good records, and bad images follow the check's policy."""
    import poster.train.cache as cache_mod
    from poster.errors import DatasetError

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    records = _records(image_files)
    with_bad = records[:2] + [(str(broken), 5)] + records[2:]
    calls = []
    real = cache_mod.decode_phases
    monkeypatch.setattr(cache_mod, "decode_phases", lambda p, *a, **k: calls.append(p) or real(p, *a, **k))

    cache, good, bad = cache_mod.check_and_cache(with_bad, "RGB", skip_bad=True, workers=2)
    assert sorted(calls) == sorted(p for p, _ in with_bad)  # every image decoded exactly once
    assert good == records and [p for p, _ in bad] == [str(broken)]
    plain = build_uint8_cache(records, "RGB", workers=2)
    assert np.array_equal(cache.data, plain.data) and np.array_equal(cache.labels, plain.labels)
    assert cache.key == plain.key and len(cache) == len(records)
    with pytest.raises(DatasetError, match="broken.jpg"):
        cache_mod.check_and_cache(with_bad, "RGB", workers=1)


def test_reused_disk_cache_is_verified_against_its_build_record(image_files, tmp_path):
    from poster.errors import PosterError

    store = tmp_path / "cache"
    records = _records(image_files[:3])
    built = build_uint8_cache(records, "RGB", path=store)
    record = json.loads(built.path.with_suffix(".json").read_text())
    assert record["bytes"] == built.path.stat().st_size and len(record["sha256"]) == 64
    assert build_uint8_cache(records, "RGB", path=store).reused  # intact: reused
    pristine = built.path.read_bytes()
    # zeroed pixels (same size): the checksum catches it
    header_end = len(pristine) - int(np.prod(built.data.shape))
    built.path.write_bytes(pristine[:header_end] + bytes(len(pristine) - header_end))
    with pytest.raises(PosterError, match="changed since it was built"):
        build_uint8_cache(records, "RGB", path=store)
    built.path.write_bytes(pristine[:-100])  # truncated
    with pytest.raises(PosterError, match="bytes, its build record says"):
        build_uint8_cache(records, "RGB", path=store)
    built.path.write_bytes(pristine)
    built.path.with_suffix(".json").unlink()  # no record: never trusted
    with pytest.raises(PosterError, match="no readable build record"):
        build_uint8_cache(records, "RGB", path=store)
