"""Damaged and hostile videos through ``poster predict``'s video path: a file cut mid-frame, a corrupt
frame, a frame or a container header declaring a huge picture, a network stream that stalls.  Each is
named or counted, memory stays bounded, and the records written stay valid JSON lines."""

from __future__ import annotations

import http.server
import json
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import poster
from poster.inference.batch import BatchListener, BatchOptions, open_run_folder, run_batch
from poster.inference.video import FrameReader

FRAMES = 20


class Notes(BatchListener):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str, problem: bool = False) -> None:
        self.lines.append(text)


@pytest.fixture(scope="module")
def recognizer():
    return poster.Recognizer.from_checkpoint(None, device="cpu", detector="none")


def _avi(path: Path, frames: int = FRAMES) -> bytes:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 48))
    for i in range(frames):
        writer.write(np.random.default_rng(i).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    return path.read_bytes()


def _frame_starts(data: bytes) -> list[int]:
    return [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]


def _predict(recognizer, video: Path, out: Path):
    notes = Notes()
    with open_run_folder(out) as run:
        summary, results = run_batch(recognizer, [str(video)], run.folder, BatchOptions(annotate=True),
                                     listener=notes)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    return summary, records, notes.lines, run.folder


def test_file_cut_mid_frame_is_named_and_the_frames_before_are_kept(recognizer, tmp_path):
    data = _avi(tmp_path / "whole.avi")
    cut = tmp_path / "cut.avi"
    starts = _frame_starts(data)
    cut.write_bytes(data[:starts[12] + 300])  # in the middle of the 13th frame
    summary, records, notes, folder = _predict(recognizer, cut, tmp_path / "out")
    kept = len(records)  # 12 whole frames, and the cut one where FFmpeg conceals what is missing
    assert kept in (12, 13) and [r["frame"] for r in records] == list(range(kept))
    assert summary.videos == 1 and summary.videos_cut_short == 1 and summary.frames == kept
    assert any(f"ends at frame {kept} of the {FRAMES} its header announces (cut short?)" in n for n in notes), notes
    annotated = cv2.VideoCapture(str(folder / "annotated" / "cut.mp4"))
    assert annotated.isOpened() and int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == kept
    whole = _predict(recognizer, tmp_path / "whole.avi", tmp_path / "out_whole")
    assert whole[0].videos_cut_short == 0 and not any("cut short" in n for n in whole[2])


def test_corrupt_frames_and_a_frame_declaring_a_huge_picture_are_skipped_and_counted(recognizer, tmp_path):
    data = bytearray(_avi(tmp_path / "clip.avi"))
    starts = _frame_starts(bytes(data))
    data[starts[5]:starts[5] + 400] = bytes(400)  # a wiped frame
    sof = bytes(data).index(b"\xff\xc0", starts[10])
    struct.pack_into(">HH", data, sof + 5, 16000, 16000)  # a frame declaring 256 MP (its data is 64 x 48)
    hostile = tmp_path / "hostile.avi"
    hostile.write_bytes(bytes(data))
    summary, records, notes, _ = _predict(recognizer, hostile, tmp_path / "out")
    assert [r["frame"] for r in records] == [i for i in range(FRAMES) if i not in (5, 10)]
    assert summary.frames_failed == 2 and summary.videos_cut_short == 0
    assert any("2 undecodable frames skipped" in n for n in notes), notes


def test_container_header_declaring_a_huge_frame_size_decodes_the_real_frames(tmp_path):
    """An AVI header saying 40,000 x 40,000: FFmpeg refuses that size (its image size check), and
    the frames are read at the size their own data has; nothing that large is allocated."""
    data = bytearray(_avi(tmp_path / "clip.avi"))
    for chunk, offset, fmt in ((b"avih", 32, "<II"), (b"strf", 4, "<ii")):
        struct.pack_into(fmt, data, bytes(data).index(chunk) + 8 + offset, 40000, 40000)
    huge = tmp_path / "huge.avi"
    huge.write_bytes(bytes(data))
    reader = FrameReader(huge)
    shapes = {frame.shape for _, frame in reader}
    assert shapes == {(48, 64, 3)} and reader.frames_read == FRAMES


class _StallingHandler(http.server.BaseHTTPRequestHandler):
    """Sends the first half of a video, then nothing (until the test lets it go, 30 s at most)."""

    body = b""
    release = threading.Event()

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[: len(self.body) // 2])
        self.wfile.flush()
        self.release.wait(30)

    def log_message(self, *args):
        pass


def test_stalled_stream_ends_after_the_stream_timeout(tmp_path, monkeypatch):
    _StallingHandler.body = _avi(tmp_path / "clip.avi", frames=60)
    _StallingHandler.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StallingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("POSTER_STREAM_TIMEOUT", "2")
    got: list[int] = []
    try:
        def read():
            reader = FrameReader(f"http://127.0.0.1:{server.server_address[1]}/clip.avi")
            got.extend(index for index, _ in reader)

        worker = threading.Thread(target=read, daemon=True)
        worker.start()
        worker.join(25)  # far beyond the 2 s timeout, far below the server's 30 s stall
        assert not worker.is_alive(), "the stalled stream blocked the reader"
    finally:
        _StallingHandler.release.set()
        server.shutdown()
        server.server_close()
    assert 0 < len(got) < 60 and got == list(range(len(got)))  # the frames that came, in order
