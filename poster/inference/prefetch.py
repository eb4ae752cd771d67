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


class Prefetched(Iterator[Any]):
    """The values of ``items``, produced ahead in a daemon thread and handed over through a
    bounded queue (the thread starts at the first ``next``).  ``backlog()``: values produced and
    not yet taken, so a consumer can tell whether the next one would make it wait."""

    def __init__(self, items: Iterator[Any], maxsize: int) -> None:
        self._items = items
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, maxsize))
        self._stop = threading.Event()
        self._values = self._consume()

    def __next__(self) -> Any:
        return next(self._values)

    def backlog(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        self._values.close()

    def _put(self, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            for value in self._items:
                if not self._put(value):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(_Raised(exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # pragma: no cover - best effort
                    pass

    def _consume(self) -> Iterator[Any]:
        thread = threading.Thread(target=self._work, name="poster-predict-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                value = self._queue.get()
                if value is _DONE:
                    return
                if isinstance(value, _Raised):
                    raise value.exc
                yield value
        finally:
            self._stop.set()
            while True:  # unblock the producer
                try:
                    self._queue.get_nowait()
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
