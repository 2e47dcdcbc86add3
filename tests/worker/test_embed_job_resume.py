"""Issue 30, must-show 3: a bulk embedding job survives a kill -9 of its worker.

A real worker process runs the job against hashing replicas slowed to a known capacity,
is killed mid-job, and a second worker resumes it from its checkpoint once the lease has
expired: every input appears exactly once in the results, in input order, and the inputs
that cannot be embedded (bad lines, one too long for the model) are there with a reason.
"""

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import orjson
import pytest

from db import embed_jobs
from schemas.embed_jobs import RESULTS_FILE, job_dir
from schemas.settings import Settings
from tests.conftest import Proc, wait_task

INPUTS = 3000
# The hashing backend's longest input, in words (model_server/backends.py).
TOO_LONG = " ".join(["word"] * 600)


def corpus() -> tuple[bytes, list[Any]]:
    """The job's input and the ids its results must hold, in order (every line is one)."""
    lines, ids = [], []
    for n in range(INPUTS):
        if n == 100:
            lines.append(b"this line is not json")
            ids.append(None)
        elif n == 200:
            lines.append(orjson.dumps({"id": f"s{n}", "text": TOO_LONG}))
            ids.append(f"s{n}")
        elif n == 300:
            lines.append(orjson.dumps({"id": n, "text": ""}))
            ids.append(n)
        else:
            lines.append(orjson.dumps({"id": f"s{n}", "text": f"sentence number {n} of many"}))
            ids.append(f"s{n}")
    return b"\n".join(lines) + b"\n", ids


async def _deploy(http: aiohttp.ClientSession, api: str, headers: dict[str, str]) -> None:
    async with http.post(f"{api}/deploy", json={"embedding_model_id": "alice/corpus"},
                         headers=headers) as resp:
        assert resp.status == 202, await resp.text()
        task_id = (await resp.json())["task_id"]
    async with aiohttp.ClientSession(headers=headers) as signed_in:
        task = await wait_task(signed_in, api, "deploy", task_id)
    assert task["status"] == "done", task


async def _progress(pool: asyncpg.Pool, job_id: UUID, at_least: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = await embed_jobs.get(pool, job_id)
        assert job is not None
        if job.done + job.failed >= at_least:
            return job.done + job.failed
        await asyncio.sleep(0.02)
    raise TimeoutError(f"the job did not reach {at_least} inputs")


async def _past_checkpoint(pool: asyncpg.Pool, settings: Settings, job_id: UUID,
                           timeout_s: float) -> None:
    """Until the results file holds more than the checkpoint does: the kill then leaves
    bytes the resumed run must cut."""
    path = job_dir(settings, job_id) / RESULTS_FILE
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = await embed_jobs.get(pool, job_id)
        assert job is not None
        if path.stat().st_size > job.results_bytes:
            return
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_kill_9_mid_job_resumes_from_the_checkpoint(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, admin_headers: dict[str, str], settings: Settings) -> None:
    await hashing_model("corpus", test_service_time_ms=40, test_concurrency=2)
    fast = {"lease_s": 2, "reconcile_interval_s": 0.3, "embed_batch_size": 16,
            "embed_inflight_per_replica": 2}
    first = spawn("worker", **fast)
    await _deploy(http, api, admin_headers)
    body, ids = corpus()
    async with http.post(f"{api}/api/v2/embed-jobs?model=alice/corpus&dimensions=32",
                         data=body, headers={**admin_headers,
                                             "Content-Type": "application/x-ndjson"}) as resp:
        assert resp.status == 202, await resp.text()
        job = await resp.json()
    assert job["counts"] == {"total": INPUTS, "done": 0, "failed": 0}
    job_id = UUID(job["id"])
    reached = await _progress(pool, job_id, INPUTS // 3, timeout_s=60)
    await _past_checkpoint(pool, settings, job_id, timeout_s=10)
    first.kill(signal.SIGKILL)
    first.popen.wait()
    killed_at = await embed_jobs.get(pool, job_id)
    assert killed_at is not None and killed_at.status == "processing"
    assert killed_at.done + killed_at.failed < INPUTS, "killed before the job's end"
    written = (job_dir(settings, job_id) / RESULTS_FILE).stat().st_size
    assert written >= killed_at.results_bytes, "the checkpoint never runs ahead of the file"

    spawn("worker", **fast)
    deadline = time.monotonic() + 90
    while True:
        async with http.get(f"{api}/api/v2/embed-jobs/{job_id}", headers=admin_headers) as r:
            shown = await r.json()
        if shown["status"] not in ("pending", "processing"):
            break
        assert time.monotonic() < deadline, shown
        await asyncio.sleep(0.2)
    assert shown["status"] == "done", shown
    assert shown["counts"] == {"total": INPUTS, "done": INPUTS - 3, "failed": 3}
    attempts = await pool.fetchval("SELECT attempts FROM tasks WHERE id = $1", job_id)
    assert attempts == 2, "resumed once, by the second worker"

    async with http.get(f"{api}/api/v2/embed-jobs/{job_id}/results",
                        headers=admin_headers) as resp:
        assert resp.status == 200
        rows = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert [row["id"] for row in rows] == ids, "every input once, in input order"
    failed = {n: row["error"] for n, row in enumerate(rows) if "error" in row}
    assert set(failed) == {100, 200, 300}
    assert "not JSON" in failed[100]
    assert "tokens long" in failed[200], failed[200]
    assert "empty" in failed[300]
    assert all(len(row["embedding"]) == 32 for row in rows if "embedding" in row)
    print(f"\nembed job: killed at {reached}+ of {INPUTS} inputs (checkpoint "
          f"{killed_at.done + killed_at.failed}, {written - killed_at.results_bytes} bytes written "
          f"past it, cut on resume); resumed to {len(rows)} results, each id once")


async def test_a_running_job_is_cancelled_at_its_next_checkpoint(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, admin_headers: dict[str, str]) -> None:
    await hashing_model("corpus", test_service_time_ms=40, test_concurrency=2)
    spawn("worker", embed_batch_size=16, embed_inflight_per_replica=2)
    await _deploy(http, api, admin_headers)
    body, _ = corpus()
    async with http.post(f"{api}/api/v2/embed-jobs?model=alice/corpus", data=body,
                         headers={**admin_headers, "Content-Type": "application/x-ndjson"}) as r:
        job_id = UUID((await r.json())["id"])
    await _progress(pool, job_id, 200, timeout_s=60)
    async with http.delete(f"{api}/api/v2/embed-jobs/{job_id}", headers=admin_headers) as r:
        assert r.status == 200
    deadline = time.monotonic() + 10
    while (job := await embed_jobs.get(pool, job_id)) is not None and job.status == "processing":
        assert time.monotonic() < deadline, "the worker never stopped"
        await asyncio.sleep(0.1)
    assert job is not None and job.status == "canceled"
    assert job.detail == "cancelled by its owner" and job.expires_at is not None
    assert 200 <= job.done + job.failed < INPUTS
    async with http.get(f"{api}/api/v2/embed-jobs/{job_id}/results", headers=admin_headers) as r:
        assert r.status == 409, "a cancelled job has no results to read"


async def test_a_job_runs_in_slices_each_resumed_from_its_checkpoint(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any, admin_headers: dict[str, str]) -> None:
    """A job longer than its slice goes back in the queue at its checkpoint and goes on:
    done, every id once, and the slices not counted as attempts."""
    await hashing_model("corpus", test_service_time_ms=40, test_concurrency=2)
    spawn("worker", embed_batch_size=16, embed_inflight_per_replica=2, embed_slice_s=0.7)
    await _deploy(http, api, admin_headers)
    body, ids = corpus()
    async with http.post(f"{api}/api/v2/embed-jobs?model=alice/corpus", data=body,
                         headers={**admin_headers, "Content-Type": "application/x-ndjson"}) as r:
        job_id = UUID((await r.json())["id"])
    starts = set()
    deadline = time.monotonic() + 90
    while (job := await embed_jobs.get(pool, job_id)) is not None \
            and job.status in ("pending", "processing"):
        assert time.monotonic() < deadline, job
        if job.run_started_at is not None:
            starts.add(job.run_started_at)
        await asyncio.sleep(0.05)
    assert job is not None and job.status == "done", job
    assert len(starts) >= 3, f"the job ran in slices ({len(starts)} runs seen)"
    assert await pool.fetchval("SELECT attempts FROM tasks WHERE id = $1", job_id) <= 1
    async with http.get(f"{api}/api/v2/embed-jobs/{job_id}/results",
                        headers=admin_headers) as resp:
        rows = [orjson.loads(line) for line in (await resp.read()).splitlines()]
    assert [row["id"] for row in rows] == ids
