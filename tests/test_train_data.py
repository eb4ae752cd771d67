"""Sampling, splitting and FERPlus parsing used by training."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from poster.data import build_dataset
from poster.data.ferplus import FERPLUS_CLASSES, majority_label
from poster.errors import DatasetError
from poster.train.data import EpochSampler, balanced_weights, stratified_split


def test_stratified_split_keeps_class_proportions_and_is_seeded():
    targets = [0] * 100 + [1] * 50 + [2] * 10
    tr, va = stratified_split(targets, 0.2, seed=1)
    assert sorted(tr + va) == list(range(160)) and not set(tr) & set(va)
    counts = Counter(targets[i] for i in va)
    assert counts == {0: 20, 1: 10, 2: 2}
    assert stratified_split(targets, 0.2, seed=1) == (tr, va)
    assert stratified_split(targets, 0.2, seed=2) != (tr, va)


def test_sampler_ranks_are_disjoint_and_cover_the_global_order():
    single = EpochSampler(10, seed=3)
    single.set_epoch(4)
    ranks = [EpochSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    for s in ranks:
        s.set_epoch(4)
    a, b = list(ranks[0]), list(ranks[1])
    assert len(a) == len(b) == 5 and not set(a) & set(b)
    # Interleaving the ranks' shares gives back the single-process order.
    assert [x for pair in zip(a, b) for x in pair] == list(single)
    single.set_epoch(5)
    assert list(single) != [x for pair in zip(a, b) for x in pair]  # a new order every epoch


def test_sampler_resumes_inside_an_epoch():
    s = EpochSampler(12, seed=0)
    s.set_epoch(2)
    full = list(s)
    s.set_epoch(2, start=5)
    assert list(s) == full[5:] and len(s) == 7


def test_balanced_sampling_equalises_classes():
    targets = [0] * 900 + [1] * 100
    s = EpochSampler(len(targets), seed=0, weights=balanced_weights(targets))
    s.set_epoch(0)
    drawn = Counter(targets[i] for i in s)
    assert abs(drawn[0] - drawn[1]) < 120  # ~500 each instead of 900/100


@pytest.mark.parametrize("votes,label", [
    ([6, 2, 1, 0, 0, 0, 1, 0, 0, 0], 0),      # clear neutral (single votes are discarded)
    ([0, 4, 4, 0, 0, 0, 0, 0, 2, 0], None),   # tie: no majority
    ([0, 0, 0, 0, 0, 0, 0, 0, 7, 3], None),   # unknown wins: dropped
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 10], None),  # not a face
    ([0, 0, 0, 0, 0, 0, 0, 6, 2, 2], 7),      # contempt
    ([1, 1, 1, 1, 1, 1, 1, 1, 1, 1], None),   # only noise
])
def test_ferplus_majority_rule(votes, label):
    assert majority_label(votes) == label


def test_ferplus_layout(tmp_path):
    import cv2

    folder = tmp_path / "FER2013Train"
    folder.mkdir()
    rows = ["fer0000000.png,\"(0, 0, 48, 48)\",0,9,1,0,0,0,0,0,0,0",
            "fer0000001.png,\"(0, 0, 48, 48)\",0,0,0,0,0,0,0,0,0,10",
            "fer0000002.png,\"(0, 0, 48, 48)\",2,0,8,0,0,0,0,0,0,0"]
    for i in range(3):
        cv2.imwrite(str(folder / f"fer000000{i}.png"), np.full((48, 48), 100, np.uint8))
    (folder / "label.csv").write_text("\r\n".join(rows) + "\r\n")
    ds = build_dataset("ferplus", tmp_path, "train")
    assert ds.class_names == FERPLUS_CLASSES
    assert [label for _, label in ds.records] == [1, 2]
    (folder / "label.csv").write_text("fer0000000.png,box,1,x,0,0,0,0,0,0,0,0\n")
    with pytest.raises(DatasetError, match="label.csv:1"):
        build_dataset("ferplus", tmp_path, "train")
