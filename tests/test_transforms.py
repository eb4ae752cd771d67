"""Image decoding and the evaluation transform against golden/preprocess.npz (exact)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from poster.data.transforms import (
    EvalTransform,
    decode_image_bytes,
    load_image,
    to_normalized_tensor,
    to_uint8_array,
)
from poster.errors import ColorOrderError, DatasetError
from poster.meta import InputConfig

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="module")
def golden():
    with np.load(DATA / "preprocess.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def jpeg_files(golden, tmp_path_factory):
    d = tmp_path_factory.mktemp("jpegs")
    paths = []
    for i in range(3):
        p = d / f"golden_{i}.jpg"
        p.write_bytes(golden[f"jpeg_{i}"].tobytes())
        paths.append(p)
    return paths


def test_load_image_matches_cv2_decode(golden, jpeg_files):
    for i, p in enumerate(jpeg_files):
        bgr = load_image(p, "BGR")
        assert bgr.dtype == np.uint8 and bgr.shape == (100, 100, 3)
        assert np.array_equal(bgr, golden["decoded_bgr_cv2"][i])
        rgb = load_image(p, "RGB")
        assert np.array_equal(rgb, golden["decoded_bgr_cv2"][i][..., ::-1])
        assert rgb.flags["C_CONTIGUOUS"]
        # decoding the raw bytes gives the same array
        assert np.array_equal(decode_image_bytes(golden[f"jpeg_{i}"], "BGR"), bgr)


@pytest.mark.parametrize("key,order", [("v1_rafdb", "BGR"), ("v1_affectnet", "RGB"), ("v2", "RGB")])
def test_eval_transform_matches_reference_exactly(golden, jpeg_files, key, order):
    t = EvalTransform(InputConfig(input_size=224, channel_order=order))
    ref224 = torch.from_numpy(golden[f"{key}_224"])
    ref112 = torch.from_numpy(golden[f"{key}_seen112"])
    for i, p in enumerate(jpeg_files):
        x = t(load_image(p, order))
        assert x.dtype == torch.float32 and x.shape == (3, 224, 224)
        assert torch.equal(x, ref224[i]), float((x - ref224[i]).abs().max())
        assert torch.equal(x[:, ::2, ::2], ref112[i])


def test_v2_pil_path_equals_transform_of_pil_image(golden, jpeg_files):
    # V2 loads with PIL .convert('RGB'); a PIL image fed to an RGB EvalTransform matches v2_224.
    t = EvalTransform(InputConfig(channel_order="RGB"))
    for i, p in enumerate(jpeg_files):
        with Image.open(p) as im:
            x = t(im)
        assert torch.equal(x, torch.from_numpy(golden["v2_224"][i]))


def test_transform_never_reorders_arrays(golden, jpeg_files):
    # The statistics are applied per tensor channel whatever the order (docs/faithfulness.md#channel-order: V1 RAF-DB
    # normalizes Blue with the red statistics), so an array goes through unchanged; the order
    # only matters when loading.
    arr = load_image(jpeg_files[0], "RGB")
    rgb = EvalTransform(InputConfig(channel_order="RGB"))(arr)
    assert torch.equal(EvalTransform(InputConfig(channel_order="BGR"))(arr), rgb)
    bgr_loaded = EvalTransform(InputConfig(channel_order="BGR"))(load_image(jpeg_files[0], "BGR"))
    assert not torch.equal(bgr_loaded, rgb)
    # a PIL image (RGB by definition) given to a BGR transform is reordered to BGR first
    pil = Image.fromarray(arr)
    assert torch.equal(EvalTransform(InputConfig(channel_order="BGR"))(pil),
                       torch.from_numpy(golden["v1_rafdb_224"][0]))


def test_direct_112_is_not_the_same(golden, jpeg_files):
    # guards against "optimising" the pipeline into one resize to 112
    t112 = EvalTransform(InputConfig(input_size=112, channel_order="BGR"))
    x = t112(load_image(jpeg_files[0], "BGR"))
    assert torch.equal(x, torch.from_numpy(golden["v1_rafdb_direct112"][0]))
    assert not torch.allclose(x, torch.from_numpy(golden["v1_rafdb_seen112"][0]), atol=1e-2)


def test_to_normalized_tensor_by_hand():
    arr = np.array([[[0, 128, 255]]], dtype=np.uint8)
    t = to_normalized_tensor(arr, (0.5, 0.5, 0.5), (0.5, 0.25, 1.0))
    expected = torch.tensor([(0 / 255 - 0.5) / 0.5, (128 / 255 - 0.5) / 0.25, (255 / 255 - 0.5) / 1.0])
    assert t.shape == (3, 1, 1)
    assert torch.allclose(t.flatten(), expected, atol=1e-6)


def test_eval_transform_rejects_bad_input():
    t = EvalTransform()
    with pytest.raises(ValueError):
        t(np.zeros((10, 10), dtype=np.uint8))
    with pytest.raises(ValueError):
        t(np.zeros((10, 10, 3), dtype=np.float32))
    with pytest.raises(TypeError):
        t(torch.zeros(3, 10, 10))
    with pytest.raises(ValueError):
        EvalTransform(InputConfig(interpolation="cubic-ish"))


# ------------------------------------------------------------------ decoding edge cases

def _rand_image(h=20, w=30, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp", ".jpeg"])
def test_load_formats_and_orders(tmp_path, ext):
    img = _rand_image()
    p = tmp_path / f"img{ext}"
    assert cv2.imwrite(str(p), img)
    bgr = load_image(p, "BGR")
    assert bgr.shape == img.shape
    if ext in (".png", ".bmp"):  # lossless
        assert np.array_equal(bgr, img)
    assert np.array_equal(load_image(p, "RGB"), bgr[..., ::-1])


def test_grey_becomes_three_channels(tmp_path):
    grey = np.arange(48 * 48, dtype=np.uint32).reshape(48, 48).astype(np.uint8)
    p = tmp_path / "grey.png"
    cv2.imwrite(str(p), grey)
    out = load_image(p, "RGB")
    assert out.shape == (48, 48, 3)
    for c in range(3):
        assert np.array_equal(out[..., c], grey)


def test_non_ascii_path(tmp_path):
    img = _rand_image()
    d = tmp_path / "visages_été_表情"
    d.mkdir()
    p = d / "ñandú.png"
    ok, buf = cv2.imencode(".png", img)
    assert ok
    p.write_bytes(buf.tobytes())
    assert np.array_equal(load_image(p, "BGR"), img)


def test_bad_files_raise_dataset_error_naming_file(tmp_path):
    img = _rand_image(60, 60)
    ok, jpg = cv2.imencode(".jpg", img)
    jpg = jpg.tobytes()
    cases = {
        "empty.jpg": b"",
        "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated_tail.jpg": jpg[:-2],  # only the end marker missing
        "garbage.jpg": b"this is not an image at all",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(DatasetError, match=name.replace(".", r"\.")):
            load_image(p)
    with pytest.raises(DatasetError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(DatasetError):
        load_image(tmp_path)  # a folder
    # trailing bytes after a complete JPEG are fine
    p = tmp_path / "padded.jpg"
    p.write_bytes(jpg + b"\x00" * 7)
    assert load_image(p).shape == (60, 60, 3)
    p = tmp_path / "trailer.jpg"
    p.write_bytes(jpg + b"EXTRA-TRAILER-DATA")
    assert load_image(p).shape == (60, 60, 3)


def test_load_image_rejects_bad_order(tmp_path):
    with pytest.raises(ValueError):
        load_image(tmp_path / "x.png", "rgb")


def test_to_uint8_array_variants(tmp_path):
    rgb = _rand_image()
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    # numpy, with the assumed order
    assert np.array_equal(to_uint8_array(rgb, "RGB", assume="RGB"), rgb)
    assert np.array_equal(to_uint8_array(rgb, "BGR", assume="RGB"), bgr)
    assert np.array_equal(to_uint8_array(bgr, "RGB", assume="BGR"), rgb)
    assert np.array_equal(to_uint8_array(bgr, "BGR", assume="BGR"), bgr)
    # RGBA drops alpha; grey replicates
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 7, np.uint8)], axis=2)
    assert np.array_equal(to_uint8_array(rgba, "RGB", assume="RGB"), rgb)
    for colour in (rgb, rgba):  # a colour array must say its order: OpenCV's BGR or RGB
        with pytest.raises(ColorOrderError, match="color="):
            to_uint8_array(colour, "RGB")
    grey = rgb[..., 0]
    out = to_uint8_array(grey, "BGR")
    assert out.shape == rgb.shape and np.array_equal(out[..., 2], grey)
    assert np.array_equal(to_uint8_array(grey[..., None], "RGB"), out)
    # PIL: RGB by definition, grey and RGBA converted
    assert np.array_equal(to_uint8_array(Image.fromarray(rgb), "RGB"), rgb)
    assert np.array_equal(to_uint8_array(Image.fromarray(rgb), "BGR"), bgr)
    assert np.array_equal(to_uint8_array(Image.fromarray(rgba, "RGBA"), "RGB"), rgb)
    assert to_uint8_array(Image.fromarray(grey), "RGB").shape == rgb.shape
    # path
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), bgr)
    assert np.array_equal(to_uint8_array(p, "RGB"), rgb)
    assert np.array_equal(to_uint8_array(str(p), "BGR"), bgr)
    # bad inputs
    with pytest.raises(ValueError):
        to_uint8_array(rgb.astype(np.float32), assume="RGB")
    with pytest.raises(ValueError):
        to_uint8_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError):
        to_uint8_array(torch.zeros(3, 4, 4))
    with pytest.raises(ValueError):
        to_uint8_array(rgb, "RGB", assume="XYZ")
