"""Priority lanes and deadlines (issue 29): the interactive lane first, the batch lane's
bound, queued work dropped uncomputed past its deadline or its caller, the lanes' headers."""

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from model_server.backends import Embeddings, HashingEmbedder
from model_server.batcher import Batcher
from model_server.errors import DeadlineExceeded, QueueFull
from model_server.lanes import PRIORITY_HEADER, TIMEOUT_HEADER, TOKENS_HEADER
from model_server.metrics import Metrics

from .conftest import AppClient, GatedEmbedder, hashing_settings, wait_until_healthy


@dataclass
class Recorder:
    """Records each forward pass's texts; the first pass is held until `release`."""

    inner: HashingEmbedder = field(default_factory=lambda: HashingEmbedder(16))
    passes: list[list[str]] = field(default_factory=list)
    computing: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def embed(self, texts: list[str]) -> Embeddings:
        self.passes.append(list(texts))
        self.computing.set()
        self.release.wait(timeout=10)
        return self.inner.embed(texts)

    def seen(self) -> list[str]:
        return [text for batch in self.passes for text in batch]


def _batcher(recorder: Recorder, metrics: Metrics | None = None, **options: int) -> Batcher:
    return Batcher(recorder.embed, max_batch_size=options.get("max_batch_size", 4),
                   max_wait_s=0.0, queue_limit=options.get("queue_limit", 256),
                   metrics=metrics or Metrics(),
                   batch_lane_every=options.get("batch_lane_every", 4),
                   interactive_reserve=options.get("interactive_reserve", 0))


@pytest.fixture
async def held() -> AsyncIterator[tuple[Recorder, Batcher, Metrics, asyncio.Task[Embeddings]]]:
    """A batcher computing a first batch that is held, so what comes next queues."""
    recorder, metrics = Recorder(), Metrics()
    batcher = _batcher(recorder, metrics, batch_lane_every=2)
    batcher.start()
    first = asyncio.create_task(batcher.embed(["first"]))
    assert await asyncio.to_thread(recorder.computing.wait, 5)
    yield recorder, batcher, metrics, first
    recorder.release.set()
    await batcher.close()


def _value(metrics: Metrics, name: str, lane: str) -> float:
    value = metrics.registry.get_sample_value(name, {"lane": lane})
    return value or 0.0


async def test_an_interactive_request_is_computed_before_batch_work_queued_earlier(
        held: tuple[Recorder, Batcher, Metrics, asyncio.Task[Embeddings]]) -> None:
    recorder, batcher, _, first = held
    bulk = [asyncio.create_task(batcher.embed([f"b{i}.{j}" for j in range(4)], "batch"))
            for i in range(3)]
    await asyncio.sleep(0)
    query = asyncio.create_task(batcher.embed(["query"], "interactive"))
    await asyncio.sleep(0.01)
    recorder.release.set()
    await asyncio.gather(first, query, *bulk)
    # The query first, then batch-lane inputs up to half a batch (mixed_batch_size): the
    # head request spans batches. The batch after a query's stays at half a batch (the
    # next query would wait for it), and once a batch held no query they are full again.
    assert recorder.passes[1] == ["query", "b0.0"]
    assert recorder.passes[2] == ["b0.1", "b0.2"]
    assert recorder.passes[3] == ["b0.3", "b1.0", "b1.1", "b1.2"]
    assert recorder.seen()[1:] == ["query"] + [f"b{i}.{j}" for i in range(3) for j in range(4)]
    reference = HashingEmbedder(16)
    for texts, task in zip(([f"b{i}.{j}" for j in range(4)] for i in range(3)), bulk,
                           strict=True):
        assert (task.result().vectors == reference.embed(texts).vectors).all()


async def test_the_batch_lane_gets_a_batch_within_its_bound_under_endless_queries(
        held: tuple[Recorder, Batcher, Metrics, asyncio.Task[Embeddings]]) -> None:
    recorder, batcher, _, first = held  # batch_lane_every=2
    bulk = asyncio.create_task(batcher.embed(["bulk"], "batch"))
    # Interactive work alone fills every batch: the case the bound is for.
    queries = [asyncio.create_task(batcher.embed([f"q{i}.{j}" for j in range(4)]))
               for i in range(6)]
    await asyncio.sleep(0.01)
    recorder.release.set()
    await asyncio.gather(first, bulk, *queries)
    batch_of = next(i for i, texts in enumerate(recorder.passes) if "bulk" in texts)
    # Pass 0 was `first` (it took no batch-lane work: none was queued yet), then two
    # interactive batches, then the batch lane is owed one: pass 3 at the latest.
    assert 1 <= batch_of <= 3, recorder.passes
    assert len(recorder.passes) == 1 + 6 + 1


async def test_past_its_deadline_queued_work_is_dropped_uncomputed_and_counted(
        held: tuple[Recorder, Batcher, Metrics, asyncio.Task[Embeddings]]) -> None:
    recorder, batcher, metrics, first = held
    with pytest.raises(DeadlineExceeded):
        await batcher.embed(["too late"], "batch", timeout_s=0.05)
    assert _value(metrics, "model_server_expired_total", "batch") == 1
    recorder.release.set()
    await first
    await batcher.embed(["after"])
    assert "too late" not in recorder.seen()
    assert "after" in recorder.seen()


async def test_a_caller_that_goes_away_takes_its_queued_work_with_it(
        held: tuple[Recorder, Batcher, Metrics, asyncio.Task[Embeddings]]) -> None:
    recorder, batcher, metrics, first = held
    gone = asyncio.create_task(batcher.embed(["nobody waits"], "interactive"))
    await asyncio.sleep(0.01)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert _value(metrics, "model_server_abandoned_total", "interactive") == 1
    recorder.release.set()
    await first
    await batcher.embed(["after"])
    assert "nobody waits" not in recorder.seen()


async def test_the_batch_lane_cannot_fill_the_interactive_reserve() -> None:
    recorder = Recorder()
    recorder.release.set()
    batcher = _batcher(recorder, queue_limit=16, interactive_reserve=8)
    # Not started: everything stays queued.
    tasks = [asyncio.create_task(batcher.embed(["b"] * 4, "batch")) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await batcher.embed(["b"] * 4, "batch")
    assert refused.value.detail["lane"] == "batch"
    queries = [asyncio.create_task(batcher.embed(["q"] * 4)) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(QueueFull):
        await batcher.embed(["q"])
    batcher.start()
    await asyncio.gather(*tasks, *queries)
    await batcher.close()


# ---- over HTTP ----

async def test_headers_choose_the_lane_and_a_passed_deadline_is_504_with_the_error_body(
        make_client: object) -> None:
    embedder = GatedEmbedder(dimension=16)

    async def load(_: object) -> GatedEmbedder:
        return embedder

    client: AppClient = await make_client(  # type: ignore[operator]
        hashing_settings(max_batch_wait_ms=0), load)
    await wait_until_healthy(client)
    answer = await client.post("/embed", json={"inputs": ["a b c"]},
                               headers={PRIORITY_HEADER: "batch", TIMEOUT_HEADER: "5"})
    assert answer.status == 200
    assert int(answer.headers[TOKENS_HEADER]) > 0
    for header, value in ((PRIORITY_HEADER, "urgent"), (TIMEOUT_HEADER, "0"),
                          (TIMEOUT_HEADER, "soon")):
        refused = await client.post("/embed", json={"inputs": "x"}, headers={header: value})
        assert refused.status == 422
        assert header in (await refused.json())["message"]
    embedder.hold = True
    busy = asyncio.create_task(client.post("/embed", json={"inputs": "busy"}))
    assert await asyncio.to_thread(embedder.computing.wait, 5)
    late = await client.post("/v1/embeddings", json={"input": "late"},
                             headers={TIMEOUT_HEADER: "0.05", PRIORITY_HEADER: "batch"})
    assert late.status == 504
    body = await late.json()
    assert body["status_code"] == 504 and body["code"] == 504
    assert "X-Request-Timeout" in body["message"]
    embedder.release.set()
    assert (await busy).status == 200
    metrics = await (await client.get("/metrics")).text()
    assert 'model_server_expired_total{lane="batch"} 1.0' in metrics
    assert 'model_server_lane_inputs_total{lane="batch"} 1.0' in metrics
