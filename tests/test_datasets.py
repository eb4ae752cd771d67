"""Dataset layouts (RAF-DB, AffectNet, class folders) built as tiny synthetic trees in tmp_path."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poster.data import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    FER2013_CLASSES,
    RAFDB_CLASSES,
    EvalTransform,
    ImageListDataset,
    build_dataset,
    folder_records,
    parse_label_file,
    parse_label_text,
)
from poster.errors import DatasetError
from poster.meta import InputConfig

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def _write_image(path: Path, value: int, size=(12, 10)) -> np.ndarray:
    """A small BGR image whose channels are distinct (value, value+1, value+2) + a gradient."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = value, value + 40, value + 80
    img[0, :, 0] = np.arange(w, dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return img


# ------------------------------------------------------------------------------ label parsing

def test_parse_label_text_basic_crlf_blank_bom():
    text = "\ufeffa.jpg 1\r\n\r\n  b.jpg\t7  \r\nc d.jpg 3\r\n\n"
    lines = parse_label_text(text, "x.txt", num_classes=7, label_offset=1)
    assert [(l.name, l.label, l.line_no) for l in lines] == [("a.jpg", 0, 1), ("b.jpg", 6, 3), ("c d.jpg", 2, 4)]


@pytest.mark.parametrize(
    "text,line,fragment",
    [
        ("a.jpg 1\nb.jpg\n", 2, "expected '<file> <label>'"),
        ("a.jpg 1\n\nb.jpg x\n", 3, "not an integer"),
        ("a.jpg 1.0\n", 1, "not an integer"),
        ("a.jpg 1_0\n", 1, "not an integer"),
        ("a.jpg 0\n", 1, "out of range 1..7"),
        ("a.jpg 8\n", 1, "out of range 1..7"),
        ("a.jpg -1\n", 1, "out of range"),
        ("a.jpg 1\nb.jpg 2\na.jpg 2\n", 3, "listed twice"),
    ],
)
def test_parse_label_text_errors_name_file_and_line(text, line, fragment):
    with pytest.raises(DatasetError) as ei:
        parse_label_text(text, "labels.txt", num_classes=7, label_offset=1)
    msg = str(ei.value)
    assert f"labels.txt, line {line}:" in msg and fragment in msg


def test_parse_label_file_errors(tmp_path):
    with pytest.raises(DatasetError, match="label file not found"):
        parse_label_file(tmp_path / "nope.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"a.jpg 1\nb\xe9.jpg 2\n")
    with pytest.raises(DatasetError, match=r"latin1\.txt, line 2: not valid UTF-8"):
        parse_label_file(bad)
    ok = tmp_path / "ok.txt"
    ok.write_bytes("é.jpg 2\r\n".encode())
    assert parse_label_file(ok, num_classes=3) == [("é.jpg", 2, 1)]


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_parse_label_text_fuzz_only_dataset_errors(text):
    # any text either parses into valid lines or raises DatasetError (never another exception)
    try:
        lines = parse_label_text(text, "fuzz.txt", num_classes=5)
    except DatasetError as e:
        assert "fuzz.txt" in str(e)
        return
    for l in lines:
        assert 0 <= l.label < 5 and l.name and l.line_no >= 1


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.from_regex(r"[a-z0-9_]{1,8}\.jpg", fullmatch=True), st.integers(0, 7)),
                max_size=20, unique_by=lambda t: t[0]),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_parse_label_text_roundtrip(entries, eol, blank_lines):
    sep = eol * 2 if blank_lines else eol
    text = sep.join(f"{n} {l}" for n, l in entries) + eol
    lines = parse_label_text(text, num_classes=8)
    assert [(l.name, l.label) for l in lines] == entries


# ------------------------------------------------------------------------------ RAF-DB

def _make_rafdb(root: Path, entries, write_images=True):
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_bytes(
        "".join(f"{n} {l}\r\n" for n, l in entries).encode())
    imgs = {}
    if write_images:
        for i, (n, _) in enumerate(entries):
            stem = n.rsplit(".", 1)[0]
            imgs[n] = _write_image(root / "Image" / "aligned" / f"{stem}_aligned.jpg", 10 * i)
    return imgs


RAF_ENTRIES = [("train_00001.jpg", 5), ("train_00002.jpg", 1), ("test_0001.jpg", 7),
               ("train_00003.jpg", 4), ("test_0002.jpg", 2)]


def test_rafdb_splits_labels_and_paths(tmp_path):
    _make_rafdb(tmp_path, RAF_ENTRIES)
    tr = build_dataset("rafdb", tmp_path, "train")
    te = build_dataset("rafdb", tmp_path, "test")
    assert tr.class_names == RAFDB_CLASSES and te.class_names == RAFDB_CLASSES
    assert tr.targets == [4, 0, 3] and te.targets == [6, 1]
    assert [Path(p).name for p, _ in tr.records] == [
        "train_00001_aligned.jpg", "train_00002_aligned.jpg", "train_00003_aligned.jpg"]
    assert all(Path(p).parent == tmp_path / "Image" / "aligned" for p, _ in te.records)
    assert [l for _, l in te.records] == te.targets
    assert RAFDB_CLASSES[te.targets[0]] == "Neutral"  # file label 7
    # 'val' is the test set
    assert build_dataset("rafdb", tmp_path, "val").records == te.records
    with pytest.raises(DatasetError, match="unknown split"):
        build_dataset("rafdb", tmp_path, "dev")


def test_rafdb_getitem_channel_order(tmp_path):
    imgs = _make_rafdb(tmp_path, RAF_ENTRIES)
    raw_bgr = build_dataset("rafdb", tmp_path, "test", channel_order="BGR")
    x, y = raw_bgr[0]
    assert isinstance(x, np.ndarray) and x.shape == (12, 10, 3) and y == 6
    # channel means are ~40 apart, JPEG error is a few levels: the order is unambiguous
    assert np.abs(x.mean(axis=(0, 1)) - imgs["test_0001.jpg"].mean(axis=(0, 1))).max() < 5
    raw_rgb = build_dataset("rafdb", tmp_path, "test")
    assert np.array_equal(raw_rgb[0][0], x[..., ::-1])
    # channel order follows the transform's config when not given
    t = EvalTransform(InputConfig(input_size=16, channel_order="BGR"))
    ds = build_dataset("rafdb", tmp_path, "test", transform=t)
    assert ds.channel_order == "BGR"
    xt, yt = ds[0]
    assert xt.shape == (3, 16, 16) and xt.dtype == torch.float32 and yt == 6
    assert torch.equal(xt, t(x))
    with pytest.raises(ValueError, match="contradicts"):
        build_dataset("rafdb", tmp_path, "test", transform=t, channel_order="RGB")


def test_rafdb_errors(tmp_path):
    with pytest.raises(DatasetError, match="RAF-DB root not found"):
        build_dataset("rafdb", tmp_path / "absent", "train")
    with pytest.raises(DatasetError, match="list_patition_label.txt"):
        build_dataset("rafdb", tmp_path, "train")  # root exists, label file does not

    r = tmp_path / "bad_label"
    _make_rafdb(r, [("train_1.jpg", 3), ("train_2.jpg", 9)], write_images=False)
    with pytest.raises(DatasetError, match=r"list_patition_label\.txt, line 2: label 9 is out of range 1\.\.7"):
        build_dataset("rafdb", r, "train")

    r = tmp_path / "missing_img"
    _make_rafdb(r, RAF_ENTRIES)
    (r / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    (r / "Image" / "aligned" / "train_00003_aligned.jpg").unlink()
    with pytest.raises(DatasetError, match=r"line 2: listed image does not exist: .*train_00002_aligned\.jpg "
                                           r"\(2 listed images are missing"):
        build_dataset("rafdb", r, "train")
    assert len(build_dataset("rafdb", r, "test")) == 2  # the other split is unaffected
    assert len(build_dataset("rafdb", r, "train", check_files=False)) == 3

    r = tmp_path / "only_train"
    _make_rafdb(r, [("train_1.jpg", 3)])
    with pytest.raises(DatasetError, match="split 'test' is empty"):
        build_dataset("rafdb", r, "test")

    r = tmp_path / "odd_name"
    _make_rafdb(r, [("train_1.jpg", 3), ("val_1.jpg", 3)], write_images=False)
    with pytest.raises(DatasetError, match="line 2: name 'val_1.jpg' starts with neither"):
        build_dataset("rafdb", r, "train")


def test_rafdb_rejects_corrupt_image_at_load(tmp_path):
    _make_rafdb(tmp_path, RAF_ENTRIES)
    bad = tmp_path / "Image" / "aligned" / "test_0002_aligned.jpg"
    bad.write_bytes(b"")
    ds = build_dataset("rafdb", tmp_path, "test")  # parsing does not decode
    with pytest.raises(DatasetError, match="test_0002_aligned.jpg"):
        ds[1]


# ------------------------------------------------------------------------------ AffectNet

def _make_affectnet(root: Path, train, valid, n=7):
    for split, entries in (("train", train), ("valid", valid)):
        d = root / f"{split}_set"
        (d / "images").mkdir(parents=True)
        (d / f"{split}_annotations_{n}class.txt").write_text("".join(f"{f} {l}\n" for f, l in entries))
        for i, (f, _) in enumerate(entries):
            _write_image(d / "images" / f, 20 * i)


def test_affectnet7_and_8(tmp_path):
    train = [("0001.jpg", 0), ("0002.jpg", 6), ("sub/0003.png", 3)]
    valid = [("v1.jpg", 1), ("v2.jpg", 5)]
    _make_affectnet(tmp_path, train, valid, 7)
    tr = build_dataset("affectnet7", tmp_path, "train")
    assert tr.class_names == AFFECTNET7_CLASSES and tr.targets == [0, 6, 3]
    assert tr.records[2][0] == str(tmp_path / "train_set" / "images" / "sub" / "0003.png")
    for split in ("val", "valid", "test", "validation"):
        va = build_dataset("affectnet7", tmp_path, split)
        assert va.targets == [1, 5] and Path(va.records[0][0]).parent == tmp_path / "valid_set" / "images"
    x, y = va[1]
    assert x.shape == (12, 10, 3) and y == 5
    # the 8-class files are separate
    with pytest.raises(DatasetError, match="train_annotations_8class.txt"):
        build_dataset("affectnet8", tmp_path, "train")

    r8 = tmp_path / "an8"
    _make_affectnet(r8, [("a.jpg", 7), ("b.jpg", 2)], [("c.jpg", 7)], 8)
    ds8 = build_dataset("affectnet8", r8, "train")
    assert ds8.class_names == AFFECTNET8_CLASSES and ds8.targets == [7, 2]
    assert ds8.class_names[7] == "Contempt"
    # a 7 in a 7-class file is out of range
    r7 = tmp_path / "an7bad"
    _make_affectnet(r7, [("a.jpg", 7)], [("c.jpg", 1)], 7)
    with pytest.raises(DatasetError, match=r"train_annotations_7class\.txt, line 1: label 7 is out of range 0\.\.6"):
        build_dataset("affectnet7", r7, "train")


def test_affectnet_path_escape_and_empty(tmp_path):
    _make_affectnet(tmp_path, [("a.jpg", 1)], [("b.jpg", 2)])
    f = tmp_path / "train_set" / "train_annotations_7class.txt"
    f.write_text("a.jpg 1\n../../etc/passwd 2\n")
    with pytest.raises(DatasetError, match="line 2: file name '../../etc/passwd' must be relative"):
        build_dataset("affectnet7", tmp_path, "train")
    f.write_text("\r\n\r\n")
    with pytest.raises(DatasetError, match="empty"):
        build_dataset("affectnet7", tmp_path, "train")


def test_class_names_override_and_unknown(tmp_path):
    _make_rafdb(tmp_path, RAF_ENTRIES)
    names = ("su", "fe", "di", "ha", "sa", "an", "ne")
    assert build_dataset("rafdb", tmp_path, "train", class_names=names).class_names == names
    with pytest.raises(DatasetError, match="7 classes, 3 class names"):
        build_dataset("rafdb", tmp_path, "train", class_names=["a", "b", "c"])
    with pytest.raises(DatasetError, match="unknown dataset"):
        build_dataset("ckplus", tmp_path, "train")


# ------------------------------------------------------------------------------ folders

def _make_folder(root: Path, layout: dict[str, list[str]]):
    for cls, files in layout.items():
        for i, f in enumerate(files):
            p = root / cls / f
            if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".webp")):
                _write_image(p, 30 * i)
            else:
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_text("not an image")


def test_folder_sorted_classes_and_split_aliases(tmp_path):
    _make_folder(tmp_path / "train", {"b_sad": ["1.jpg", "2.PNG", "notes.txt", ".hidden.jpg"],
                                      "a_happy": ["x.jpeg", "deep/y.bmp"], ".ipynb_checkpoints": ["z.jpg"]})
    (tmp_path / "train" / "README.md").write_text("files next to the class folders are ignored")
    _make_folder(tmp_path / "valid", {"a_happy": ["v.jpg"], "b_sad": ["w.webp"]})
    ds = build_dataset("folder", tmp_path, "train")
    assert ds.class_names == ("a_happy", "b_sad")
    assert [(Path(p).relative_to(tmp_path / "train").as_posix(), l) for p, l in ds.records] == [
        ("a_happy/x.jpeg", 0), ("a_happy/deep/y.bmp", 0), ("b_sad/1.jpg", 1), ("b_sad/2.PNG", 1)]
    assert ds.class_counts() == [2, 2]
    # 'val' and 'test' fall back to the only evaluation folder there is ('valid')
    for split in ("val", "test", "valid"):
        v = build_dataset("folder", tmp_path, split)
        assert [Path(p).parent.parent.name for p, _ in v.records] == ["valid", "valid"]
    # split=None: root is the class folder root
    assert build_dataset("folder", tmp_path / "valid", None).targets == [0, 1]
    x, y = v[1]
    assert x.shape == (12, 10, 3) and y == 1


def test_folder_explicit_class_names(tmp_path):
    _make_folder(tmp_path / "train", {"1": ["a.jpg"], "2": ["b.jpg"], "3": ["c.jpg"]})
    ds = build_dataset("folder", tmp_path, "train", class_names=["3", "1", "2"])
    assert ds.class_names == ("3", "1", "2")
    assert {Path(p).parent.name: l for p, l in ds.records} == {"3": 0, "1": 1, "2": 2}
    with pytest.raises(DatasetError, match=r"class folder\(s\) missing .*\['4'\]"):
        build_dataset("folder", tmp_path, "train", class_names=["1", "2", "3", "4"])
    with pytest.raises(DatasetError, match=r"unexpected folder\(s\) .*\['3'\]"):
        build_dataset("folder", tmp_path, "train", class_names=["1", "2"])


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="dataset root not found"):
        build_dataset("folder", tmp_path / "nope", "train")
    _make_folder(tmp_path / "train", {"a": ["1.jpg"], "b": ["readme.txt"]})
    with pytest.raises(DatasetError, match=r"split folder not found: .*val.*\['train'\]"):
        build_dataset("folder", tmp_path, "val")
    with pytest.raises(DatasetError, match=r"without images .*\['b'\]"):
        build_dataset("folder", tmp_path, "train")
    recs, names = folder_records(tmp_path, "train", allow_empty_classes=True)
    assert names == ("a", "b") and [l for _, l in recs] == [0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        build_dataset("folder", tmp_path, "empty")
    # two candidate evaluation folders: refuse to guess
    _make_folder(tmp_path / "val", {"a": ["1.jpg"]})
    _make_folder(tmp_path / "test", {"a": ["1.jpg"]})
    assert Path(build_dataset("folder", tmp_path, "val").records[0][0]).parts[-3] == "val"
    with pytest.raises(DatasetError, match="ambiguous"):
        build_dataset("folder", tmp_path, "valid")


def test_fer2013_layout_synthetic(tmp_path):
    _make_folder(tmp_path / "train", {c: [f"{c}.jpg"] for c in FER2013_CLASSES})
    ds = build_dataset("fer2013", tmp_path, "train")
    assert ds.class_names == FER2013_CLASSES and ds.targets == list(range(7))
    (tmp_path / "train" / "contempt").mkdir()
    with pytest.raises(DatasetError, match="unexpected folder.*contempt"):
        build_dataset("fer2013", tmp_path, "train")


def test_fer2013_shared_copy():
    root = SHARED / "data" / "fer2013"
    if not root.is_dir():
        pytest.skip("../shared/data/fer2013 not present")
    for split in ("train", "val"):
        recs, names = folder_records(root, split, FER2013_CLASSES)
        assert names == FER2013_CLASSES
        assert len(recs) > 1000
        counts = np.bincount([l for _, l in recs], minlength=7)
        assert (counts > 0).all()
        for i, c in enumerate(FER2013_CLASSES):
            assert counts[i] == sum(1 for p in (root / split / c).iterdir() if p.is_file()
                                    and p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".webp"))
    ds = build_dataset("fer2013", root, "val", transform=EvalTransform())
    x, y = ds[0]  # one image only
    assert x.shape == (3, 224, 224) and y == 0


# ------------------------------------------------------------------------------ ImageListDataset

def test_image_list_dataset_validation(tmp_path):
    p = tmp_path / "a.png"
    _write_image(p, 5)
    ds = ImageListDataset([(p, 1)], ["x", "y"])
    assert ds.records == [(str(p), 1)] and ds.targets == [1] and len(ds) == 1 and ds.num_classes == 2
    assert "1 images, 2 classes" in repr(ds)
    with pytest.raises(DatasetError, match="out of range"):
        ImageListDataset([(p, 2)], ["x", "y"])
    with pytest.raises(ValueError):
        ImageListDataset([(p, 0)], ["x", "y"], channel_order="HSV")
    loader = torch.utils.data.DataLoader(
        ImageListDataset([(p, 1), (p, 0)], ["x", "y"], transform=EvalTransform(InputConfig(input_size=8))),
        batch_size=2)
    xb, yb = next(iter(loader))
    assert xb.shape == (2, 3, 8, 8) and yb.tolist() == [1, 0]
