"""Work done ahead in a background thread: decoding and detection overlap the model's batches."""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator

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
