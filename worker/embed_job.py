"""A bulk embedding job (issue 30), run as a task: read the job's input from where the API
left it, send batches to the pinned generation's ready replicas directly (with the
generation's secret and the batch lane's priority header), and write the results in input
order, checkpointing in Postgres as it goes.

Crash safety rests on one rule: the checkpoint (inputs done, input offset, results bytes)
is written only after the results up to it are flushed and fsynced. A run that starts
(the first, or one resumed on another worker after a kill -9) truncates the results file to
the checkpoint's bytes and reads the input from the checkpoint's offset, so every input
appears in the results exactly once. An input that cannot be embedded (a bad line, one too
long for the model) gets a result line with its reason instead of a vector.
"""

import asyncio
import contextlib
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import aiohttp
import numpy as np
import orjson
import structlog
from redis.exceptions import RedisError

from db import deployments, embed_jobs, replicas, tasks
from db.embed_jobs import EmbedJob, LostJob
from db.tasks import Task
from schemas import replica_auth, task_payloads
from schemas.embed_jobs import BATCH_PRIORITY, INPUT_FILE, RESULTS_FILE, job_dir
from schemas.lanes import PRIORITY_HEADER, TOKENS_HEADER
from schemas.queue import JOB_RUN_TASK, retry_job_id
from schemas.task_payloads import EmbedPayload
from schemas.tasks import ReplicaState, TaskStatus
from worker.context import WorkerContext

log = structlog.get_logger(__name__)
DAY_S = 86_400.0
# A checkpoint is written at most this often (and when the job ends).
CHECKPOINT_EVERY_S = 0.5
# A batch a replica could not take (a 5xx, a connection error) is tried again, on the
# next replica, this many times with a growing wait, before the job fails.
RETRIES = 8
# Back-pressure (429: the replica's batch lane is full; 503: not ready or shutting down) is
# no failure: the batch waits (the replica's Retry-After when it sends one, else a growing
# wait up to BACKPRESSURE_WAIT_S) without spending a try, and the job sends fewer batches at
# once; only back-pressure on one batch for BACKPRESSURE_BUDGET_S in a row fails the job.
BACKPRESSURE = (429, 503)
BACKPRESSURE_WAIT_S = 2.0
BACKPRESSURE_BUDGET_S = 300.0
REQUEST_TIMEOUT_S = 120.0
# The pinned generation has no ready replica: look again this often, this long.
NO_REPLICA_WAIT_S = 30.0


class JobFailed(Exception):
    """The job cannot go on; the message is the caller's reason."""


@dataclass(slots=True)
class Item:
    """One input line: its id, and its text or the reason it cannot be embedded."""

    id: Any
    text: str | None = None
    error: str | None = None


@dataclass(slots=True)
class Batch:
    items: list[Item]
    end_offset: int  # the input's byte offset after the batch's last line
    lines: list[bytes] = field(default_factory=list)
    tokens: int = 0
    embedded: int = 0
    dimension: int | None = None


def parse_line(line: bytes, max_bytes: int) -> Item:
    """An input line as an item; a line that is not `{"id", "text"}` is an item with its
    reason (its id when one can be read)."""
    if len(line) > max_bytes:
        ident = None
        with contextlib.suppress(ValueError):
            ident = _ident(orjson.loads(line))
        return Item(ident, error=f"line is {len(line):,} bytes, more than the "
                                 f"{max_bytes:,} allowed (GREENROOM_EMBED_MAX_LINE_BYTES)")
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return Item(None, error="bad line: not JSON")
    ident = _ident(row)
    if ident is None:
        return Item(None, error='bad line: not an object with an "id" (a string or integer)')
    text = row.get("text")
    if not isinstance(text, str):
        return Item(ident, error='bad line: "text" must be a string')
    if not text.strip():
        return Item(ident, error='bad line: "text" is empty')
    return Item(ident, text=text)


def _ident(row: Any) -> Any:
    if not isinstance(row, dict):
        return None
    ident = row.get("id")
    if isinstance(ident, bool) or not isinstance(ident, str | int):
        return None
    return ident


def batches(source: IO[bytes], offset: int, size: int, max_line: int) -> Iterator[Batch]:
    """The input from `offset` in batches of `size` items (blank lines are no inputs)."""
    source.seek(offset)
    items: list[Item] = []
    for line in source:
        offset += len(line)
        if not line.strip():
            continue
        items.append(parse_line(line.rstrip(b"\r\n"), max_line))
        if len(items) >= size:
            yield Batch(items, offset)
            items = []
    if items:
        yield Batch(items, offset)


class Replicas:
    """The pinned generation's ready replicas, taken in turn."""

    def __init__(self, ctx: WorkerContext, job: EmbedJob) -> None:
        self.ctx, self.job = ctx, job
        self.endpoints: list[str] = []
        self.turn = 0
        # Batches the job may have in flight: `limit` at most, halved by each back-pressure
        # answer, grown by one by each batch a replica took (additive increase).
        self.limit = self.allowed = 1
        key = ctx.settings.secret_key
        self.headers: dict[str, str] = {PRIORITY_HEADER: BATCH_PRIORITY}
        if key is not None:
            self.headers[replica_auth.HEADER] = replica_auth.generation_secret(
                key.get_secret_value(), job.model_id, job.generation)

    async def refresh(self) -> None:
        deadline = time.monotonic() + NO_REPLICA_WAIT_S
        while True:
            live = await replicas.list_for_model(self.ctx.pool, self.job.model_id)
            self.endpoints = [r.endpoint for r in live if r.generation == self.job.generation
                              and r.state == ReplicaState.ready and r.endpoint]
            if self.endpoints:
                return
            if not await deployments.generation_is_live(self.ctx.pool, self.job.model_id,
                                                        self.job.generation):
                raise JobFailed(f"generation {self.job.generation} is no longer live (a "
                                "rollout or a delete replaced it); the job's vectors must "
                                "all come from one generation, so it stops here")
            if time.monotonic() > deadline:
                raise JobFailed(f"generation {self.job.generation} has had no ready replica "
                                f"for {NO_REPLICA_WAIT_S:g} s")
            await asyncio.sleep(0.5)

    def next(self) -> str:
        self.turn += 1
        return self.endpoints[self.turn % len(self.endpoints)]

    def pressed(self) -> None:
        self.allowed = max(1, self.allowed // 2)

    def eased(self) -> None:
        self.allowed = min(self.limit, self.allowed + 1)


class Outcome:
    """What one request to a replica gave: its JSON answer and tokens, or why it refused
    the inputs."""

    def __init__(self, raw: bytes | None, tokens: int, error: str | None) -> None:
        self.raw, self.tokens, self.error = raw, tokens, error


async def _post(http: aiohttp.ClientSession, pool: Replicas, texts: list[str],
                normalize: bool) -> Outcome:
    """One /embed request, tried on the next replica while the failure is theirs; waited
    out (no try spent) while the replicas push back."""
    body = orjson.dumps({"inputs": texts, "truncate": False, "normalize": normalize})
    wait = pushed_wait = 0.1
    pushed_since: float | None = None
    last = ""
    tries = 0
    while tries < RETRIES:
        endpoint = pool.next()
        try:
            async with http.post(f"{endpoint}/embed", data=body, headers={
                    **pool.headers, "Content-Type": "application/json"},
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
                raw = await resp.read()
                if resp.status == 200:
                    pool.eased()
                    tokens = int(resp.headers.get(TOKENS_HEADER, "0") or 0)
                    return Outcome(raw, tokens, None)
                if resp.status in (401, 403):
                    raise JobFailed(f"{endpoint} refused the worker's credentials "
                                    f"({resp.status}: {_message(raw, resp.status)})")
                if resp.status in BACKPRESSURE:
                    pool.pressed()
                    now = time.monotonic()
                    pushed_since = now if pushed_since is None else pushed_since
                    if now - pushed_since > BACKPRESSURE_BUDGET_S:
                        raise JobFailed(f"the replicas pushed back ({resp.status}) on a batch "
                                        f"for {BACKPRESSURE_BUDGET_S:g} s")
                    await asyncio.sleep(_retry_after(resp.headers, pushed_wait))
                    pushed_wait = min(pushed_wait * 2, BACKPRESSURE_WAIT_S)
                    if resp.status == 503:  # not ready or shutting down: who is ready now
                        await pool.refresh()
                    continue
                if 400 <= resp.status < 500 and resp.status != 408:
                    return Outcome(None, 0, _message(raw, resp.status))
                last = f"{endpoint} answered {resp.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            last = f"{endpoint}: {type(exc).__name__}"
        tries += 1
        pushed_since = None
        await asyncio.sleep(wait)
        wait = min(wait * 2, 5.0)
        await pool.refresh()
    raise JobFailed(f"the replicas could not embed a batch after {RETRIES} tries ({last})")


def _retry_after(headers: Any, default: float) -> float:
    """The answer's Retry-After in seconds (bounded), else `default`."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:  # none, or an HTTP date
        return default
    return min(max(seconds, 0.0), 30.0) if math.isfinite(seconds) else default


def rows_of(raw: bytes, count: int, payload: EmbedPayload) -> list[bytes]:
    """Each vector of a replica's answer as JSON text, shaped as the job asked.

    Without `dimensions` the replica already normalised (or not) as asked, and its answer,
    a JSON list of lists of numbers with no spaces (orjson's), is cut into rows as bytes:
    no number is parsed. Otherwise (or for an answer of another form) the vectors are read,
    cut and normalised here."""
    if payload.dimensions is None and raw.startswith(b"[[") and raw.endswith(b"]]"):
        parts = raw[2:-2].split(b"],[")
        if len(parts) == count:
            return [b"[" + part + b"]" for part in parts]
    try:
        vectors = np.asarray(orjson.loads(raw), dtype=np.float32)
    except (ValueError, TypeError):
        raise JobFailed("a replica answered something other than vectors") from None
    if vectors.ndim != 2 or vectors.shape[0] != count:
        raise JobFailed(f"a replica answered {vectors.shape[0] if vectors.ndim else 0} "
                        f"vectors for {count} inputs")
    shape = payload.dimensions is not None
    rows = shaped(vectors, payload.dimensions, payload.normalize and shape)
    return [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in rows]


def _message(raw: bytes, status: int) -> str:
    with contextlib.suppress(ValueError):
        body = orjson.loads(raw)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            return str(body["error"])
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return str(body["message"])
    return f"the replica refused it ({status})"


def shaped(vectors: np.ndarray, dimensions: int | None, normalize: bool) -> np.ndarray:
    """The vectors as the job asked: unit length, cut to `dimensions` (then unit again:
    OpenAI's `dimensions`), or raw and cut."""
    if dimensions is not None and dimensions > vectors.shape[1]:
        raise JobFailed(f"dimensions {dimensions} is more than the model's {vectors.shape[1]}")
    if normalize:
        vectors = _unit(vectors)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
        if normalize:
            vectors = _unit(vectors)
    return np.ascontiguousarray(vectors, dtype=np.float32)


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: np.ndarray = vectors / np.maximum(norms, 1e-12)
    return unit


async def embed_batch(http: aiohttp.ClientSession, pool: Replicas, batch: Batch,
                      payload: EmbedPayload) -> Batch:
    """Embed a batch; an input the replica refuses is tried alone so only it fails."""
    texts = [(i, item.text) for i, item in enumerate(batch.items) if item.text is not None]
    # With `dimensions` the worker cuts, then normalises; else the replica normalises.
    normalize = payload.normalize and payload.dimensions is None
    vectors: dict[int, bytes] = {}
    if texts:
        outcome = await _post(http, pool, [text for _, text in texts], normalize)
        if outcome.raw is not None:
            rows = rows_of(outcome.raw, len(texts), payload)
            vectors = {i: rows[n] for n, (i, _) in enumerate(texts)}
            batch.tokens += outcome.tokens
        else:
            for i, text in texts:
                alone = await _post(http, pool, [text], normalize)
                if alone.raw is not None:
                    vectors[i] = rows_of(alone.raw, 1, payload)[0]
                    batch.tokens += alone.tokens
                else:
                    batch.items[i].error = alone.error
    for i, item in enumerate(batch.items):
        ident = orjson.dumps(item.id)
        if i in vectors:
            batch.lines.append(b'{"id":' + ident + b',"embedding":' + vectors[i] + b"}\n")
            batch.embedded += 1
            batch.dimension = batch.dimension or vectors[i].count(b",") + 1
        else:
            batch.lines.append(b'{"id":' + ident + b',"error":'
                               + orjson.dumps(item.error or "not embedded") + b"}\n")
    return batch


@dataclass(slots=True)
class Progress:
    done: int
    failed: int
    tokens: int
    input_offset: int
    results_bytes: int
    dimension: int | None


async def run(ctx: WorkerContext, task: Task, slice_s: float = float("inf")) -> None:
    """Run (or resume) the job of `task` to its end: done, failed with a reason, or
    cancelled at its owner's word; or, after `slice_s` (`embed_slice_s`, within the worker's
    job timeout), back in the queue at its checkpoint, to go on in a run of its own."""
    until = time.monotonic() + slice_s
    payload = task_payloads.read(task.kind, task.request)
    assert isinstance(payload, EmbedPayload)
    job = await embed_jobs.start_run(ctx.pool, task.id)
    retention_s = ctx.settings.embed_retention_days * DAY_S
    if job is None:
        await tasks.finish(ctx.pool, task.id, ctx.worker_id, TaskStatus.failed,
                           "the job's record is gone")
        return
    try:
        status, detail = await _run(ctx, job, payload, until)
    except JobFailed as exc:
        status, detail = TaskStatus.failed, str(exc)
    except LostJob:
        log.warning("embed_job_lost", job=str(job.id))
        return
    if status is TaskStatus.pending:
        await _next_turn(ctx, job)
        return
    await embed_jobs.finish(ctx.pool, job.id, ctx.worker_id, status, detail, retention_s)


async def _next_turn(ctx: WorkerContext, job: EmbedJob) -> None:
    """The job's slice is over: back to pending at its checkpoint (not counted as an
    attempt) and into the queue under a fresh job id (the reconciler's, if Redis fails)."""
    if not await embed_jobs.next_turn(ctx.pool, job.id, ctx.worker_id):
        return
    fresh = retry_job_id(str(job.id), time.time_ns())
    try:
        await ctx.redis.enqueue_job(JOB_RUN_TASK, fresh, _job_id=fresh)
    except (RedisError, OSError) as exc:
        log.warning("embed_job_requeue_deferred", job=str(job.id), error=str(exc))
        await tasks.mark_unenqueued(ctx.pool, job.id)


async def _run(ctx: WorkerContext, job: EmbedJob, payload: EmbedPayload,
               until: float) -> tuple[TaskStatus, str | None]:
    """How the run ended: done, cancelled, or pending (its slice is over)."""
    if job.cancel_requested:
        return TaskStatus.canceled, "cancelled by its owner"
    folder = job_dir(ctx.settings, job.id)
    source_path, results_path = folder / INPUT_FILE, folder / RESULTS_FILE
    if not source_path.is_file():
        raise JobFailed("the job's input file is not on this worker's disk (the API and the "
                        "workers must share GREENROOM_STATE_DIR)")
    pool = Replicas(ctx, job)
    await pool.refresh()
    progress = Progress(job.done, job.failed, job.tokens, job.input_offset, job.results_bytes,
                        job.dimension)
    window = max(1, len(pool.endpoints) * ctx.settings.embed_inflight_per_replica)
    pool.limit = pool.allowed = window
    fd = os.open(results_path, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+b") as out, source_path.open("rb") as source:
        out.truncate(progress.results_bytes)  # what a killed run wrote past its checkpoint
        out.seek(progress.results_bytes)
        ended = await _pipeline(ctx, job, payload, pool, source, out, progress, window, until)
    if ended is TaskStatus.canceled:
        return ended, "cancelled by its owner"
    return ended, None


async def _pipeline(ctx: WorkerContext, job: EmbedJob, payload: EmbedPayload, pool: Replicas,
                    source: IO[bytes], out: IO[bytes], progress: Progress,
                    window: int, until: float) -> TaskStatus:
    """Keep `window` batches in flight, write their results in input order, checkpoint.
    Done at the input's end; canceled when the owner cancelled; pending past `until`."""
    settings = ctx.settings
    flight = _Flight(ctx, pool, payload, batches(
        source, progress.input_offset, settings.embed_batch_size,
        settings.embed_max_line_bytes), window)
    last_checkpoint = time.monotonic()
    try:
        while flight.fill(more=time.monotonic() < until):
            for batch in await flight.in_order():
                _write(out, batch, progress)
            if time.monotonic() - last_checkpoint >= CHECKPOINT_EVERY_S:
                if await _checkpoint(ctx, job, out, progress):
                    return TaskStatus.canceled
                last_checkpoint = time.monotonic()
        if await _checkpoint(ctx, job, out, progress):
            return TaskStatus.canceled
        return TaskStatus.done if flight.exhausted else TaskStatus.pending
    finally:
        await flight.stop()


class _Flight:
    """The batches in flight: a finished one's place is taken at once, whatever its turn,
    and the results come out in input order. The reorder buffer is bounded too: a slow
    batch holds at most four windows back."""

    def __init__(self, ctx: WorkerContext, pool: Replicas, payload: EmbedPayload,
                 reader: Iterator[Batch], window: int) -> None:
        self.ctx, self.pool, self.payload, self.reader = ctx, pool, payload, reader
        self.window = window
        self.inflight: dict[asyncio.Task[Batch], int] = {}
        self.finished: dict[int, Batch] = {}
        self.sent = self.written = 0
        self.exhausted = False

    def fill(self, more: bool = True) -> bool:
        """Send batches up to the window (none when not `more`); False once nothing is left
        in flight."""
        while (more and not self.exhausted
               and len(self.inflight) < min(self.window, self.pool.allowed)
               and self.sent - self.written < 4 * self.window):
            batch = next(self.reader, None)
            if batch is None:
                self.exhausted = True
                break
            task = asyncio.create_task(embed_batch(self.ctx.http, self.pool, batch,
                                                   self.payload))
            self.inflight[task] = self.sent
            self.sent += 1
        return bool(self.inflight)

    async def in_order(self) -> list[Batch]:
        """Wait for one to finish; the batches whose turn has come."""
        done, _ = await asyncio.wait(self.inflight, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            self.finished[self.inflight.pop(task)] = task.result()
        ready = []
        while self.written in self.finished:
            ready.append(self.finished.pop(self.written))
            self.written += 1
        return ready

    async def stop(self) -> None:
        for left in self.inflight:
            left.cancel()
        for left in self.inflight:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await left


def _write(out: IO[bytes], batch: Batch, progress: Progress) -> None:
    data = b"".join(batch.lines)
    out.write(data)
    progress.results_bytes += len(data)
    progress.input_offset = batch.end_offset
    progress.tokens += batch.tokens
    progress.done += batch.embedded
    progress.failed += len(batch.items) - batch.embedded
    progress.dimension = progress.dimension or batch.dimension


async def _checkpoint(ctx: WorkerContext, job: EmbedJob, out: IO[bytes],
                      progress: Progress) -> bool:
    """Make the results durable up to here, then record the checkpoint; True when the
    owner asked to cancel."""
    out.flush()
    await asyncio.to_thread(os.fsync, out.fileno())
    return await embed_jobs.checkpoint(
        ctx.pool, job.id, ctx.worker_id, done=progress.done, failed=progress.failed,
        tokens=progress.tokens, input_offset=progress.input_offset,
        results_bytes=progress.results_bytes, dimension=progress.dimension)


async def hand_back(ctx: WorkerContext, task: Task, reason: str) -> str:
    """The worker stops mid-job: the task goes back to pending (its checkpoint stays), to be
    resumed by another worker; failed once it has been run `max_attempts` times."""
    detail = (f"interrupted {task.attempts} time(s), the last because {reason}; giving up "
              f"after {ctx.settings.max_attempts} attempts (GREENROOM_MAX_ATTEMPTS)")
    return await tasks.hand_back(ctx.pool, task.id, ctx.worker_id, ctx.settings.max_attempts,
                                 detail) or "lost"


async def prune(ctx: WorkerContext) -> int:
    """Retention: ended jobs get their expiry; expired ones lose their files, then their
    task and row. Returns the jobs removed."""
    await embed_jobs.expire_ended(ctx.pool, ctx.settings.embed_retention_days * DAY_S)
    expired = await embed_jobs.list_expired(ctx.pool)
    for job_id in expired:
        await asyncio.to_thread(shutil.rmtree, job_dir(ctx.settings, job_id), True)
        await embed_jobs.delete(ctx.pool, job_id)
    return len(expired)
