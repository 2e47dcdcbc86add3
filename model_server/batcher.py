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
from model_server.errors import DeadlineExceeded, QueueFull, ShuttingDown
from model_server.lanes import LANES, Lane
from model_server.metrics import Metrics

EmbedFn = Callable[[list[str]], Embeddings]
LengthsFn = Callable[[list[str]], list[int]]
T = TypeVar("T")


@dataclass(eq=False)
class _Job:
    texts: list[str]
    future: asyncio.Future[Embeddings]
    lane: Lane = "interactive"
    deadline: float | None = None  # time.monotonic() past which it is not computed
    enqueued_at: float = field(default_factory=time.monotonic)
    taken: int = 0  # inputs handed to batches so far (a request may span batches)
    parts: list[Embeddings] = field(default_factory=list)  # their results, in order

    @property
    def left(self) -> int:
        return len(self.texts) - self.taken


# A part of a request in a batch: the job and its inputs [start, stop).
_Slice = tuple[_Job, int, int]


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

    Lanes (issue 29, model_server/lanes.py): each lane is a first-come queue, and a batch
    is filled from the interactive lane first, then from the batch lane; a request that
    does not fit whole gives the batch what fits and keeps the rest at the head of its
    lane. The batch lane is never starved: after ``batch_lane_every`` batches in a row
    that took none of its work while it had some queued (interactive work alone filled
    them), the next batch is filled from the batch lane first. So the request at the head
    of the batch lane is in a batch within ``batch_lane_every + 1`` batches (plus
    ``max_wait_s``) however much interactive work arrives, and an interactive request
    waits for the batch computing now, and only when interactive work alone fills
    batches, once in ``batch_lane_every + 1`` batches, for one more. A batch that holds
    interactive work takes batch-lane inputs only up to ``mixed_batch_size`` (half a
    batch by default), so the query's own batch costs about half a full one; so does the
    batch right after one that held interactive work (queries are flowing: the next one
    arrives while it computes and waits for it), so a query waits for about two half
    batches, one full batch's time, whatever the batch lane holds. A batch's cost per
    input is about the same at 16 inputs as at 32 (ONNX MiniLM, one thread: 5.7 against 5.9
    ms of CPU), so the batch lane loses little by it. The batch lane is
    admitted up to ``queue_limit - interactive_reserve`` inputs, so a bulk client filling
    its lane never makes an interactive request a 429.

    Deadlines: a request whose deadline passes while it is queued is taken out of its lane
    and answered DeadlineExceeded (504) without being computed; so is one whose caller
    disconnects (its handler is cancelled). Both are counted in the metrics.
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
        batch_lane_every: int = 4,
        mixed_batch_size: int | None = None,
        interactive_reserve: int = 0,
    ) -> None:
        self._embed = embed
        self._max_batch_size = max_batch_size
        self._max_batch_tokens = max_batch_tokens
        self._lengths = lengths
        self._max_wait_s = max_wait_s
        self._queue_limit = queue_limit
        self._metrics = metrics
        self._lanes: dict[Lane, deque[_Job]] = {lane: deque() for lane in LANES}
        self._batch_lane_every = batch_lane_every
        # A batch holding interactive work takes batch-lane inputs only up to this size,
        # so a query's own batch costs less than a full one (default: half).
        self._mixed_batch_size = min(max_batch_size, mixed_batch_size or
                                     max(1, max_batch_size // 2))
        self._interactive_reserve = min(interactive_reserve, queue_limit)
        self._batch_lane_skipped = 0  # batches in a row without batch-lane work it had queued
        self._last_had_interactive = False  # did the batch taken last hold interactive work?
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
        for jobs in self._lanes.values():
            _fail(list(jobs), ShuttingDown("the server is shutting down"))
            jobs.clear()
        self._set_queued(0)
        await asyncio.to_thread(self._executor.shutdown)

    async def embed(self, texts: list[str], lane: Lane = "interactive",
                    timeout_s: float | None = None) -> Embeddings:
        """Queue ``texts`` in ``lane`` and wait for their embeddings, in order; past
        ``timeout_s`` seconds DeadlineExceeded, and queued work is dropped uncomputed."""
        if self._closed:
            raise ShuttingDown("the server is shutting down")
        self._admit(len(texts), lane)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        job = _Job(texts, asyncio.get_running_loop().create_future(), lane, deadline)
        self._lanes[lane].append(job)
        self._set_queued(self._queued + len(texts))
        self._demand = max(self._demand, self._queued + self._computing)
        try:
            if timeout_s is None:
                return await job.future
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(job.future)
        except TimeoutError:
            if self._unqueue(job):
                self._metrics.expired.labels(lane).inc()
            raise DeadlineExceeded(
                f"the request's {timeout_s:g} s (X-Request-Timeout) passed before it was "
                "answered", {"timeout_s": timeout_s}) from None
        except asyncio.CancelledError:  # the caller went away
            if self._unqueue(job):
                self._metrics.abandoned.labels(lane).inc()
            raise

    def _unqueue(self, job: _Job) -> bool:
        """Take a job still queued out of its lane (True), so it is never computed."""
        try:
            self._lanes[job.lane].remove(job)
        except ValueError:
            return False  # taken already: it is computing (or was dropped)
        if not job.future.done():
            job.future.cancel()
        self._set_queued(self._queued - job.left)
        return True

    def _admit(self, count: int, lane: Lane = "interactive") -> None:
        """QueueFull (429) if `count` more inputs would pass the lane's limit: queue_limit,
        less the interactive reserve for the batch lane."""
        limit = self._queue_limit
        if lane == "batch":
            limit -= self._interactive_reserve
        if self._queued + self._alone + count > limit:
            detail: dict[str, object] = {"queued": self._queued + self._alone,
                                         "queue_limit": limit}
            if lane == "batch":
                detail |= {"lane": lane, "interactive_reserve": self._interactive_reserve}
            raise QueueFull(f"too many inputs queued in the {lane} lane; retry later", detail)

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
            if not self._queued:  # every queued request left before the loop woke
                continue
            await self._wait_to_fill()
            slices = self._take()
            if slices:
                await self._compute(loop, slices)

    async def _wait_to_fill(self) -> None:
        """Wait until the demand target is queued or ``max_wait_s`` has passed since the
        compute thread became free (or the oldest input arrived, if later)."""
        oldest = min(jobs[0].enqueued_at for jobs in self._lanes.values() if jobs)
        if oldest - self._free_since > self._max_wait_s:
            self._demand = self._queued  # the thread sat idle: earlier demand is stale
        self._target = max(1, min(self._max_batch_size, self._demand))
        self._set_queued(self._queued)
        remaining = max(oldest, self._free_since) + self._max_wait_s - time.monotonic()
        if remaining > 0 and not self._filled.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._filled.wait(), remaining)

    def _take(self) -> list[_Slice]:
        """Inputs for one batch, up to ``max_batch_size``, from the interactive lane first
        (the batch lane first when it is owed a batch). A request that does not fit whole
        gives the batch what fits and stays at the head of its lane with the rest, so
        every batch is full while work waits and queries never wait for a slot."""
        waiting = self._lanes["batch"]
        owed = bool(waiting) and self._batch_lane_skipped >= self._batch_lane_every
        order: tuple[Lane, ...] = ("batch", "interactive") if owed else LANES
        slices: list[_Slice] = []
        size = 0
        now = time.monotonic()
        for lane in order:
            queue = self._lanes[lane]
            limit = self._max_batch_size
            # Beside interactive work, or right after a batch that held some.
            if lane == "batch" and not owed and (size or self._last_had_interactive):
                limit = max(size, self._mixed_batch_size)
            while queue and size < limit:
                job = queue[0]
                if job.future.done():  # cancelled, or failed in an earlier batch
                    queue.popleft()
                    continue
                if job.deadline is not None and job.deadline <= now:
                    queue.popleft()
                    self._metrics.expired.labels(lane).inc()
                    job.future.set_exception(DeadlineExceeded(
                        "the request's X-Request-Timeout passed before it was computed"))
                    continue
                count = min(job.left, limit - size)
                slices.append((job, job.taken, job.taken + count))
                job.taken += count
                size += count
                if not job.left:
                    queue.popleft()
        self._last_had_interactive = any(job.lane == "interactive" for job, _, _ in slices)
        if any(job.lane == "batch" for job, _, _ in slices) or not waiting:
            self._batch_lane_skipped = 0
        else:
            self._batch_lane_skipped += 1
        self._computing = size
        self._set_queued(sum(job.left for q in self._lanes.values() for job in q))
        self._demand = self._queued + self._computing
        return slices

    async def _compute(self, loop: asyncio.AbstractEventLoop, slices: list[_Slice]) -> None:
        texts = [text for job, start, stop in slices for text in job.texts[start:stop]]
        jobs = [job for job, _, _ in slices]
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
        for job, start, stop in slices:
            self._metrics.lane_batches.labels(job.lane).inc(stop - start)
        _deliver(slices, result)

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


def _deliver(slices: list[_Slice], result: Embeddings) -> None:
    """Each slice's rows to its request; a request is answered with its last part (the
    batches are computed one at a time, so its earlier parts are in already)."""
    at = 0
    for job, start, stop in slices:
        rows = result.slice(at, at + stop - start)
        at += stop - start
        if job.future.done():
            continue
        if start == 0 and stop == len(job.texts):
            job.future.set_result(rows)
            continue
        job.parts.append(rows)
        if stop == len(job.texts):
            job.future.set_result(Embeddings.concat(job.parts))


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(exc)
