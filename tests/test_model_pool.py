"""Model batches run side by side (``poster.inference.model_pool``, ``Recognizer.model_workers``).

The thread counts are set here explicitly (2 or 4 intra-op threads), so the tests mean the same
on any machine: OpenMP runs more threads than cores when asked to.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

import poster
from poster.errors import PosterError
from poster.inference import model_pool
from poster.inference.model_pool import open_model_pool
from poster.inference.recognizer import Recognizer


@pytest.fixture
def torch_threads():
    """Set the calling thread's intra-op count for one test, restored afterwards."""
    before = torch.get_num_threads()

    def set_to(n: int) -> None:
        torch.set_num_threads(n)
        assert torch.get_num_threads() == n

    yield set_to
    torch.set_num_threads(before)


def _count_seen_by_a_new_thread() -> int:
    seen: list[int] = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def _model_threads_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("poster-model")]


@pytest.mark.parametrize("threads, each", [(2, 1), (4, 2)])
def test_workers_get_their_share_and_the_callers_count_is_kept(torch_threads, threads, each):
    torch_threads(threads)
    pool = open_model_pool(2)
    assert pool is not None
    try:
        assert pool.workers == 2 and pool.worker_threads == [each, each]
        seen = [pool.submit(torch.get_num_threads).result() for _ in range(8)]
        assert seen == [each] * 8
        assert torch.get_num_threads() == threads  # the calling thread
        assert _count_seen_by_a_new_thread() == threads  # the default for threads started later
    finally:
        pool.close()
    assert torch.get_num_threads() == threads and not _model_threads_alive()


def test_no_pool_for_one_worker_or_where_counts_are_not_per_thread(torch_threads, monkeypatch):
    torch_threads(2)
    assert open_model_pool(1) is None
    # a runtime whose count is not per thread: the workers would not get their share
    monkeypatch.setattr(model_pool.torch, "set_num_threads", lambda n: None)
    assert open_model_pool(2) is None
    monkeypatch.undo()
    assert torch.get_num_threads() == 2 and _count_seen_by_a_new_thread() == 2
    assert not _model_threads_alive()


# ---------------------------------------------------------------------------------------------
# Recognizer

META = poster.ModelMeta(arch="poster_v1_tiny", num_classes=3, class_names=["a", "b", "c"])


def _grey_images(n: int) -> list[np.ndarray]:
    return [np.full((16, 16), 8 * i + 3, np.uint8) for i in range(n)]


class _Backend:
    """Logits from each face's mean pixel; the first two calls must overlap (they wait for each
    other), and the first one ends last, so batches finish out of order."""

    def __init__(self, must_overlap: bool, nan_at_call: int | None = None) -> None:
        self.calls = 0
        self.lock = threading.Lock()
        self.meeting = threading.Barrier(2, timeout=10) if must_overlap else None
        self.nan_at_call = nan_at_call

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with self.lock:
            self.calls += 1
            call = self.calls
        if self.meeting is not None and call <= 2:
            self.meeting.wait()  # raises BrokenBarrierError when the two never run at once
            if call == 1:
                time.sleep(0.05)
        m = batch.mean(dim=(1, 2, 3))
        logits = torch.stack([m, 2 * m, -m], dim=1)
        if call == self.nan_at_call:
            logits[0, 0] = float("nan")
        return logits


def _probabilities(results) -> list[list[float]]:
    return [[f.probabilities[c] for c in META.class_names] for r in results for f in r.faces]


def test_two_workers_run_batches_at_once_and_keep_the_order():
    images = _grey_images(11)
    serial = list(Recognizer(_Backend(must_overlap=False), META, detector="none", batch_size=2,
                             model_workers=1).predict_many(images))
    backend = _Backend(must_overlap=True)
    rec = Recognizer(backend, META, detector="none", batch_size=2, model_workers=2)
    assert rec.resolved_model_workers() == 2
    parallel = list(rec.predict_many(images))
    assert backend.calls == 6  # 11 faces in batches of 2
    assert [r.source for r in parallel] == [r.source for r in serial] == [f"<array #{i}>" for i in range(11)]
    # the same batches; a worker's means may be summed on fewer threads (another order: ~1e-8)
    np.testing.assert_allclose(_probabilities(parallel), _probabilities(serial), atol=1e-6)
    assert not _model_threads_alive()



@pytest.mark.parametrize("prefetch", [True, False], ids=["prefetched", "in this thread"])
def test_a_live_frame_comes_out_when_done_not_when_the_next_one_arrives(torch_threads, prefetch):
    """A webcam gives a frame every ~33 ms: with two workers each frame's result still comes out as
    soon as its batch is done, while the next frame is awaited (no frame of extra latency)."""
    torch_threads(2)
    events: list[str] = []

    def camera():
        for k, image in enumerate(_grey_images(4)):
            if k:
                time.sleep(0.3)  # much longer than a batch of the test backend takes
            events.append(f"frame {k}")
            yield k, np.repeat(image[:, :, None], 3, axis=2)

    rec = Recognizer(_Backend(must_overlap=False), META, detector="none", batch_size=2, model_workers=2,
                     prefetch=prefetch)
    assert rec.resolved_model_workers() == 2
    for result in rec.predict_frames("<camera>", camera(), live=True):
        events.append(f"result {result.frame}")
    assert events == [f"{kind} {k}" for k in range(4) for kind in ("frame", "result")]
    assert not _model_threads_alive()


def test_a_batch_failing_in_a_worker_is_raised_to_the_caller_and_the_workers_stop():
    rec = Recognizer(_Backend(must_overlap=False, nan_at_call=3), META, detector="none", batch_size=2,
                     model_workers=2)
    with pytest.raises(PosterError, match="NaN or infinite"):
        list(rec.predict_many(_grey_images(12)))
    assert not _model_threads_alive()


def test_model_workers_default_and_bounds(torch_threads):
    with pytest.raises(ValueError, match="model_workers must be >= 1"):
        Recognizer(_Backend(False), META, detector="none", model_workers=0)
    assert Recognizer(_Backend(False), META, detector="none").resolved_model_workers() == 1  # a given backend
    rec = Recognizer.open(None, detector="none")  # the bundled model on the PyTorch fast path
    torch_threads(2)
    assert rec.resolved_model_workers() == 2
    torch_threads(1)
    assert rec.resolved_model_workers() == 1
    rec.model_workers = 3
    assert rec.resolved_model_workers() == 3
    eager = Recognizer.from_checkpoint(None, detector="none")  # the model as written: one at a time
    torch_threads(2)
    assert eager.resolved_model_workers() == 1


@pytest.mark.parametrize("traced", [False, True], ids=["fast path", "traced graph"])
def test_bundled_model_on_a_video_gives_the_same_results_with_two_workers(torch_threads, tmp_path, traced):
    from poster.benchmark.video import make_face_video

    torch_threads(2)
    clip = make_face_video(tmp_path / "clip.avi", frames=20, size=(320, 240))
    rec = Recognizer.open(None)
    if traced:
        assert rec.prepare_for_frames(None)
    runs = {}
    for workers in (1, 2):
        rec.model_workers = workers
        runs[workers] = list(rec.predict_video(clip.path))
    assert [r.frame for r in runs[2]] == [r.frame for r in runs[1]] == list(range(20))
    assert [len(r.faces) for r in runs[2]] == [len(r.faces) for r in runs[1]] == [1] * 20
    one = [[f.probabilities[c] for c in rec.class_names] for r in runs[1] for f in r.faces]
    two = [[f.probabilities[c] for c in rec.class_names] for r in runs[2] for f in r.faces]
    np.testing.assert_allclose(two, one, atol=1e-5)  # one thread vs two: only the sums' order differs
    assert torch.get_num_threads() == 2 and not _model_threads_alive()


def test_cli_model_workers_reach_the_recognizer_and_change_no_result(torch_threads, tmp_path, monkeypatch, capsys):
    import json

    from poster.benchmark.video import make_face_video
    from poster.cli import main

    torch_threads(2)
    clip = make_face_video(tmp_path / "clip.avi", frames=12, size=(320, 240))
    seen: list[int] = []
    resolved = Recognizer.resolved_model_workers

    def spy(self: Recognizer) -> int:
        seen.append(resolved(self))
        return seen[-1]

    monkeypatch.setattr(Recognizer, "resolved_model_workers", spy)
    probs = {}
    for workers in ("1", "2"):
        out = tmp_path / f"w{workers}"
        assert main(["predict", str(clip.path), "-o", str(out), "--no-annotate", "-q",
                     "--model-workers", workers]) == 0, capsys.readouterr()
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        probs[workers] = [list(r["probabilities"].values()) for r in rows]  # one row per face
        assert seen[-1] == int(workers)
    assert len(probs["1"]) == 12
    np.testing.assert_allclose(probs["2"], probs["1"], atol=1e-5)
