"""Dataset layouts (RAF-DB, AffectNet, class folders) built as tiny synthetic trees in tmp_path."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from layout_standins import FOLDER_SPLITS, STAND_INS, write_stand_in
from poster.data import (
    AFFECTNET7_CLASSES,
    AFFECTNET8_CLASSES,
    DATASET_CLASSES,
    DATASET_NAMES,
    DATASET_TITLES,
    FER2013_CLASSES,
    LAYOUTS,
    RAFDB_CLASSES,
    EvalTransform,
    ImageListDataset,
    build_dataset,
    folder_records,
    get_layout,
    parse_label_file,
    parse_label_text,
)
from poster.data.labels import CAERS_CLASSES
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


# ------------------------------------------------------------------------------ the layout registry

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_layout_record_is_complete_and_its_names_unique():
    assert DATASET_NAMES == tuple(layout.name for layout in LAYOUTS)
    keys = [n.lower().replace("-", "").replace("_", "") for layout in LAYOUTS for n in (layout.name, *layout.aliases)]
    assert len(keys) == len(set(keys)), "a name or alias is used twice"
    for layout in LAYOUTS:
        assert re.fullmatch(r"[a-z0-9]+", layout.name), layout.name  # what --dataset offers, as build_dataset keys it
        assert isinstance(layout.title, str) and layout.title.strip(), layout.name
        assert callable(layout.read), layout.name
        assert all(isinstance(s, str) and s for s in layout.splits), layout.name
        if layout.classes is not None:
            assert layout.classes and len(set(layout.classes)) == len(layout.classes), layout.name
    assert DATASET_CLASSES == {layout.name: layout.classes for layout in LAYOUTS if layout.classes is not None}
    assert set(DATASET_TITLES) == set(DATASET_NAMES)
    # the class-folder layout is the only one whose classes come from the tree
    assert [layout.name for layout in LAYOUTS if layout.classes is None] == ["folder"]
    assert set(STAND_INS) == set(DATASET_NAMES), "every registered layout needs a stand-in in tests/layout_standins.py"


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_every_layout_builds_from_its_stand_in(name, tmp_path):
    layout = get_layout(name)
    classes = write_stand_in(name, tmp_path)
    for split in layout.splits or FOLDER_SPLITS:
        ds = build_dataset(name, tmp_path, split)
        assert ds.name == name and ds.split == split
        assert ds.class_names == classes and ds.targets == list(range(len(classes))), split
        x, y = ds[len(ds) - 1]
        assert x.shape == (48, 48, 3) and y == len(classes) - 1
    with pytest.raises(DatasetError, match="nosuchsplit"):
        build_dataset(name, tmp_path, "nosuchsplit")


def test_class_names_rename_label_code_layouts_and_choose_class_folders(tmp_path):
    write_stand_in("ferplus", tmp_path / "ferplus")
    renamed = tuple(f"c{i}" for i in range(8))
    assert build_dataset("ferplus", tmp_path / "ferplus", "test", class_names=renamed).class_names == renamed
    with pytest.raises(DatasetError, match="ferplus has 8 classes, 2 class names given"):
        build_dataset("ferplus", tmp_path / "ferplus", "test", class_names=("a", "b"))
    root = tmp_path / "caers"
    write_stand_in("caers", root)
    backwards = tuple(reversed(CAERS_CLASSES))
    ds = build_dataset("caers", root, "test", class_names=backwards)
    assert ds.class_names == backwards
    assert {Path(p).parent.name: label for p, label in ds.records} == {c: i for i, c in enumerate(backwards)}
    # CAER-S's classes are fixed: a stray folder is refused, a missing one only where allowed (poster test)
    (root / "test" / "Contempt").mkdir()
    with pytest.raises(DatasetError, match=r"unexpected folder.*Contempt"):
        build_dataset("caers", root, "test")
    shutil.rmtree(root / "test" / "Contempt")
    shutil.rmtree(root / "test" / "Anger")
    with pytest.raises(DatasetError, match=r"missing .*\['Anger'\]"):
        build_dataset("caers", root, "test")
    ds = build_dataset("caers", root, "test", allow_empty_classes=True)
    assert ds.class_names == CAERS_CLASSES and ds.class_counts() == [0, 1, 1, 1, 1, 1, 1]


@pytest.mark.parametrize("alias,name", [("RAF-DB", "rafdb"), ("raf", "rafdb"), ("AffectNet", "affectnet7"),
                                        ("affectnet_8", "affectnet8"), ("ImageFolder", "folder"),
                                        ("FER2013", "fer2013"), ("FERPlus", "ferplus"), ("CAER-S", "caers")])
def test_aliases_resolve(alias, name, tmp_path):
    assert get_layout(alias) is get_layout(name)
    write_stand_in(name, tmp_path)
    split = (get_layout(name).splits or FOLDER_SPLITS)[0]
    assert build_dataset(alias, tmp_path, split).name == name


def test_every_alias_resolves_to_its_layout():
    for layout in LAYOUTS:
        for alias in layout.aliases:
            assert get_layout(alias) is layout and get_layout(alias.upper()) is layout


def test_unknown_layout_is_one_error_naming_the_known_ones(tmp_path):
    with pytest.raises(DatasetError) as ei:
        build_dataset("ckplus", tmp_path, "train")
    msg = str(ei.value)
    assert "\n" not in msg and "'ckplus'" in msg
    assert msg.endswith("use one of " + ", ".join(DATASET_NAMES))


def test_ferplus_is_offered_wherever_a_dataset_is_chosen():
    from poster.cli import build_parser

    parser = build_parser()
    for command in (["export", "-c", "x.pth"], ["test", "-c", "x.pth", "--data", "d"], ["train"]):
        assert parser.parse_args([*command, "--dataset", "ferplus"]).dataset == "ferplus"


def test_a_dataset_hint_names_the_classes_of_an_anonymous_official_file():
    from poster.checkpoint.loading import release_meta

    for name, classes in DATASET_CLASSES.items():
        assert release_meta("poster_v2", {"num_classes": len(classes)}, name, "x.pth").class_names == classes


def test_recipes_train_on_registered_layouts():
    from poster.train.recipes import RECIPES

    assert {r.dataset for r in RECIPES.values()} <= set(DATASET_NAMES)


def test_readme_dataset_table_lists_every_layout():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| dataset (`--dataset`) | layout |"):].split("\n\n", 1)[0]
    listed = re.findall(r"`([a-z0-9]+)`", "".join(row.split("|")[1] for row in table.splitlines()[2:]))
    assert sorted(listed) == sorted(DATASET_NAMES)
