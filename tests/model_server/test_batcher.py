"""The dynamic batcher: ordering, batching, pipelining, back-pressure, close."""

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from model_server.backends import Embeddings, HashingEmbedder
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


class SlowEmbedder(HashingEmbedder):
    """A hashing embedder that takes ``seconds`` per batch, like a model, and records sizes."""

    def __init__(self, seconds: float) -> None:
        super().__init__(dimension=32)
        self.seconds = seconds
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> Embeddings:
        self.calls.append(len(texts))
        time.sleep(self.seconds)
        return super().embed(texts)


async def _closed_loop(batcher: Batcher, clients: int, requests: int) -> None:
    """``clients`` that each send their next request a little after their answer: client
    ``i`` after ``i`` half-milliseconds, as answers written one by one over HTTP arrive."""

    async def client(index: int) -> None:
        for n in range(requests):
            await batcher.embed([f"client {index} request {n}"])
            await asyncio.sleep(index * 0.0005)

    await asyncio.gather(*(client(i) for i in range(clients)))


@pytest.mark.parametrize(("max_wait_s", "whole"), [(0.05, True), (0.0, False)])
async def test_a_closed_loop_of_clients_gets_whole_batches_with_a_wait(
    max_wait_s: float, whole: bool
) -> None:
    """With a wait, 16 clients form batches of 16; without one they split into smaller
    alternating batches (the first client back starts a batch alone). The second case
    shows the first measures the wait, not the test's timing."""
    embedder = SlowEmbedder(seconds=0.02)
    batcher = _batcher(embedder, max_batch_size=16, max_wait_s=max_wait_s)
    batcher.start()
    try:
        await _closed_loop(batcher, clients=16, requests=6)
    finally:
        await batcher.close()
    steady = embedder.calls[1:-1]  # the first batch forms before demand is known
    mean = sum(steady) / len(steady)
    if whole:
        assert mean >= 15, embedder.calls
    else:
        assert mean <= 12, embedder.calls


@pytest.mark.serial  # an upper bound on 5 requests' time (0.25 s)
async def test_a_lone_client_never_waits_and_an_idle_spell_forgets_earlier_demand() -> None:
    embedder = SlowEmbedder(seconds=0.0)
    batcher = _batcher(embedder, max_batch_size=16, max_wait_s=0.5)
    batcher.start()
    try:
        await asyncio.gather(*(batcher.embed([f"burst {i}"]) for i in range(8)))
        await asyncio.sleep(0.6)  # longer than the wait: the burst's demand is stale
        started = time.monotonic()
        for n in range(5):
            await batcher.embed([f"alone {n}"])
        elapsed = time.monotonic() - started
    finally:
        await batcher.close()
    assert elapsed < 0.25, f"5 lone requests took {elapsed:.3f} s; the wait is 0.5 s"
    assert embedder.calls[-5:] == [1, 1, 1, 1, 1]
