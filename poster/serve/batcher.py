"""Dynamic micro-batching: the faces of concurrent requests share one model call.

Each request submits its face tensors and awaits their probabilities.  One collector task takes
the first waiting face, then keeps collecting up to ``max_batch`` faces -- for at most ``max_wait``
seconds, and only while more faces are expected: other admitted requests are still being
uploaded/decoded/detected (``busy()``), or the batch is still smaller than the previous one (the
clients answered by the previous batch are about to send their next images; without this, N
clients split into two groups whose batches alternate, e.g. 1 and N-1) -- and runs the model on
them in a dedicated thread.  While the model runs, new faces queue up, so under load the batches
fill without waiting; a lone request is not delayed at all.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np
import torch


class MicroBatcher:
    """``await batcher.submit(tensors)`` -> one probability row per tensor, computed in shared batches.

    ``run_batch``: stacked tensors [B, ...] -> probabilities [B, C] (runs in the model thread).
    ``busy``: True while admitted requests may still submit faces (they are being read or prepared).
    ``on_batch(size, seconds)``: called after every model call (metrics).
    """

    def __init__(self, run_batch: Callable[[torch.Tensor], np.ndarray], max_batch: int = 16,
                 max_wait: float = 0.01, busy: Callable[[], bool] = lambda: False,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.run_batch = run_batch
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self.busy = busy
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="poster-model")
        self._previous_size = 1

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._collect_forever(), name="poster-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def submit(self, tensors: list[torch.Tensor]) -> list[np.ndarray]:
        if not tensors:
            return []
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in tensors]
        for tensor, future in zip(tensors, futures):
            self._queue.put_nowait((tensor, future))
        return list(await asyncio.gather(*futures))

    async def _next_batch(self) -> list[tuple[torch.Tensor, asyncio.Future]]:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not (self.busy() or len(batch) < self._previous_size):
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), timeout=min(left, 0.002)))
            except asyncio.TimeoutError:
                continue  # re-check busy() and the deadline
        self._previous_size = len(batch)
        return [(t, f) for t, f in batch if not f.done()]  # a cancelled request's faces are dropped

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            started = time.perf_counter()
            try:
                probs = await loop.run_in_executor(self._executor, self.run_batch,
                                                   torch.stack([t for t, _ in batch]))
            except Exception as exc:  # the model failed: every waiting request gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch), time.perf_counter() - started)
            for (_, future), row in zip(batch, probs):
                if not future.done():
                    future.set_result(row)
