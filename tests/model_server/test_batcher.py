"""The dynamic batcher: ordering, batching, pipelining, back-pressure, close."""

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest

from model_server.backends import HashingEmbedder
from model_server.batcher import Batcher
from model_server.errors import QueueFull, ShuttingDown
from model_server.metrics import Metrics

from .conftest import GatedEmbedder


def _batcher(embedder: HashingEmbedder, **overrides: float) -> Batcher:
    options = {"max_batch_size": 8, "max_wait_s": 0.002, "queue_limit": 64} | overrides
    return Batcher(
        embedder.embed,
        max_batch_size=int(options["max_batch_size"]),
        max_wait_s=options["max_wait_s"],
        queue_limit=int(options["queue_limit"]),
        metrics=Metrics(),
    )


@pytest.fixture
async def gated() -> AsyncIterator[tuple[GatedEmbedder, Batcher]]:
    embedder = GatedEmbedder(dimension=32)
    batcher = _batcher(embedder)
    batcher.start()
    yield embedder, batcher
    embedder.release.set()
    await batcher.close()


async def _wait_until_computing(embedder: GatedEmbedder) -> None:
    assert await asyncio.to_thread(embedder.computing.wait, 5)


async def test_each_request_gets_its_own_vectors_in_order() -> None:
    embedder = GatedEmbedder(dimension=32)
    batcher = _batcher(embedder, queue_limit=1000)
    batcher.start()
    requests = [[f"request {r} input {i}" for i in range(1 + r % 5)] for r in range(40)]
    try:
        results = await asyncio.gather(*(batcher.embed(texts) for texts in requests))
    finally:
        await batcher.close()
    reference = HashingEmbedder(dimension=32)
    for texts, result in zip(requests, results, strict=True):
        assert np.array_equal(result.vectors, reference.embed(texts).vectors)
    assert max(embedder.calls) > 1, "concurrent requests were never batched"
    assert max(embedder.calls) <= 8


async def test_a_request_larger_than_a_batch_is_computed_in_chunks() -> None:
    embedder = GatedEmbedder(dimension=32)
    batcher = _batcher(embedder)
    batcher.start()
    texts = [f"input {i}" for i in range(20)]
    try:
        result = await batcher.embed(texts)
    finally:
        await batcher.close()
    assert embedder.calls == [8, 8, 4]
    assert np.array_equal(result.vectors, HashingEmbedder(32).embed(texts).vectors)


async def test_inputs_arriving_during_a_compute_form_the_next_batch(
    gated: tuple[GatedEmbedder, Batcher],
) -> None:
    embedder, batcher = gated
    embedder.hold = True
    first = asyncio.create_task(batcher.embed(["first"]))
    await _wait_until_computing(embedder)
    embedder.hold = False
    rest = [asyncio.create_task(batcher.embed([f"next {i}"])) for i in range(5)]
    await asyncio.sleep(0.02)  # far past max_wait: the batch is ready, the thread is not
    embedder.release.set()
    await asyncio.gather(first, *rest)
    assert embedder.calls == [1, 5]


async def test_queue_full_is_refused_while_queued_inputs_exceed_the_limit() -> None:
    embedder = GatedEmbedder(dimension=32)
    batcher = _batcher(embedder, max_batch_size=1, queue_limit=3)
    batcher.start()
    embedder.hold = True
    try:
        computing = asyncio.create_task(batcher.embed(["in compute"]))
        await _wait_until_computing(embedder)
        queued = [asyncio.create_task(batcher.embed([f"queued {i}"])) for i in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.embed(["one too many"])
        embedder.release.set()
        await asyncio.gather(computing, *queued)
    finally:
        embedder.release.set()
        await batcher.close()


async def test_close_fails_queued_requests_and_refuses_new_ones(
    gated: tuple[GatedEmbedder, Batcher],
) -> None:
    embedder, batcher = gated
    embedder.hold = True
    computing = asyncio.create_task(batcher.embed(["in compute"]))
    await _wait_until_computing(embedder)
    queued = asyncio.create_task(batcher.embed(["queued"]))
    await asyncio.sleep(0)
    embedder.release.set()
    await batcher.close()
    for task in (computing, queued):
        with pytest.raises(ShuttingDown):
            await task
    with pytest.raises(ShuttingDown):
        await batcher.embed(["after close"])
