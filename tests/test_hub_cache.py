"""``poster weights``, the local side: what a planted, linked, left-over or edited file in the weights
cache does, and a ``POSTER_WEIGHTS`` that is a file or cannot be written (no network: the Drive is
``drive_standin`` on 127.0.0.1)."""

from __future__ import annotations

import hashlib

import pytest

import poster
from poster.checkpoint import hub
from release_standins import write_standin
from test_hub import LANDMARK, cache, cache_files, drive, landmark_bytes  # noqa: F401 (fixtures)

HTML = b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head></html>"


def test_planted_file_is_checked_before_its_hash_is_trusted(cache, landmark_bytes, tmp_path):
    cache.mkdir()
    path = cache / LANDMARK.file_name
    planted = {"an HTML page": (HTML, r"is an HTML page \('Google Drive - Virus scan warning'\)"),
               "random bytes": (b"\x07" * 5000, "not a readable checkpoint"),
               "other weights": (write_standin("ir50", tmp_path / "ir50.pth").read_bytes(), "holds other weights")}
    for what, (content, words) in planted.items():
        path.write_bytes(content)
        with pytest.raises(poster.CheckpointError, match=words) as info:
            hub.ensure_release(LANDMARK)
        assert str(path) in str(info.value) and "\n" not in str(info.value), what
        assert cache_files(cache) == [LANDMARK.file_name], what  # no hash recorded for it, nothing deleted
    path.write_bytes(landmark_bytes)  # the real file, saved by hand: checked, then its hash recorded
    assert hub.ensure_release(LANDMARK) == path
    assert hub.recorded_hash(path) == hashlib.sha256(landmark_bytes).hexdigest()


def test_edited_hash_file_is_an_error_and_nothing_is_deleted(cache, drive, landmark_bytes):
    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, landmark_bytes)
    path = hub.ensure_release(LANDMARK, progress=False)
    sidecar = hub.hash_file(path)
    for edited, words in ((f"{'0' * 64}  {path.name}\n", "recorded 0000"), ("not a hash\n", "recorded unreadable")):
        sidecar.write_text(edited)
        with pytest.raises(poster.CheckpointError, match=f"has changed since it was fetched .*{words}"):
            hub.ensure_release(LANDMARK)
        assert path.read_bytes() == landmark_bytes and sidecar.read_text() == edited


def test_a_link_in_the_cache_is_read_through_never_written_through(cache, drive, landmark_bytes, tmp_path):
    shared = tmp_path / "shared" / LANDMARK.file_name  # a weights folder shared by links: used as a file
    shared.parent.mkdir()
    shared.write_bytes(landmark_bytes)
    cache.mkdir()
    (cache / LANDMARK.file_name).symlink_to(shared)
    assert hub.ensure_release(LANDMARK) == cache / LANDMARK.file_name
    assert not hub.hash_file(cache / LANDMARK.file_name).is_symlink() and shared.read_bytes() == landmark_bytes
    (cache / LANDMARK.file_name).unlink()
    hub.hash_file(cache / LANDMARK.file_name).unlink()
    # a link planted under the name of gdown's partial file: the download would be written into its target
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched\n")
    (cache / f"{LANDMARK.file_name}.incomingABCDEFGH.part").symlink_to(victim)
    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, landmark_bytes)
    path = hub.ensure_release(LANDMARK, progress=False)
    assert victim.read_text() == "untouched\n"
    assert not path.is_symlink() and path.read_bytes() == landmark_bytes
    assert cache_files(cache) == [LANDMARK.file_name, f"{LANDMARK.file_name}.sha256"]


@pytest.mark.parametrize("left", ["truncated", "other weights"])
def test_a_left_over_incoming_file_is_fetched_again_not_kept(left, cache, drive, landmark_bytes, tmp_path):
    """gdown takes an existing output as already downloaded: a truncated ``.incoming`` (a run killed
    after the transfer) or another file planted under that name must not become the release."""
    cache.mkdir()
    content = landmark_bytes[:1000] if left == "truncated" else \
        write_standin("mobilefacenet68", tmp_path / "other.pth").read_bytes()
    assert content != landmark_bytes
    (cache / f"{LANDMARK.file_name}.incoming").write_bytes(content)
    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, landmark_bytes)
    path = hub.ensure_release(LANDMARK, progress=False)
    assert path.read_bytes() == landmark_bytes and drive.bodies_started == [LANDMARK.source.id]
    assert cache_files(cache) == [LANDMARK.file_name, f"{LANDMARK.file_name}.sha256"]


def test_weights_folder_that_is_a_file_or_cannot_be_written(cache, monkeypatch, landmark_bytes):
    cache.write_text("a file where the folder should be\n")
    with pytest.raises(hub.WeightsUnavailable, match="it is a file, not a folder") as info:
        hub.ensure_release(LANDMARK, progress=False)
    assert str(cache) in str(info.value) and "POSTER_WEIGHTS" in str(info.value) and "\n" not in str(info.value)
    cache.unlink()
    cache.mkdir()
    # (the tests may run as root, whom no permission bit stops: the check itself is faked)
    real_access = hub.os.access
    monkeypatch.setattr(hub.os, "access", lambda path, mode: False)
    with pytest.raises(hub.WeightsUnavailable, match="this user cannot write there"):
        hub.ensure_release(LANDMARK, progress=False)
    assert cache_files(cache) == []
    monkeypatch.setattr(hub.os, "access", real_access)
    # a read-only cache that already holds the file: used as given, its hash just not recorded
    (cache / LANDMARK.file_name).write_bytes(landmark_bytes)

    def cannot(path, digest):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(hub, "record_hash", cannot)
    assert hub.ensure_release(LANDMARK) == cache / LANDMARK.file_name
    assert cache_files(cache) == [LANDMARK.file_name]
