"""The micro-batcher alone (no server, no model): batching, no delay for a lone request, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch

from poster.serve.batcher import MicroBatcher


class FakeModel:
    """Probabilities = the first value of each input, in a row of 2; records the batch sizes it saw."""

    def __init__(self, seconds: float = 0.02, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.seconds = seconds
        self.fail = fail
        self.threads: set[str] = set()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        self.sizes.append(batch.shape[0])
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model exploded")
        v = batch[:, 0].numpy().astype(np.float64)
        return np.stack([v, 1 - v], axis=1)


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_faces_share_batches_and_get_their_own_rows():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=8, max_wait=0.05)
        await batcher.start()
        try:
            requests = [[torch.full((1,), float(i)), torch.full((1,), i + 0.5)] for i in range(10)]
            return await asyncio.gather(*(batcher.submit(r) for r in requests))
        finally:
            await batcher.stop()

    answers = _run(main())
    for i, rows in enumerate(answers):
        assert [row[0] for row in rows] == [float(i), i + 0.5]
    assert sum(model.sizes) == 20 and max(model.sizes) == 8 and len(model.sizes) <= 4
    assert all(name.startswith("poster-model") for name in model.threads)


def test_a_lone_request_is_not_held_back():
    model = FakeModel(seconds=0.0)

    async def main():
        batcher = MicroBatcher(model, max_batch=16, max_wait=2.0)  # a wait that would show
        await batcher.start()
        try:
            started = time.perf_counter()
            await batcher.submit([torch.zeros(1)])
            return time.perf_counter() - started
        finally:
            await batcher.stop()

    assert _run(main()) < 1.0 and model.sizes == [1]


def test_waits_for_faces_on_their_way_but_not_past_max_wait():
    model = FakeModel(seconds=0.0)

    async def main():
        on_the_way = {"n": 1}
        batcher = MicroBatcher(model, max_batch=16, max_wait=0.3, busy=lambda: on_the_way["n"] > 0)
        await batcher.start()
        try:
            async def late():
                await asyncio.sleep(0.05)
                on_the_way["n"] = 0
                return await batcher.submit([torch.ones(1)])

            first = asyncio.create_task(batcher.submit([torch.zeros(1)]))
            await asyncio.gather(first, late())
        finally:
            await batcher.stop()

    _run(main())
    assert model.sizes == [2]


def test_a_failing_model_fails_its_requests_and_the_batcher_goes_on():
    model = FakeModel(fail=True)

    async def main():
        batcher = MicroBatcher(model, max_batch=4, max_wait=0.01)
        await batcher.start()
        try:
            with pytest.raises(RuntimeError, match="exploded"):
                await batcher.submit([torch.zeros(1)])
            model.fail = False
            return await batcher.submit([torch.full((1,), 0.25)])
        finally:
            await batcher.stop()

    assert _run(main())[0][0] == 0.25


def test_nothing_to_do_for_an_image_without_faces():
    model = FakeModel()

    async def main():
        batcher = MicroBatcher(model, max_batch=4)
        await batcher.start()
        try:
            return await batcher.submit([])
        finally:
            await batcher.stop()

    assert _run(main()) == [] and model.sizes == []
