"""Bulk embedding jobs at the API (issue 30): accept one (its input streamed to disk under
bounds, its generation pinned, the owner's quotas checked, the task inserted and enqueued),
show it, stream its results, cancel it.

A job's files are its owner's: every read here takes the caller and answers a job of
someone else exactly as a missing one (404), administrators excepted.
"""

import hashlib
import json
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import numpy as np
import orjson
from arq.connections import ArqRedis

from db import deployments, embed_jobs
from db.embed_jobs import EmbedJob
from db.models import Model
from schemas.auth import Principal
from schemas.embed_jobs import (
    INPUT_FILE,
    NDJSON,
    RESULTS_FILE,
    JobCounts,
    JobStatus,
    job_dir,
    job_status,
)
from schemas.embed_jobs import (
    EmbedJob as EmbedJobOut,
)
from schemas.errors import Conflict, Forbidden, Invalid, NotFound, TooLarge, UnsupportedType
from schemas.file_modes import private_dir
from schemas.settings import Settings
from schemas.task_payloads import EmbedPayload
from service.domain import store_space, task_requests

CHUNK = 1 << 20
# The store's free space is looked at again after each this much of an upload.
ROOM_EVERY = 64 << 20
# JSONL's media types, and bytes as they are (a file sent as it is, as `curl --data-binary`
# does with `-H 'Content-Type: application/octet-stream'`).
MEDIA_TYPES = (NDJSON, "application/jsonl", "application/x-jsonlines",
               "application/octet-stream")
FLAGS = {"true": True, "false": False}
# The largest generation number a query may name (a Postgres integer).
MAX_GENERATION = 2**31 - 1


@dataclass(frozen=True, slots=True)
class JobOptions:
    generation: int | None
    dimensions: int | None
    normalize: bool


def _int(query: dict[str, str], name: str, low: int, high: int) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise Invalid(f"invalid request: {name} must be an integer from {low} to {high}",
                      [{"loc": ["query", name], "msg": "out of range", "type": "value_error"}])
    return number


def options(query: dict[str, str]) -> JobOptions:
    """The job's options from the query (a bad value is a 422)."""
    normalize = query.get("normalize", "true")
    if normalize not in FLAGS:
        raise Invalid(f"invalid request: normalize must be one of {', '.join(FLAGS)}",
                      [{"loc": ["query", "normalize"], "msg": "not a flag",
                        "type": "value_error"}])
    return JobOptions(generation=_int(query, "generation", 1, MAX_GENERATION),
                      dimensions=_int(query, "dimensions", 1, 65536),
                      normalize=FLAGS[normalize])


async def pinned_generation(pool: asyncpg.Pool, model: Model, asked: int | None) -> int:
    """The generation the job runs on: the one asked for, if live; else the serving one.
    409 when there is none."""
    if asked is not None:
        if not await deployments.generation_is_live(pool, model.id, asked):
            raise Conflict(f"generation {asked} of {model.identifier} is not live; a job runs "
                           "on a live generation (the serving one when none is named)",
                           {"generation": asked})
        return asked
    deployment = await deployments.get(pool, model.id)
    if deployment is None or deployment.active_generation is None:
        raise Conflict(f"{model.identifier} has no serving generation; deploy it first")
    return int(deployment.active_generation)


@dataclass(frozen=True, slots=True)
class Received:
    size: int
    lines: int


async def receive(chunks: AsyncIterator[bytes], target: Path, max_bytes: int, max_lines: int,
                  why: str, room: object = None) -> Received:
    """Stream the body to `target`, counting its inputs (lines that are not blank); 413 past
    `max_bytes` (`why` names the bound) or `max_lines`."""
    size = lines = checked = 0
    nonblank = False  # the current (unfinished) line holds more than white space
    with target.open("wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"embed job refused: the input is larger than {why}")
            if callable(room) and size - checked >= ROOM_EVERY:
                room(0)
                checked = size
            parts = chunk.split(b"\n")
            for part in parts[:-1]:
                if nonblank or part.strip():
                    lines += 1
                nonblank = False
            nonblank = nonblank or bool(parts[-1].strip())
            if lines > max_lines:
                raise TooLarge(f"embed job refused: more than {max_lines:,} inputs "
                               "(GREENROOM_EMBED_MAX_INPUTS)")
            out.write(chunk)
    lines += nonblank
    if lines == 0:
        raise Invalid("embed job refused: the input holds no lines; send one JSON object "
                      '{"id": ..., "text": ...} a line')
    if lines > max_lines:
        raise TooLarge(f"embed job refused: more than {max_lines:,} inputs "
                       "(GREENROOM_EMBED_MAX_INPUTS)")
    return Received(size, lines)


def _request_hash(model: Model, generation: int, opts: JobOptions, digest: str) -> str:
    body = {"kind": "embed", "model": str(model.id), "generation": generation,
            "dimensions": opts.dimensions, "normalize": opts.normalize, "input": digest}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


async def accept(pool: asyncpg.Pool, redis: ArqRedis, settings: Settings, principal: Principal,
                 model: Model, model_ref: str, query: dict[str, str], content_type: str,
                 chunks: AsyncIterator[bytes], declared_size: int | None) -> EmbedJob:
    """Accept a job: checks, then the input to disk, then the task and its row, then the
    enqueue. Whatever is refused leaves no file behind. `input_from` in the query names an
    earlier job of the caller's whose input this one embeds again (the body stays empty):
    the same corpus on a new generation."""
    reused = await _reused_input(pool, settings, principal, query.get("input_from"),
                                 declared_size)
    if reused is None and content_type not in MEDIA_TYPES:
        raise UnsupportedType(f"embed job refused: the body must be JSONL ({NDJSON}), one "
                              '{"id": ..., "text": ...} a line', {"content_type": content_type})
    assert principal.user_id is not None
    opts = options(query)
    generation = await pinned_generation(pool, model, opts.generation)
    max_bytes = settings.embed_max_input_mb * 2**20
    why = f"{settings.embed_max_input_mb:,} MB (GREENROOM_EMBED_MAX_INPUT_MB)"
    if not principal.is_admin:
        jobs, held = await embed_jobs.holdings(pool, principal.user_id)
        if jobs >= settings.quota_embed_jobs:
            raise Forbidden(f"embed job refused: you hold {jobs} jobs, the most your quota "
                            f"allows (GREENROOM_QUOTA_EMBED_JOBS={settings.quota_embed_jobs});"
                            " delete one or wait for one to expire",
                            {"jobs": jobs, "max_jobs": settings.quota_embed_jobs})
        left = settings.quota_embed_store_mb * 2**20 - held
        if left < max_bytes:
            max_bytes = max(left, 0)
            why = (f"the {max_bytes // 2**20:,} MB your embed store quota leaves "
                   f"(GREENROOM_QUOTA_EMBED_STORE_MB={settings.quota_embed_store_mb})")
    size = reused.input_bytes if reused is not None else declared_size
    if size is not None and size > max_bytes:
        raise TooLarge(f"embed job refused: the input is larger than {why}")
    root = private_dir(private_dir(settings.state_dir) / "embed-jobs")
    store_space.check_room(settings, root, size or 0)
    job_id = uuid4()
    folder = job_dir(settings, job_id)
    folder.mkdir(mode=0o700)
    try:
        if reused is not None:
            received = await _link_input(settings, reused, folder / INPUT_FILE, chunks)
        else:
            received = await receive(
                chunks, folder / INPUT_FILE, max_bytes, settings.embed_max_inputs, why,
                room=lambda more: store_space.check_room(settings, root, more))
        payload = EmbedPayload(embedding_model_id=model_ref, generation=generation,
                               dimensions=opts.dimensions, normalize=opts.normalize)
        task = await embed_jobs.insert(
            pool, job_id=job_id, owner_id=principal.user_id, model_id=model.id,
            generation=generation, dimensions=opts.dimensions, normalize=opts.normalize,
            request=payload.stored(),
            request_hash=_request_hash(model, generation, opts, job_id.hex),
            input_bytes=received.size, total=received.lines)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    await task_requests.enqueue(redis, pool, task.id)
    job = await embed_jobs.get(pool, job_id)
    assert job is not None
    return job


async def _reused_input(pool: asyncpg.Pool, settings: Settings, principal: Principal,
                        source_id: str | None, declared_size: int | None) -> EmbedJob | None:
    """The earlier job whose input a new one embeds again (the caller's own: 404 else)."""
    if source_id is None:
        return None
    if declared_size:
        raise Invalid("embed job refused: send no body with input_from (the input is that "
                      "job's)")
    source = await owned(pool, principal, source_id)
    if not (job_dir(settings, source.id) / INPUT_FILE).is_file():
        raise NotFound(f"embed job {source_id}'s input is gone (expired)", {"id": source_id})
    return source


async def _link_input(settings: Settings, source: EmbedJob, target: Path,
                      chunks: AsyncIterator[bytes]) -> Received:
    """The earlier job's input as this job's: a hard link (a copy across file systems)."""
    async for chunk in chunks:
        if chunk:
            raise Invalid("embed job refused: send no body with input_from (the input is "
                          "that job's)")
    origin = job_dir(settings, source.id) / INPUT_FILE
    try:
        os.link(origin, target)
    except OSError:
        shutil.copyfile(origin, target)
    return Received(source.input_bytes, source.total)


def not_found(job_id: str) -> NotFound:
    return NotFound(f"embed job {job_id!r} not found", {"id": job_id})


async def owned(pool: asyncpg.Pool, principal: Principal, job_id: str) -> EmbedJob:
    """The job, if the caller owns it (or is an administrator); else 404 as for none."""
    try:
        key = UUID(job_id)
    except ValueError:
        raise not_found(job_id) from None
    job = await embed_jobs.get(pool, key)
    if job is None or not (principal.is_admin or job.owner_id == principal.user_id):
        raise not_found(job_id)
    return job


def view(job: EmbedJob) -> EmbedJobOut:
    """The job as the API shows it, with this run's rate and the time left at it."""
    status = job_status(job.status)
    finished = job.done + job.failed
    rate = eta = None
    if job.run_started_at is not None and status is JobStatus.processing:
        elapsed = ((job.checkpoint_at or job.run_started_at) - job.run_started_at
                   ).total_seconds()
        ran = finished - job.run_started_done
        if elapsed > 0 and ran > 0:
            rate = round(ran / elapsed, 1)
            eta = round((job.total - finished) / rate, 1)
    return EmbedJobOut(
        id=job.id, task_id=job.id, model=str(job.request.get("embedding_model_id", "")),
        generation=job.generation, dimensions=job.dimensions, normalize=job.normalize,
        status=status, counts=JobCounts(total=job.total, done=job.done, failed=job.failed),
        tokens=job.tokens, rate=rate, eta_s=eta, input_bytes=job.input_bytes,
        results_bytes=job.results_bytes, detail=job.detail, created_at=job.created_at,
        finished_at=job.finished_at, expires_at=job.expires_at)


async def listed(pool: asyncpg.Pool, principal: Principal,
                 everyone: str | None) -> list[EmbedJob]:
    """The caller's jobs; `everyone` ("true"): every user's, for an administrator."""
    if everyone not in (None, "true", "false"):
        raise Invalid("invalid request: all must be true or false",
                      [{"loc": ["query", "all"], "msg": "not a flag", "type": "value_error"}])
    if everyone == "true" and not principal.is_admin:
        raise Forbidden("only administrators may list every user's embed jobs")
    return await embed_jobs.list_for_owner(
        pool, None if everyone == "true" else principal.user_id)


async def cancel_or_remove(pool: asyncpg.Pool, settings: Settings, job: EmbedJob) -> EmbedJob:
    """A job that has not ended is cancelled (a processing one stops at its worker's next
    checkpoint); one that has is removed, its files and its row, freeing its quota."""
    if job_status(job.status) in (JobStatus.pending, JobStatus.processing):
        await embed_jobs.request_cancel(pool, job.id)
        found = await embed_jobs.get(pool, job.id)
        assert found is not None
        return found
    remove_files(settings, job.id)
    await embed_jobs.delete(pool, job.id)
    return job


def remove_files(settings: Settings, job_id: UUID) -> None:
    shutil.rmtree(job_dir(settings, job_id), ignore_errors=True)


def results_path(settings: Settings, job: EmbedJob) -> Path:
    """The results file of a job that is done (409 before: a partial file is no result)."""
    status = job_status(job.status)
    if status is not JobStatus.done:
        raise Conflict(f"embed job {job.id} is {status.value}; its results are ready once it "
                       "is done", {"status": status.value})
    path = job_dir(settings, job.id) / RESULTS_FILE
    if not path.is_file():
        raise NotFound(f"embed job {job.id}'s results are gone (expired)")
    return path


async def jsonl_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def npy_header(rows: int, dimension: int) -> bytes:
    """The .npy header of a float32 array of `rows` x `dimension` (written before its rows
    stream, so a large job's array is never held in memory)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dimension)}
    text = repr(header).encode("latin1")
    # version 1.0: magic, version, header length; padded so the data starts 64-aligned
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


def npy_rows(path: Path, *, ids: bool) -> AsyncIterator[bytes]:
    """The embedded rows of a results file, in order: float32 rows (`ids` False) or their
    ids, one JSON value a line (`ids` True); failed inputs are left out of both."""
    async def rows() -> AsyncIterator[bytes]:
        out: list[bytes] = []
        with path.open("rb") as source:
            for line in source:
                row = orjson.loads(line)
                if "embedding" not in row:
                    continue
                if ids:
                    out.append(orjson.dumps(row["id"]) + b"\n")
                else:
                    out.append(np.asarray(row["embedding"], dtype="<f4").tobytes())
                if len(out) >= 1024:
                    yield b"".join(out)
                    out.clear()
        if out:
            yield b"".join(out)
    return rows()


