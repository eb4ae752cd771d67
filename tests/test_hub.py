"""Fetching official weights on first use, against a loopback stand-in for Google Drive.

Nothing here touches the internet: ``POSTER_GDRIVE_ORIGIN`` sends gdown's Google Drive requests to
``drive_standin.DriveStandIn`` on 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import poster
from poster.checkpoint import hub
from poster.checkpoint.releases import RELEASES
from drive_standin import DriveStandIn
from golden_fill import fill_state_dict, load_manifest
from release_standins import write_standin

ROOT = Path(__file__).resolve().parents[1]
LANDMARK = RELEASES["mobilefacenet68"]
V1_RAFDB = RELEASES["poster_v1_large.rafdb"]


@pytest.fixture(scope="module")
def landmark_bytes(tmp_path_factory) -> bytes:
    # Full-size tensors (4 MB): larger than gdown's 512 KB read chunk, so a cut transfer keeps bytes.
    path = tmp_path_factory.mktemp("standin") / "mfn.pth.tar"
    return write_standin("mobilefacenet68", path, fill_state_dict(load_manifest("mobilefacenet_136"), 3)).read_bytes()


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    monkeypatch.setenv("POSTER_WEIGHTS", str(folder))
    monkeypatch.delenv("POSTER_OFFLINE", raising=False)
    monkeypatch.setenv("POSTER_DOWNLOAD_RETRIES", "1")
    monkeypatch.setenv("POSTER_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.chdir(tmp_path)  # the current folder is searched too: keep it empty
    return folder


@pytest.fixture
def drive(monkeypatch):
    with DriveStandIn() as standin:
        monkeypatch.setenv("POSTER_GDRIVE_ORIGIN", standin.origin)
        yield standin


def cache_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != ".locks") if folder.is_dir() else []


@pytest.mark.parametrize("behaviour", ["direct", "confirm", "slow"])
def test_fetch_verifies_records_hash_and_reuses(behaviour, cache, drive, landmark_bytes):
    drive.add_file(LANDMARK.source.id, behaviour, LANDMARK.file_name, landmark_bytes)
    path = hub.ensure_release(LANDMARK, progress=False)
    assert path == cache / LANDMARK.file_name and path.read_bytes() == landmark_bytes
    digest = hashlib.sha256(landmark_bytes).hexdigest()
    assert (cache / f"{LANDMARK.file_name}.sha256").read_text() == f"{digest}  {LANDMARK.file_name}\n"
    assert cache_files(cache) == [LANDMARK.file_name, f"{LANDMARK.file_name}.sha256"]
    if behaviour == "confirm":  # the large-file page was followed to drive.usercontent.google.com
        assert [host for host, _, _ in drive.requests] == ["drive.google.com", "drive.usercontent.google.com"]
    # A second use reads the cache: no request at all.
    before = len(drive.requests)
    assert hub.ensure_release(LANDMARK) == path and len(drive.requests) == before


def test_cut_connection_is_resumed_with_a_range_request(cache, drive, landmark_bytes):
    drive.add_file(LANDMARK.source.id, "cut_once", LANDMARK.file_name, landmark_bytes)
    path = hub.ensure_release(LANDMARK, progress=False)
    assert path.read_bytes() == landmark_bytes
    ranges = [int(r.split("=")[1].rstrip("-")) for _, _, r in drive.requests if r]
    assert len(ranges) == 1 and 0 < ranges[0] <= len(landmark_bytes) // 2  # resumed, not restarted


@pytest.mark.parametrize("behaviour, reason", [
    ("quota", "Too many users have viewed or downloaded this file recently"),
    ("html_file", "sent an HTML page"),
    ("cut_always", "fetching it failed"),
    ("stall", "fetching it failed"),
])
def test_failed_fetch_names_the_reason_and_leaves_nothing(behaviour, reason, cache, drive, landmark_bytes):
    content = landmark_bytes
    if behaviour == "html_file":
        content = b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head></html>"
    drive.add_file(LANDMARK.source.id, behaviour, LANDMARK.file_name, content)
    with pytest.raises(poster.CheckpointError, match=reason) as info:
        hub.ensure_release(LANDMARK, progress=False)
    message = str(info.value)
    assert "\n" not in message and LANDMARK.name in message and str(cache / LANDMARK.file_name) in message
    assert cache_files(cache) == []


def test_truncated_and_wrong_architecture_files_are_deleted(cache, drive, landmark_bytes, tmp_path):
    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, landmark_bytes[: len(landmark_bytes) // 3])
    with pytest.raises(poster.CheckpointError, match="truncated or damaged; deleted"):
        hub.ensure_release(LANDMARK, progress=False)
    assert cache_files(cache) == []
    # An IR-50 file served under the landmark release's id: refused with the key report.
    wrong = write_standin("ir50", tmp_path / "ir50.pth").read_bytes()
    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, wrong)
    with pytest.raises(poster.CheckpointError, match="holds other weights; deleted .*missing"):
        hub.ensure_release(LANDMARK, progress=False)
    assert cache_files(cache) == []


def test_v1_release_is_found_in_the_authors_folder(cache, drive, tmp_path):
    content = write_standin(V1_RAFDB.name, tmp_path / "rafdb.pth").read_bytes()
    drive.folders[V1_RAFDB.source.id] = ("checkpoint", {"affectnet_best.pth": "A" * 33, "rafdb_best.pth": "R" * 33})
    drive.add_file("R" * 33, "confirm", "rafdb_best.pth", content)
    model = poster.load_model(V1_RAFDB.name)
    assert model.meta.class_names[0] == "Surprise" and model.meta.input.channel_order == "BGR"
    assert (cache / "rafdb_best.pth").read_bytes() == content
    assert any("/embeddedfolderview?id=" + V1_RAFDB.source.id in p for _, p, _ in drive.requests)


def test_changed_file_is_an_error_that_says_so(cache, drive, landmark_bytes):
    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, landmark_bytes)
    path = hub.ensure_release(LANDMARK, progress=False)
    path.write_bytes(landmark_bytes + b"\0")
    with pytest.raises(poster.CheckpointError, match="has changed since it was fetched"):
        hub.ensure_release(LANDMARK)


def test_no_network_offline_and_closed_port(cache, monkeypatch, capsys):
    with socket.socket() as s:  # a loopback port nobody listens on: "no network"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("POSTER_GDRIVE_ORIGIN", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("POSTER_DOWNLOAD_RETRIES", "2")
    with pytest.raises(hub.WeightsUnavailable) as info:
        hub.ensure_release(LANDMARK, progress=True)
    # one short line, the way out first: where to download the file by hand and where to save it
    hint = f"{LANDMARK.name}: download {LANDMARK.source.url} by hand and save it as {cache / LANDMARK.file_name}; "
    assert str(info.value) == hint + "fetching it failed: 127.0.0.1 refused the connection"
    assert "Retrying" not in capsys.readouterr().err  # gdown's retry notes go to the debug log
    assert cache_files(cache) == []
    monkeypatch.setenv("POSTER_OFFLINE", "1")
    with pytest.raises(hub.WeightsUnavailable, match="offline") as info:
        hub.ensure_release(LANDMARK)
    assert LANDMARK.source.url in str(info.value) and str(cache / LANDMARK.file_name) in str(info.value)


def test_unresolvable_host_is_named_shortly():
    import requests
    import urllib3
    from urllib3.connection import HTTPSConnection

    unresolved = urllib3.exceptions.NameResolutionError(
        "drive.google.com", HTTPSConnection("drive.google.com", 443), socket.gaierror(-2, "Name or service not known"))
    error = requests.exceptions.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/uc?id=x", unresolved))
    assert hub._network_reason(error) == "drive.google.com could not be resolved (no network?)"


def test_non_loopback_origin_is_refused(cache, monkeypatch):
    monkeypatch.setenv("POSTER_GDRIVE_ORIGIN", "http://example.com")
    with pytest.raises(poster.CheckpointError, match="loopback"):
        hub.ensure_release(LANDMARK, progress=False)


def test_two_processes_fetch_the_file_once(cache, drive, landmark_bytes):
    drive.add_file(LANDMARK.source.id, "slow", LANDMARK.file_name, landmark_bytes)
    code = ("from poster.checkpoint.hub import ensure_release; from poster.checkpoint.releases import RELEASES; "
            "print(ensure_release(RELEASES['mobilefacenet68'], progress=False))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert {out.strip() for out, _ in outputs} == {str(cache / LANDMARK.file_name)}
    assert drive.bodies_started == [LANDMARK.source.id]  # one transfer; the other process waited
    assert (cache / LANDMARK.file_name).read_bytes() == landmark_bytes


@pytest.mark.slow
def test_cli_offline_is_one_line_and_nonzero(cache, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POSTER_WEIGHTS": str(cache)}
    env.pop("POSTER_GDRIVE_ORIGIN", None)
    result = subprocess.run([sys.executable, "-m", "poster", "--offline", "predict", str(ROOT / "examples" /
                             "astronaut.jpg"), "-c", "poster_v2.rafdb", "-o", str(tmp_path / "out")],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: poster_v2.rafdb"), result.stderr
    assert RELEASES["poster_v2.rafdb"].source.url in lines[0] and str(cache / "raf-db-model_best.pth") in lines[0]
    assert cache_files(cache) == []


def test_weights_command_download_path_list_verify(cache, drive, landmark_bytes, capsys):
    from poster.cli import main

    drive.add_file(LANDMARK.source.id, "direct", LANDMARK.file_name, landmark_bytes)
    assert main(["weights", "download", "mobilefacenet68"]) == 0
    path = cache / LANDMARK.file_name
    capsys.readouterr()
    assert main(["weights", "path", "mobilefacenet68"]) == 0
    assert capsys.readouterr().out.strip() == str(path)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.strip().startswith("mobilefacenet68"))
    assert "present 4." in line and hashlib.sha256(landmark_bytes).hexdigest() in out
    assert "cunjian/pytorch_face_landmark" in out and "research use" in out
    assert main(["weights", "verify"]) == 0
    assert "ok     mobilefacenet68" in capsys.readouterr().out
    path.write_bytes(landmark_bytes[:1000])  # changed behind our back
    assert main(["weights", "verify"]) == 1
    out, err = capsys.readouterr()
    assert "FAILED mobilefacenet68" in out and "has changed since it was fetched" in out
    assert err.strip() == "error: 1 of 1 release files failed verification (listed above)"
