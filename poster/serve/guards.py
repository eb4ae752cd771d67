"""What bounds ``poster serve`` against its clients beyond the per-image limits: the bytes of request
bodies held at once, the time a client may take to send a request, and memory given back after a burst.

* ``ByteBudget``: the request bodies in memory at once, across all requests (``--max-inflight-mb``);
  a request is charged what its ``Content-Length`` announces before a byte of it is read, and what
  a streamed body brings as it arrives.
* ``client_timeout_protocol``: uvicorn's HTTP/1.1 protocol with a deadline for the request head
  (uvicorn itself waits for a head for ever, so a silent or trickling client holds its connection
  as long as it likes); the body's deadline is ``BodyLimit``'s in ``poster.serve.app``.
* ``return_free_memory``: glibc keeps the heap of a burst of large uploads and decoded images;
  ``malloc_trim`` hands the free pages back once the server is idle again.
"""

from __future__ import annotations

import ctypes
import ctypes.util

from uvicorn.protocols.http.h11_impl import H11Protocol


class ByteBudget:
    """Bytes of request bodies held at once; ``limit`` is the most unless one request alone is larger
    (a request is always taken when nothing else is in flight, so no configuration can refuse all)."""

    def __init__(self, limit: int) -> None:
        self.limit = int(limit)
        self.used = 0

    def take(self, count: int) -> bool:
        if count and self.used and self.used + count > self.limit:
            return False
        self.used += count
        return True

    def give(self, count: int) -> None:
        self.used -= count


def client_timeout_protocol(seconds: float) -> type:
    """An ``H11Protocol`` that closes a connection when no request has started within ``seconds`` of
    it opening or of its previous answer (a silent client, or one sending its head a byte at a time)."""

    class ClientTimeoutH11(H11Protocol):
        _head_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(seconds, self._head_overdue)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_overdue(self) -> None:
            self._head_timer = None
            # a request in progress (head complete) is the app's to time out, by its body deadline
            if (self.cycle is None or self.cycle.response_complete) and not self.transport.is_closing():
                self.transport.close()

    return ClientTimeoutH11


def _libc_malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None


_MALLOC_TRIM = _libc_malloc_trim()


def return_free_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc); False where there is no such call."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True
