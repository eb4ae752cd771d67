"""Property and fuzz tests (issue 6, item 5): parsers and decoders fail only with the documented error.

Documented errors:
* label files (``parse_label_text`` / ``parse_label_file``) and images (``decode_image_bytes``):
  ``DatasetError`` only;
* ``ModelMeta.from_dict`` on a damaged dict: ``KeyError`` / ``TypeError`` / ``ValueError``, which
  ``read_weight_file`` turns into ``CheckpointError`` naming the file.

``test_ferplus_undecodable_csv_is_dataset_error`` and ``test_infinite_num_classes_is_checkpoint_error``
pin bugs these fuzzers found (and that were then fixed).

tests/test_datasets.py already fuzzes ``parse_label_text`` on arbitrary text and round-trips simple
ASCII names; the tests here add names with spaces / non-ASCII, label offsets, arbitrary bytes.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poster.checkpoint import formats
from poster.data.datasets import parse_label_file, parse_label_text
from poster.data.ferplus import FERPLUS_CLASSES, ferplus_records, majority_label
from poster.data.transforms import decode_image_bytes
from poster.errors import CheckpointError, DatasetError
from poster.meta import InputConfig, ModelMeta

FAST = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# ------------------------------------------------------------------------------ label files

_name_chars = st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), blacklist_characters="\ufeff\x85")
_names = st.builds(
    lambda a, b: (a + b).strip(),
    st.text(_name_chars, min_size=1, max_size=10),
    st.text(st.sampled_from([" ", "é", "😀", "表", "a", "_", "-", "."]), max_size=6),
).filter(lambda n: n and n == n.strip())


@FAST
@given(st.lists(st.tuples(_names, st.integers(0, 6)), max_size=15, unique_by=lambda t: t[0]),
       st.sampled_from(["\n", "\r\n", "\r"]), st.integers(0, 1), st.booleans(), st.sampled_from([" ", "\t", "  "]))
def test_label_roundtrip_unicode_names_offsets(entries, eol, offset, bom, sep):
    text = ("\ufeff" if bom else "") + eol.join(f"{n}{sep}{l + offset}" for n, l in entries) + eol
    lines = parse_label_text(text, "gen.txt", num_classes=7, label_offset=offset)
    assert [(l.name, l.label) for l in lines] == entries
    assert [l.line_no for l in lines] == list(range(1, len(entries) + 1))


@FAST
@given(st.binary(max_size=300))
def test_parse_label_file_arbitrary_bytes_only_dataset_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("lbl") / "labels.txt"
    path.write_bytes(data)
    try:
        lines = parse_label_file(path, num_classes=8, label_offset=1)
    except DatasetError as e:
        assert "labels.txt" in str(e)
        return
    names = [l.name for l in lines]
    assert len(set(names)) == len(names) and all(0 <= l.label < 8 for l in lines)


@FAST
@given(st.text(st.sampled_from("ab 01-+9\n\r\t\u00a0\u2028x.jpg"), max_size=120),
       st.one_of(st.none(), st.integers(1, 10)), st.integers(-3, 3))
def test_parse_label_text_near_valid_text(text, num_classes, offset):
    try:
        lines = parse_label_text(text, "near.txt", num_classes=num_classes, label_offset=offset)
    except DatasetError as e:
        assert str(e).startswith("near.txt")
        return
    for l in lines:
        assert l.name and l.name == l.name.strip()
        if num_classes is not None:
            assert 0 <= l.label < num_classes


# ------------------------------------------------------------------------------ FER+ majority vote

@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.integers(0, 12), min_size=10, max_size=10))
def test_majority_label_invariants(votes):
    label = majority_label(votes)
    kept = [v if v > 1 else 0 for v in votes]  # votes of 1 are noise
    total = sum(kept)
    if label is None:
        # dropped: nothing left, no strict majority, or the winner is unknown / not-a-face
        top = max(range(10), key=lambda i: (kept[i], -i))
        assert total == 0 or kept[top] * 2 <= total or top >= len(FERPLUS_CLASSES)
    else:
        assert 0 <= label < len(FERPLUS_CLASSES)
        assert kept[label] * 2 > total  # a strict majority of the kept votes
        assert all(kept[label] > kept[i] for i in range(10) if i != label)  # unique winner
    # invariant under adding noise votes of 1 to empty cells and under scaling all votes
    noisy = [1 if v == 0 else v for v in votes]
    assert majority_label(noisy) == label
    assert majority_label([v * 3 if v > 1 else v for v in votes]) == label


def test_majority_label_examples():
    assert majority_label([10, 0, 0, 0, 0, 0, 0, 0, 0, 0]) == 0
    assert majority_label([5, 5, 0, 0, 0, 0, 0, 0, 0, 0]) is None  # tie: no strict majority
    assert majority_label([1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) is None  # all noise
    assert majority_label([0, 0, 0, 0, 0, 0, 0, 0, 9, 0]) is None  # unknown wins
    assert majority_label([0, 0, 0, 0, 0, 0, 0, 6, 2, 2]) == 7  # contempt


@FAST
@given(st.lists(st.lists(st.text(st.sampled_from("0123456789 ,\"ab-"), max_size=4), min_size=0, max_size=13),
                max_size=6))
def test_ferplus_csv_only_dataset_error(tmp_path_factory, rows):
    root = tmp_path_factory.mktemp("ferplus")
    (root / "FER2013Train").mkdir()
    (root / "FER2013Train" / "a.png").write_bytes(b"x")
    text = "\n".join(",".join(r) for r in rows) + "\n"
    (root / "FER2013Train" / "label.csv").write_text(text)
    try:
        records, dropped = ferplus_records(root, "train")
    except DatasetError as e:
        assert "label.csv" in str(e)
        return
    assert records and all(0 <= l < len(FERPLUS_CLASSES) for _, l in records) and dropped >= 0


@pytest.mark.parametrize("data", [b"a.png,box,\xff1,2,3,4,5,6,7,8,9,10\n", b"a.png," + b"x" * 140_000 + b"\n"])
def test_ferplus_undecodable_csv_is_dataset_error(tmp_path, data):
    (tmp_path / "FER2013Train").mkdir()
    (tmp_path / "FER2013Train" / "label.csv").write_bytes(data)
    with pytest.raises(DatasetError, match="label.csv"):
        ferplus_records(tmp_path, "train")


# ------------------------------------------------------------------------------ checkpoint metadata

_floats = st.floats(-10, 10, allow_nan=False, width=32)
_metas = st.builds(
    lambda arch, names, size, order, mean, std, interp, opts, source, dataset: ModelMeta(
        arch=arch, num_classes=len(names), class_names=tuple(names),
        input=InputConfig(input_size=size, channel_order=order, mean=mean, std=std, interpolation=interp),
        arch_options=opts, source=source, dataset=dataset),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,19}", fullmatch=True),  # metadata names an identifier
    # printable class names (control characters are refused, see test_hostile_files.py)
    st.lists(st.text(st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp")), min_size=1, max_size=12)
             .filter(str.strip), min_size=1, max_size=10),
    st.integers(8, 1024),
    st.sampled_from(["RGB", "BGR"]),
    st.tuples(_floats, _floats, _floats),
    st.tuples(*[st.floats(0.125, 10, width=32)] * 3),  # std must be positive
    st.sampled_from(["bilinear", "bicubic", "nearest"]),
    st.dictionaries(st.text(max_size=8), st.one_of(st.booleans(), st.integers(-5, 5), st.text(max_size=5)),
                    max_size=4),
    st.text(max_size=30),
    st.text(max_size=10),
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_metas)
def test_model_meta_roundtrip(meta):
    d = meta.to_dict()
    assert ModelMeta.from_dict(d) == meta
    import json
    assert ModelMeta.from_dict(json.loads(json.dumps(d))) == meta  # survives JSON (config.json) too


_junk = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=6),
                               st.floats(allow_nan=True, allow_infinity=False)),
                     lambda kids: st.one_of(st.lists(kids, max_size=4),
                                            st.dictionaries(st.text(max_size=6), kids, max_size=4)),
                     max_leaves=10)
_meta_keys = st.sampled_from(["arch", "num_classes", "class_names", "input", "arch_options", "source", "dataset"])
_garbage_meta = st.one_of(
    _junk,
    st.dictionaries(_meta_keys, _junk, max_size=7),
    # a valid meta with one field replaced by junk
    st.tuples(_metas, _meta_keys, _junk).map(lambda t: {**t[0].to_dict(), t[1]: t[2]}),
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(_garbage_meta)
def test_model_meta_from_garbage_raises_only_documented_errors(d):
    try:
        ModelMeta.from_dict(d)
    except (KeyError, TypeError, ValueError):
        pass


@settings(max_examples=100, deadline=None, derandomize=True)
@given(_garbage_meta)
def test_read_weight_file_wraps_damaged_meta_in_checkpoint_error(d):
    obj = {"format": formats.FORMAT_TAG, "format_version": 1, "meta": d,
           "state_dict": {"w": __import__("torch").zeros(2)}}
    real = formats.read_checkpoint
    formats.read_checkpoint = lambda path, map_location=None: obj  # no disk I/O per example
    try:
        try:
            wf = formats.read_weight_file("fuzz.pth")
        except CheckpointError as e:
            assert "fuzz.pth" in str(e)
            return
        assert isinstance(wf.meta, ModelMeta) and wf.meta.num_classes == len(wf.meta.class_names)
    finally:
        formats.read_checkpoint = real


def test_infinite_num_classes_is_checkpoint_error(monkeypatch):
    import torch
    obj = {"format": formats.FORMAT_TAG, "format_version": 1, "state_dict": {"w": torch.zeros(1)},
           "meta": {"arch": "a", "num_classes": float("inf"), "class_names": []}}
    monkeypatch.setattr(formats, "read_checkpoint", lambda path, map_location=None: obj)
    with pytest.raises(CheckpointError, match="inf.pth"):
        formats.read_weight_file("inf.pth")


# ------------------------------------------------------------------------------ image decoding

def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(1234)
    out = []
    for h, w, q in ((24, 32, 90), (17, 9, 50)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2] = img[: h // 2] // 8 * 8  # some flat areas next to noise
        ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, q])
        assert ok
        out.append(enc.tobytes())
    from PIL import Image
    buf = io.BytesIO()
    Image.new("L", (13, 11), 90).save(buf, "JPEG", progressive=True)
    out.append(buf.getvalue())
    return out


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(0, 5)
    if kind == 0:  # bit flips
        for _ in range(int(rng.integers(1, 9))):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:  # truncation
        b = b[: int(rng.integers(0, len(b)))]
    elif kind == 2:  # insertion of random bytes (sometimes markers)
        i = int(rng.integers(0, len(b) + 1))
        ins = bytes(rng.integers(0, 256, int(rng.integers(1, 16)), dtype=np.uint8))
        if rng.random() < 0.3:
            ins = b"\xff" + bytes([int(rng.choice([0xD8, 0xD9, 0xDA, 0xDB, 0xC0, 0xC4, 0xDD]))]) + ins
        b[i:i] = ins
    elif kind == 3:  # deletion of a span
        i = int(rng.integers(0, len(b)))
        del b[i:i + int(rng.integers(1, 64))]
    else:  # overwrite a span with garbage (e.g. inside a header)
        i = int(rng.integers(0, min(len(b), 200)))
        n = int(rng.integers(1, 8))
        b[i:i + n] = bytes(rng.integers(0, 256, n, dtype=np.uint8))
    return bytes(b)


def test_decode_image_bytes_fuzz_mutated_jpegs():
    rng = np.random.default_rng(20240601)
    seeds = _seed_images()
    outcomes = {"decoded": 0, "refused": 0}
    start = time.perf_counter()
    for case in range(400):
        data = _mutate(seeds[case % len(seeds)], rng)
        if rng.random() < 0.2:
            data = _mutate(data, rng)  # double mutation
        try:
            arr = decode_image_bytes(data, "RGB" if case % 2 else "BGR", name=f"case{case}.jpg")
        except DatasetError as e:
            assert f"case{case}.jpg" in str(e)
            outcomes["refused"] += 1
            continue
        assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8
        assert arr.ndim == 3 and arr.shape[2] == 3 and arr.shape[0] > 0 and arr.shape[1] > 0
        assert arr.flags.c_contiguous
        outcomes["decoded"] += 1
    assert outcomes["decoded"] > 20 and outcomes["refused"] > 20, outcomes  # both paths exercised
    assert time.perf_counter() - start < 30


@FAST
@given(st.binary(max_size=200))
def test_decode_image_bytes_arbitrary_bytes(data):
    try:
        arr = decode_image_bytes(data, name="junk.bin")
    except DatasetError as e:
        assert "junk.bin" in str(e)
        return
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


# ------------------------------------------------------------------------------ checkpoint reader, mutated files

_WORKER_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (Path(__file__).resolve().parents[1],
                                                                              Path(__file__).parent))}


def test_mutated_checkpoints_are_loaded_or_refused_never_crash(tmp_path):
    """A bounded mutation loop over real zip and legacy checkpoint files (byte flips, insertions,
    deletions, huge numbers; half of them inside a still-valid zip so the unpickler is reached), in a
    child process whose address space is capped at what it holds after importing torch plus 512 MiB:
    every input loads or is a CheckpointError; no other exception, no signal, no allocation the file did
    not pay for (a refusal caused by a failed allocation counts as a failure)."""
    import json

    report = tmp_path / "fuzz.json"
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("fuzz_checkpoint_worker.py")), "7", "30",
                           "3000", str(report)], env=_WORKER_ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])  # a negative code is a signal
    result = json.loads(report.read_text())
    assert result["failures"] == [], result["failures"][0]["error"]
    assert result["iterations"] >= 100 and result["refused"] > 0 and result["loaded"] > 0, result



_PROBE = """
import sys
import fuzz_checkpoint_worker as worker
from poster.checkpoint import safe_load
if sys.argv[2] == "unchecked":
    safe_load._declared_storage_bytes = lambda storages, where: 0  # the loader's size check taken out
worker.cap_address_space()
print(worker.outcome(sys.argv[1]))
"""


def _outcome_under_the_fuzz_cap(path: Path, mode: str = "checked") -> str:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path), mode], env=_WORKER_ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    return proc.stdout.strip()


def test_the_fuzz_bound_catches_an_allocation_the_file_did_not_pay_for(tmp_path):
    """The fuzz worker's bound is real: a legacy file of a few hundred bytes declaring a 1 GiB storage is
    refused by the loader's size check; with that check taken out, torch tries to allocate the storage,
    the worker's cap refuses it and the worker reports a failure, not a refusal. (Without the cap the
    allocation succeeds untouched, the short file is then refused, and this test fails.)"""
    from test_hostile_files import _storage_pid_pickle
    from test_safe_load import legacy_with_pickle

    path = legacy_with_pickle(tmp_path / "big.pth", _storage_pid_pickle(2**28, legacy=True))
    assert path.stat().st_size < 1000
    assert _outcome_under_the_fuzz_cap(path) == "refused"
    unchecked = _outcome_under_the_fuzz_cap(path, "unchecked")
    assert unchecked.startswith("allocation beyond the cap:"), unchecked


@pytest.mark.parametrize("legacy,pkl", [
    # a memo index of 2**29: the C unpickler's memo table would be 8 GiB of zeros
    (False, b"\x80\x02N" + b"r" + (2**29).to_bytes(4, "little") + b"."),
    # a string length of 4 GiB: a buffered read(n) of the real file reserves n bytes before reading
    (True, b"\x80\x02X" + b"\xff\xff\xff\xff" + b"abc."),
], ids=["memo-index", "legacy-string-length"])
def test_fuzz_findings_cost_no_memory(tmp_path, legacy, pkl):
    """Two findings of the fuzz loop once it counted failed allocations: tiny files whose pickle numbers
    made the loader's scans ask for gigabytes. Refused (or loaded) within the fuzz worker's cap now."""
    from test_safe_load import legacy_with_pickle, torch_zip_with_pickle

    path = (legacy_with_pickle if legacy else torch_zip_with_pickle)(tmp_path / "f.pth", pkl)
    assert path.stat().st_size < 1000
    assert _outcome_under_the_fuzz_cap(path) in ("refused", "loaded")
