"""Work done ahead in a background thread: decoding and detection overlap the model's batches."""

from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator

_DONE = object()


class _Raised:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def prefetched(items: Iterator[Any], maxsize: int) -> Iterator[Any]:
    """Run ``items`` in a daemon thread, handing its values over through a bounded queue."""
    q: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
    stop = threading.Event()

    def put(value: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for value in items:
                if not put(value):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            put(_Raised(exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # pragma: no cover - best effort
                    pass

    thread = threading.Thread(target=work, name="poster-predict-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            value = q.get()
            if value is _DONE:
                return
            if isinstance(value, _Raised):
                raise value.exc
            yield value
    finally:
        stop.set()
        while True:  # unblock the producer
            try:
                q.get_nowait()
            except queue.Empty:
                break
        thread.join(timeout=5.0)


def ordered_map(fn: Callable[[Any], Any], items: Iterable[Any], workers: int, ahead: int | None = None) -> Iterator[Any]:
    """``fn(item)`` for each item on ``workers`` threads, yielded in the items' order, with at most
    ``ahead`` (default ``2 * workers``) calls started and not yet handed over: memory stays bounded
    for any number of items.  ``workers <= 1``: plain ``map``, in the calling thread.  An exception
    of ``fn`` is raised where its result would have been yielded; closing the iterator early waits
    for the calls already running and starts no more."""
    if workers <= 1:
        yield from map(fn, items)
        return
    ahead = max(1, ahead if ahead is not None else 2 * workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="poster-prepare")
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
