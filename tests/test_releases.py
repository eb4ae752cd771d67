"""Release records are the truth: every release loads by name with its own class and channel order."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import poster
from poster.checkpoint.releases import BUNDLED, RELEASES, all_releases
from release_standins import RELEASE_MANIFESTS, shared_state_dict, write_standin

ROOT = Path(__file__).resolve().parents[1]
RAF = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
AFF7 = ("Neutral", "Happiness", "Sadness", "Surprise", "Fear", "Disgust", "Anger")
CAERS = ("Anger", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")

# Written out here, not read from the records: what each release must come back as.
EXPECTED = {
    "poster_v1_large.rafdb": ("poster_v1_large", RAF, "BGR", {"token_mixing": True}),
    "poster_v1_large.affectnet7": ("poster_v1_large", AFF7, "RGB", {"token_mixing": False}),
    "poster_v1_large.affectnet8": ("poster_v1_large", AFF7 + ("Contempt",), "RGB", {"token_mixing": False}),
    "poster_v2.rafdb": ("poster_v2", RAF, "RGB", {}),
    "poster_v2.affectnet7": ("poster_v2", AFF7, "RGB", {}),
    "poster_v2.affectnet8": ("poster_v2", AFF7 + ("Contempt",), "RGB", {}),
    "poster_v2.caers": ("poster_v2", CAERS, "RGB", {}),
}


@pytest.fixture(scope="session")
def standin_state_dicts():
    """One state dict per manifest, built once (the V2 index buffers take seconds)."""
    return {m: shared_state_dict(m) for m in {m for m, _ in RELEASE_MANIFESTS.values()}}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTER_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("POSTER_OFFLINE", "1")  # these tests never download
    monkeypatch.chdir(tmp_path)
    return tmp_path / "weights"


def test_every_release_loads_by_name_with_its_own_classes_and_channels(cache, standin_state_dicts):
    assert set(EXPECTED) == {n for n, r in RELEASES.items() if r.kind == "model"}
    for name, (arch, classes, channels, options) in EXPECTED.items():
        release = RELEASES[name]
        sd = standin_state_dicts[RELEASE_MANIFESTS[name][0]]
        write_standin(name, cache / release.file_name, sd)
        model = poster.load_model(name)
        meta = model.meta
        assert (meta.arch, meta.class_names, meta.input.channel_order) == (arch, classes, channels), name
        assert meta.arch_options == options and meta.dataset == name.split(".")[1] and meta.source == name
        head = "head.linear.weight" if arch.startswith("poster_v1") else "VIT.head.linear.weight"
        assert torch.equal(model.state_dict()[head], sd[head]), name  # the file's weights, not a fresh init
        (cache / release.file_name).unlink()


def test_v2_affectnet7_is_not_labelled_as_rafdb(cache, standin_state_dicts):
    """The bug of issue 15: the same 7-class V2 keys, two releases, two class orders."""
    for name in ("poster_v2.rafdb", "poster_v2.affectnet7"):
        write_standin(name, cache / RELEASES[name].file_name, standin_state_dicts["poster_v2_7cls"])
    assert poster.load_model("poster_v2.affectnet7").meta.class_names == AFF7
    assert poster.load_model("poster_v2.rafdb").meta.class_names == RAF
    with pytest.raises(poster.CheckpointError, match="affectnet7 model; dataset='rafdb'"):
        poster.load_model("poster_v2.affectnet7", dataset="rafdb")


def test_wrong_architecture_under_a_release_name_is_refused_with_the_key_report(cache, standin_state_dicts):
    # A V1 RAF-DB file saved under the V2 RAF-DB release's name.
    write_standin("poster_v1_large.rafdb", cache / RELEASES["poster_v2.rafdb"].file_name,
                  standin_state_dicts["poster_v1_rafdb_large_7cls"])
    with pytest.raises(poster.CheckpointError, match=r"poster_v2\.rafdb.*\d+ missing: .*\d+ unexpected: "):
        poster.load_model("poster_v2.rafdb")


def test_backbone_releases_are_not_models(cache, standin_state_dicts):
    write_standin("mobilefacenet68", cache / RELEASES["mobilefacenet68"].file_name,
                  standin_state_dicts["mobilefacenet_136"])
    path = poster.checkpoint.hub.resolve_weights("mobilefacenet68")
    report = poster.load_backbone_weights(poster.create_model("poster_v1_small"), landmark=path)
    assert report["landmark"]["loaded"] == 333
    with pytest.raises(poster.CheckpointError, match="landmark"):
        poster.load_model("mobilefacenet68")


def test_a_file_by_path_takes_the_metadata_of_the_record_it_fits(tmp_path, standin_state_dicts, caplog):
    """No key tells a 7-class V2 file's dataset: the authors' file name does, else ``dataset``,
    else RAF-DB with a warning that names every release the weights fit."""
    mine = write_standin("poster_v2.caers", tmp_path / "mine.pth", standin_state_dicts["poster_v2_7cls"])
    with caplog.at_level("WARNING"):
        meta = poster.load_model(mine).meta
    assert (meta.class_names, meta.dataset, meta.source) == (RAF, "rafdb", "mine.pth")
    assert all(n in caplog.text for n in ("poster_v2.rafdb", "poster_v2.affectnet7", "poster_v2.caers"))
    assert poster.load_model(mine, dataset="caers").meta.class_names == CAERS
    authors = mine.rename(tmp_path / RELEASES["poster_v2.caers"].file_name)
    assert poster.load_model(authors).meta.class_names == CAERS
    assert poster.load_model(authors, dataset="affectnet7").meta.class_names == AFF7


def test_records_are_complete():
    for r in all_releases():
        assert r.terms and r.terms_summary and r.provenance and r.source.url, r.name
        if r.kind in ("model", "bundled"):
            assert r.class_names and r.dataset and r.paper_accuracy and r.class_order_source, r.name
    # The bundled model's embedded landmark weights are cunjian's, for research use (issue 15, point 7).
    assert "cunjian" in BUNDLED.provenance and "research use" in BUNDLED.terms
    assert "not trained by them" in RELEASES["mobilefacenet68"].provenance


def _readme_release_table() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| release name |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def release_table_rows() -> list[list[str]]:
    """The README's release table, as the records say it must be."""
    rows = []
    for r in all_releases():
        accuracy = f"{r.paper_accuracy:.2f}" if r.paper_accuracy is not None else "-"
        channels = r.channel_order if r.kind in ("model", "bundled") else "-"
        rows.append([f"`{r.name}`", f"`{r.file_name}`", r.dataset, channels, accuracy, r.terms_summary])
    return rows


def test_readme_release_table_is_the_records():
    assert _readme_release_table() == release_table_rows()


if __name__ == "__main__":  # print the table for the README: python tests/test_releases.py
    print("| release name | file (authors' name) | dataset | input | accuracy | terms (`poster weights list` for the full text) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in release_table_rows():
        print("| " + " | ".join(row) + " |")
