"""Dynamic batching: concurrent requests share forward passes on one compute thread."""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

from model_server.backends import Embeddings
from model_server.errors import QueueFull, ShuttingDown
from model_server.metrics import Metrics

EmbedFn = Callable[[list[str]], Embeddings]
LengthsFn = Callable[[list[str]], list[int]]
T = TypeVar("T")


@dataclass
class _Job:
    texts: list[str]
    future: asyncio.Future[Embeddings]
    enqueued_at: float = field(default_factory=time.monotonic)


class Batcher:
    """Gathers queued inputs into batches and computes them one at a time off the loop.

    A batch is taken only when the compute thread is free, so inputs arriving while a
    batch computes are gathered into the next one. It is taken at once when the queue
    holds as many inputs as recent demand promises (the most inputs in the server at
    once since the last batch was taken, at most ``max_batch_size``), otherwise after
    waiting up to ``max_wait_s`` for the rest.

    Why the demand target: with N clients in a closed loop, taking whatever is queued
    the moment the thread frees up settles into two alternating half batches (the first
    answer's client returns before the others), and a half batch costs the model more
    per input. Waiting for the clients just answered restores whole batches; one lone
    client never waits, and demand seen only before an idle spell is forgotten.
    """

    def __init__(
        self,
        embed: EmbedFn,
        *,
        max_batch_size: int,
        max_wait_s: float,
        queue_limit: int,
        metrics: Metrics,
        max_batch_tokens: int | None = None,
        lengths: LengthsFn | None = None,
    ) -> None:
        self._embed = embed
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._lengths = lengths
        self._max_wait_s = max_wait_s
        self._queue_limit = queue_limit
        self._metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._alone = 0  # inputs of passes outside the batches (run_alone), waiting or running
        self._computing = 0  # inputs in the batch on the compute thread
        self._demand = 0  # the most inputs in the server at once since the last take
        self._target = max_batch_size  # queued inputs that end the wait for a batch
        self._free_since = time.monotonic()  # when the compute thread last became free
        self._has_work = asyncio.Event()
        self._filled = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        metrics.queue_depth.set_function(lambda: self._queued)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def close(self) -> None:
        """Refuse new work, stop the loop, fail what is still queued, free the thread."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        _fail(list(self._jobs), ShuttingDown("the server is shutting down"))
        self._jobs.clear()
        self._set_queued(0)
        await asyncio.to_thread(self._executor.shutdown)

    async def embed(self, texts: list[str]) -> Embeddings:
        """Queue ``texts`` and wait for their embeddings, in order."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        self._admit(len(texts))
        job = _Job(texts, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._set_queued(self._queued + len(texts))
        self._demand = max(self._demand, self._queued + self._computing)
        return await job.future

    def _admit(self, count: int) -> None:
        """QueueFull (429) if `count` more inputs would pass queue_limit."""
        if self._queued + self._alone + count > self._queue_limit:
            raise QueueFull(
                "too many inputs queued; retry later",
                {"queued": self._queued + self._alone, "queue_limit": self._queue_limit},
            )

    async def run_alone(self, count: int, compute: Callable[[], T]) -> T:
        """A pass outside the batches (TEI's /embed_all) on the same compute thread, so it
        waits its turn, admitted against the same queue_limit (`count` inputs)."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        self._admit(count)
        self._alone += count
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, compute)
        finally:
            self._alone -= count

    def _set_queued(self, queued: int) -> None:
        self._queued = queued
        if queued:
            self._has_work.set()
        else:
            self._has_work.clear()
        if queued >= self._target:
            self._filled.set()
        else:
            self._filled.clear()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._has_work.wait()
            await self._wait_to_fill()
            jobs = self._take()
            if jobs:
                await self._compute(loop, jobs)

    async def _wait_to_fill(self) -> None:
        """Wait until the demand target is queued or ``max_wait_s`` has passed since the
        compute thread became free (or the oldest input arrived, if later)."""
        oldest = self._jobs[0].enqueued_at
        if oldest - self._free_since > self._max_wait_s:
            self._demand = self._queued  # the thread sat idle: earlier demand is stale
        self._target = max(1, min(self._max_batch_size, self._demand))
        self._set_queued(self._queued)
        remaining = max(oldest, self._free_since) + self._max_wait_s - time.monotonic()
        if remaining > 0 and not self._filled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._filled.wait(), remaining)

    def _take(self) -> list[_Job]:
        """Pop jobs for one batch: whole requests, up to ``max_batch_size`` inputs."""
        jobs: list[_Job] = []
        size = 0
        while self._jobs:
            job = self._jobs[0]
            if jobs and size + len(job.texts) > self._max_batch_size:
                break
            self._jobs.popleft()
            if not job.future.done():  # a cancelled request needs no compute
                jobs.append(job)
                size += len(job.texts)
        self._computing = size
        self._set_queued(sum(len(job.texts) for job in self._jobs))
        self._demand = self._queued + self._computing
        return jobs

    async def _compute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        texts = [text for job in jobs for text in job.texts]
        self._metrics.batch_size.observe(len(texts))
        started = time.perf_counter()
        try:
            result = await loop.run_in_executor(self._executor, self._embed_chunked, texts)
        except asyncio.CancelledError:
            _fail(jobs, ShuttingDown("the server is shutting down"))
            raise
        except Exception as exc:
            _fail(jobs, exc)
            return
        finally:
            self._computing = 0
            self._free_since = time.monotonic()
            self._metrics.batch_seconds.observe(time.perf_counter() - started)
        self._metrics.embeddings.inc(len(texts))
        _deliver(jobs, result)

    def _embed_chunked(self, texts: list[str]) -> Embeddings:
        """Runs on the compute thread; one request may exceed a batch, so chunk it."""
        if self._max_batch_tokens is None or self._lengths is None or len(texts) == 1:
            size = self._max_batch_size
            return Embeddings.concat(
                [self._embed(texts[i : i + size]) for i in range(0, len(texts), size)]
            ).normalized()
        order, chunks = plan_chunks(self._lengths(texts), self._max_batch_size,
                                    self._max_batch_tokens)
        parts = [self._embed([texts[i] for i in chunk]) for chunk in chunks]
        return Embeddings.concat(parts).reordered(order).normalized()


def plan_chunks(
    lengths: list[int], max_size: int, max_tokens: int
) -> tuple[list[int], list[list[int]]]:
    """Forward passes for one batch: inputs sorted by length, each pass at most ``max_size``
    inputs and ``max_tokens`` padded tokens (inputs x its longest), so one long input pads
    only its own pass, not every short one beside it. Returns the order and the passes."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    chunks: list[list[int]] = []
    for index in order:
        # Sorted ascending: this input is the last chunk's longest once added.
        if chunks and len(chunks[-1]) < max_size and (
            (len(chunks[-1]) + 1) * lengths[index] <= max_tokens
        ):
            chunks[-1].append(index)
        else:
            chunks.append([index])
    return order, chunks


def _deliver(jobs: list[_Job], result: Embeddings) -> None:
    start = 0
    for job in jobs:
        stop = start + len(job.texts)
        if not job.future.done():
            job.future.set_result(result.slice(start, stop))
        start = stop


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
