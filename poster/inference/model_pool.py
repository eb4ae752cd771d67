"""Model batches run side by side on a CPU, each worker on its own share of the cores.

On 2 cores one model batch on 2 OpenMP threads spends part of its time with one thread waiting
for the other at each op's end, and shares those cores with the thread that decodes and detects
faces.  Two batches at once on one thread each keep both cores busy on useful work: the
benchmark video ran at 25.0 frames/s against 21.3 on a 2-core AVX2 machine (fp32), and at 108
against 85 on a 2-core AVX512-BF16 one (bf16; docs/benchmarks.md).

How the per-worker thread count is set: ``torch.set_num_threads`` sets the OpenMP/MKL thread count
of the *calling* thread (libgomp keeps it per thread) and also the default that threads started
later pick up.  Each worker sets its own count when it starts; once all have, the calling thread
sets its own count again, which restores that default.  The calling thread's count is never
changed.  Where a runtime does not keep the count per thread (checked after the start), the pool
is not used and batches run in the calling thread as before.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import torch

__all__ = ["ModelPool", "open_model_pool"]

_START_TIMEOUT_S = 10.0


class ModelPool:
    """``workers`` threads, each running model batches on ``threads_each`` intra-op threads.

    ``submit(fn, *args)`` returns a ``Future``; ``close()`` waits for the running calls and cancels
    the queued ones.  Use :func:`open_model_pool`, which returns None where a pool cannot help or
    cannot keep the calling thread's count."""

    def __init__(self, workers: int, threads_each: int) -> None:
        if workers < 2:
            raise ValueError(f"a model pool needs at least 2 workers, got {workers}")
        self.workers = int(workers)
        self.threads_each = max(1, int(threads_each))
        self.worker_threads: list[int] = []  # torch.get_num_threads() seen by each worker after its start
        caller_threads = torch.get_num_threads()
        started = threading.Barrier(self.workers + 1, timeout=_START_TIMEOUT_S)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="poster-model",
                                        initializer=self._start_worker, initargs=(started,))
        try:
            # An executor starts a new thread for each submission while none is idle: the workers
            # all start here and wait for each other, so each one's count is set before any batch.
            for _ in range(self.workers):
                self._pool.submit(_nothing)
            started.wait()
        except BaseException:
            started.abort()  # workers still waiting give up instead of timing out
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            torch.set_num_threads(caller_threads)  # the default for threads started from now on
        self.caller_threads = torch.get_num_threads()

    def _start_worker(self, started: threading.Barrier) -> None:
        torch.set_num_threads(self.threads_each)
        self.worker_threads.append(torch.get_num_threads())
        started.wait()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _nothing() -> None:
    return None


def open_model_pool(workers: int) -> ModelPool | None:
    """A :class:`ModelPool` of ``workers`` threads sharing the calling thread's intra-op threads
    (``torch.get_num_threads() // workers`` each, at least 1), or None when ``workers < 2`` or the
    per-thread counts did not hold (the calling thread's count changed, a worker did not get its
    share)."""
    if workers < 2:
        return None
    before = torch.get_num_threads()
    try:
        pool = ModelPool(workers, max(1, before // workers))
    except Exception:  # noqa: BLE001 - a pool that cannot start leaves the batches in this thread
        torch.set_num_threads(before)
        return None
    if pool.caller_threads != before or pool.worker_threads != [pool.threads_each] * workers:
        pool.close()
        torch.set_num_threads(before)
        return None
    return pool
