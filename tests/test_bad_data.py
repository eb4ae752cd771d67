"""Bad data (issue 6, item 1): every odd image either decodes correctly or is refused up front with
one message naming the file (and the label-file line); ``skip_bad`` skips and counts instead.

Complements tests/test_datasets.py (label-file syntax errors, missing images at build time, empty
RAF-DB/AffectNet splits, zero-byte image at __getitem__ time) and tests/test_transforms.py.
The "huge image" case uses 6000 x 6000 (108 MB decoded): 20,000 x 20,000 (1.2 GB) is too slow
and too large for CI.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from poster.data import build_dataset
from poster.data.datasets import check_images
from poster.data.transforms import decode_image_bytes, load_image
from poster.errors import DatasetError, PosterError, flag_wording
from poster.train import trainer as trainer_mod
from poster.train.recipes import get_recipe
from poster.train.bundle import build_data_bundle
from poster.train.trainer import Trainer, TrainOptions
from train_helpers import make_stripes_dataset


def _pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _good_jpeg(value: int = 100, size=(16, 20)) -> bytes:
    img = np.full((*size, 3), value, np.uint8)
    img[:, :, 2] = 255 - value
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return enc.tobytes()


def _noisy_jpeg() -> bytes:
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ok, enc = cv2.imencode(".jpg", img)
    assert ok
    return enc.tobytes()


# ------------------------------------------------------------------------------ decodes correctly

def test_png_with_alpha_drops_alpha_keeps_colour():
    rgba = np.zeros((5, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 30, 90
    rgba[..., 3] = 0  # fully transparent: the colour is kept as is, not blended with a background
    rgba[0, 0, 3] = 255
    out = decode_image_bytes(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"), "RGB")
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    assert (out == [200, 30, 90]).all()


def test_16bit_png_is_scaled_to_8bit():
    arr = np.zeros((4, 7, 3), np.uint16)
    arr[..., 0] = np.arange(7) * 9000  # BGR order for cv2.imencode
    arr[..., 1] = 65535
    arr[..., 2] = 256 * 17 + 200
    ok, enc = cv2.imencode(".png", arr)
    assert ok
    out = decode_image_bytes(enc.tobytes(), "BGR")
    assert out.shape == (4, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, (arr >> 8).astype(np.uint8))  # top byte, not wrapped around


def test_16bit_grey_png_from_pil():
    im = Image.fromarray(np.full((3, 3), 40000, np.uint16))  # mode I;16
    out = decode_image_bytes(_pil_bytes(im, "PNG"))
    assert out.shape == (3, 3, 3) and (out == 40000 >> 8).all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_grey_image_becomes_three_equal_channels(fmt):
    grey = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (4, 1))
    out = decode_image_bytes(_pil_bytes(Image.fromarray(grey, "L"), fmt, **({"quality": 100} if fmt == "JPEG" else {})))
    assert out.shape == (4, 8, 3)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert np.abs(out[..., 0].astype(int) - grey).max() <= (0 if fmt == "PNG" else 3)


def test_cmyk_jpeg_is_converted_to_rgb():
    cmyk = Image.new("CMYK", (8, 6), (0, 255, 255, 0))  # pure red in CMYK
    data = _pil_bytes(cmyk, "JPEG", quality=100)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = decode_image_bytes(data, "RGB")
    assert out.shape == (6, 8, 3)
    assert np.abs(out.astype(int) - [255, 0, 0]).max() <= 3, out[0, 0]
    assert np.abs(out.astype(int) - np.asarray(cmyk.convert("RGB"), int)).max() <= 3


def test_palette_png():
    im = Image.new("P", (5, 4), 1)
    im.putpalette([0, 0, 0, 10, 200, 60] + [0] * 762)
    out = decode_image_bytes(_pil_bytes(im, "PNG"), "RGB")
    assert (out == [10, 200, 60]).all()


@pytest.mark.slow
def test_20000_x_20000_image_decodes(tmp_path):
    """The issue's 20,000 x 20,000 image (400 MP, 15 MB as JPEG): decoded correctly (1.2 GB in memory)."""
    big = np.zeros((20_000, 20_000), np.uint8)
    big[::100] = 255
    path = tmp_path / "big.jpg"
    assert cv2.imwrite(str(path), big)
    del big
    good, bad = check_images([(str(path), 0)], workers=1)
    assert good == [(str(path), 0)] and bad == []
    out = load_image(path)
    assert out.shape == (20_000, 20_000, 3)
    assert out[0, 0].min() > 200 and out[50, 0].max() < 50 and out[19_900, 19_999].min() > 200


def _jpeg_claiming_size(width: int, height: int) -> bytes:
    """A valid small JPEG whose frame header (SOF0) is patched to claim another size."""
    data = bytearray(_pil_bytes(Image.new("RGB", (16, 16), (90, 30, 200)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_image_over_the_decoder_limit_says_so_naming_the_file(tmp_path):
    path = tmp_path / "huge.jpg"
    path.write_bytes(_jpeg_claiming_size(40_000, 40_000))  # 1,600 MP: over OpenCV's 1,074 MP limit
    with pytest.raises(DatasetError, match=r"image too large to decode .*huge\.jpg"):
        load_image(path)
    good, bad = check_images([(str(path), 3)], skip_bad=True, workers=1)
    assert good == [] and "too large" in bad[0][1] and "huge.jpg" in bad[0][1]


def test_file_name_with_spaces_and_non_ascii(tmp_path):
    name = "ça va 😀 表情 (1).jpg"
    for cls, v in (("happy face", 40), ("überrascht", 200)):
        d = tmp_path / "train" / cls
        d.mkdir(parents=True)
        (d / name).write_bytes(_good_jpeg(v))
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.class_names == ("happy face", "überrascht")
    assert [Path(p).name for p, _ in ds.records] == [name, name]
    good, bad = check_images(ds.records)
    assert bad == [] and len(good) == 2
    img, label = ds[1]
    assert label == 1 and img.shape == (16, 20, 3) and abs(int(img[0, 0, 1]) - 200) <= 2


# ------------------------------------------------------------------------------ refused, naming file and line

def _affectnet(root: Path, lines: str, images: dict[str, bytes], eol: str = "\n") -> Path:
    for split in ("train", "valid"):
        d = root / f"{split}_set"
        (d / "images").mkdir(parents=True, exist_ok=True)
        (d / f"{split}_annotations_7class.txt").write_bytes(lines.replace("\n", eol).encode())
        for n, data in images.items():
            (d / "images" / n).write_bytes(data)
    return root


def _bad_set() -> tuple[str, dict[str, bytes]]:
    good = _good_jpeg()
    images = {
        "ok 1.jpg": good,
        "zero.jpg": b"",
        "ok2.jpg": _good_jpeg(30),
        "trunc.jpg": _noisy_jpeg()[:-400],  # end marker and last scans cut off
        "text.jpg": b"this is not an image\n",
        "ok3.png": _pil_bytes(Image.new("RGBA", (4, 4), (1, 2, 3, 0)), "PNG"),
    }
    lines = "".join(f"{n} {i % 7}\n" for i, n in enumerate(images))
    return lines, images


def test_check_images_stops_at_first_bad_naming_file_and_line(tmp_path):
    lines, images = _bad_set()
    root = _affectnet(tmp_path, lines, images, eol="\r\n")  # Windows line endings parse fine
    ds = build_dataset("affectnet7", root, "train")  # parsing alone does not decode
    assert len(ds) == 6
    with pytest.raises(DatasetError) as ei:
        check_images(ds.records, origins=ds.origins)
    msg = str(ei.value)
    assert "train_annotations_7class.txt, line 2:" in msg
    assert "zero.jpg" in msg and "empty" in msg and "skip_bad=True" in msg  # the library names its parameter
    with flag_wording(), pytest.raises(DatasetError, match=r"zero\.jpg.*use --skip-bad to skip"):
        check_images(ds.records, origins=ds.origins)  # ...and the command line its flag
    assert "trunc.jpg" not in msg  # one clear message: the first bad image


def test_check_images_skip_bad_skips_and_counts(tmp_path):
    lines, images = _bad_set()
    ds = build_dataset("affectnet7", _affectnet(tmp_path, lines, images), "valid")
    for workers in (1, 3):
        good, bad = check_images(ds.records, skip_bad=True, origins=ds.origins, workers=workers)
        assert [Path(p).name for p, _ in good] == ["ok 1.jpg", "ok2.jpg", "ok3.png"]
        assert [l for _, l in good] == [0, 2, 5]
        assert [Path(p).name for p, _ in bad] == ["zero.jpg", "trunc.jpg", "text.jpg"]
        reasons = [why for _, why in bad]
        assert "line 2:" in reasons[0] and "empty" in reasons[0]
        # newer OpenCV refuses a truncated JPEG itself; older builds decode it half-grey and our EOI check refuses it
        assert "line 4:" in reasons[1] and ("truncated" in reasons[1] or "cannot decode" in reasons[1])
        assert "line 5:" in reasons[2] and "cannot decode" in reasons[2]
        assert all("valid_annotations_7class.txt" in r for r in reasons)


def test_missing_image_found_by_check_names_line(tmp_path):
    # check_files=False (slow disks) skips the existence check at build time; the decode check finds it
    root = _affectnet(tmp_path, "a.jpg 1\nb.jpg 2\n", {"a.jpg": _good_jpeg()})
    ds = build_dataset("affectnet7", root, "train", check_files=False)
    with pytest.raises(DatasetError, match=r"train_annotations_7class\.txt, line 2: image file not found: .*b\.jpg"):
        check_images(ds.records, origins=ds.origins)
    # with the default check the missing file is refused at build time, naming the line
    with pytest.raises(DatasetError, match=r"line 2: listed image does not exist: .*b\.jpg"):
        build_dataset("affectnet7", root, "train")


@pytest.mark.parametrize("text,line,fragment", [
    ("a.jpg 1\r\nb.jpg happy\r\n", 2, "is not an integer"),
    ("a.jpg 1\r\nb.jpg 7\r\n", 2, "out of range 0..6"),
    ("a.jpg 1\r\nb.jpg 2\r\na.jpg 1\r\n", 3, "listed twice (first on line 1)"),
])
def test_label_file_errors_end_to_end(tmp_path, text, line, fragment):
    root = _affectnet(tmp_path, "a.jpg 1\nb.jpg 2\n", {"a.jpg": _good_jpeg(), "b.jpg": _good_jpeg()})
    (root / "train_set" / "train_annotations_7class.txt").write_bytes(text.encode())
    with pytest.raises(DatasetError) as ei:
        build_dataset("affectnet7", root, "train")
    assert f"train_annotations_7class.txt, line {line}:" in str(ei.value) and fragment in str(ei.value)


def test_empty_folder_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test").mkdir()
    with pytest.raises(DatasetError, match=r"no class folders in .*test"):
        build_dataset("folder", tmp_path, "test")
    with pytest.raises(DatasetError, match=r"without images .*\['a'\]"):
        build_dataset("folder", tmp_path, "train")


def test_check_images_empty_records():
    assert check_images([]) == ([], [])


# ------------------------------------------------------------------------------ wired into the trainer

def _options(data: Path, out: Path, **kw) -> TrainOptions:
    return TrainOptions(dataset="folder", data=str(data), output_dir=str(out), val_fraction=0.25, workers=0,
                        eval_batch_size=8, progress=False, **kw)


@pytest.fixture()
def stripes_with_bad(tmp_path):
    root = make_stripes_dataset(tmp_path / "data", per_class=4, size=16)
    (root / "train" / "vertical" / "zz broken é.png").write_bytes(b"")
    (root / "test" / "horizontal" / "half.jpg").write_bytes(_good_jpeg()[:100])
    return root


@pytest.mark.parametrize("cache", [None, "memory"])  # memory: the check and the cache share one pass
def test_trainer_stops_on_bad_image_before_training(stripes_with_bad, tmp_path, monkeypatch, cache):
    def no_training(*a, **k):
        raise AssertionError("training started despite a bad image")

    monkeypatch.setattr(trainer_mod, "sam_train_step", no_training)
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=1"])
    trainer = Trainer(recipe, _options(stripes_with_bad, tmp_path / "run", cache=cache))
    with pytest.raises(DatasetError, match=r"empty \(0 bytes\): .*zz broken é\.png.*skip_bad=True"):
        trainer.fit()
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.parametrize("cache", [None, "memory"])
def test_trainer_skip_bad_logs_count_and_names(stripes_with_bad, tmp_path, caplog, cache):
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=1"])
    with caplog.at_level(logging.WARNING, logger="poster.train"):
        data = build_data_bundle(recipe, _options(stripes_with_bad, tmp_path / "run", skip_bad=True, cache=cache))
    assert sum(data.skipped_images.values()) == 2 and data.skipped_images["test"] == 1
    every = [p for p, _ in data.train_records + data.eval_sets["val"][0] + data.eval_sets["test"][0]]
    assert not any(p.endswith(("zz broken é.png", "half.jpg")) for p in every)
    assert len(every) == 4 * 2 + 2 * 2  # all good images kept
    text = caplog.text
    assert "skipped 1 bad image(s)" in text and "zz broken é.png" in text and "half.jpg" in text
    if cache:
        assert len(data.cache) == len(data.train_records)
        assert data.cache.labels.tolist() == data.train_targets


def test_trainer_all_images_bad_is_an_error(tmp_path):
    root = make_stripes_dataset(tmp_path / "data", per_class=4, size=16)
    for p in (root / "test").rglob("*.png"):
        p.write_bytes(b"")
    recipe = get_recipe("fer2013_small", ["batch_size=4", "epochs=1"])
    with pytest.raises(PosterError, match="no usable images left in the test split"):
        build_data_bundle(recipe, _options(root, tmp_path / "run", skip_bad=True))
