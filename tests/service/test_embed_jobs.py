"""Issue 30: the embed-jobs API — accepting a job (its generation pinned), its 4xx, who may
see a job, cancel and remove, the quotas, and the results' forms (JSONL, .npy and ids).

No worker runs here: a job stays pending unless a test writes its end as a worker would
(tests/worker/test_embed_job_resume.py runs real jobs)."""

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import numpy as np
import orjson
import pytest

from db import deployments, permissions, replicas
from schemas.embed_jobs import RESULTS_FILE
from schemas.models import ModelSource
from schemas.tokens import issue_job_token
from service.domain.registration import register
from tests.conftest import TEST_SECRET_KEY
from tests.support.accounts import call, make_user
from tests.support.shared_api import api_process

NDJSON = {"Content-Type": "application/x-ndjson"}
CORPUS = b'{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n\n{"id": 3, "text": "x"}'
MAX_JOBS = 3


@pytest.fixture(scope="module")
async def embed_api(database_url: str, backing: dict[str, str],
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[str, Path]]:
    """The module's API with small embed quotas; (its URL, its state folder)."""
    folder = tmp_path_factory.mktemp("embed-api")
    async with api_process(database_url, backing, folder, quota_embed_jobs=MAX_JOBS,
                           quota_embed_store_mb=1, embed_max_inputs=1000) as base:
        yield base, folder / "state"


@pytest.fixture
async def api(embed_api: tuple[str, Path], clean: None) -> str:
    return embed_api[0]


async def _serving(pool: asyncpg.Pool, owner: str, name: str, access: str = "public") -> UUID:
    """A model with a serving generation (1), as a finished rollout leaves it."""
    model = await register(pool, owner, name, ModelSource(backend="hashing", dimension=8),
                           access)
    _, generation = await deployments.begin_generation(pool, model.id, name)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model.id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "stub", "http://127.0.0.1:9")
    await deployments.switch(pool, model.id, generation, name, {})
    return model.id


async def _post(http: aiohttp.ClientSession, api: str, query: str, body: bytes = CORPUS,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
    return await call(http, "POST", f"{api}/api/v2/embed-jobs?{query}", data=body,
                      headers={**NDJSON, **(headers or {})})


async def test_a_job_is_accepted_pinned_to_the_serving_generation(
        api: str, pool: asyncpg.Pool, http: aiohttp.ClientSession) -> None:
    await _serving(pool, "alice", "corpus")
    _, alice = await make_user(pool, "alice")
    status, job = await _post(http, api, "model=alice/corpus&dimensions=4&normalize=false",
                              headers=alice)
    assert status == 202, job
    assert job["id"] == job["task_id"]
    assert job["status"] == "pending" and job["generation"] == 1
    assert job["counts"] == {"total": 3, "done": 0, "failed": 0}, "blank lines are no inputs"
    assert (job["dimensions"], job["normalize"], job["model"]) == (4, False, "alice/corpus")
    task = await pool.fetchrow("SELECT kind, status, created_by FROM tasks WHERE id = $1",
                               UUID(job["id"]))
    assert dict(task) == {"kind": "embed", "status": "pending",
                          "created_by": (await make_user(pool, "alice"))[0].id}
    status, shown = await call(http, "GET", f"{api}/api/v2/embed-jobs/{job['id']}",
                               headers=alice)
    assert status == 200 and shown["id"] == job["id"]
    status, listed = await call(http, "GET", f"{api}/api/v2/embed-jobs", headers=alice)
    assert [j["id"] for j in listed] == [job["id"]]


async def test_a_deploy_neither_cancels_nor_waits_for_a_job(
        api: str, pool: asyncpg.Pool, http: aiohttp.ClientSession) -> None:
    """A job runs beside the model's rollouts: a newer deploy leaves a pending job be."""
    model_id = await _serving(pool, "alice", "corpus")
    _, alice = await make_user(pool, "alice")
    _, job = await _post(http, api, "model=alice/corpus", headers=alice)
    status, _ = await call(http, "POST", f"{api}/deploy",
                           json={"embedding_model_id": "alice/corpus"}, headers=alice)
    assert status == 202
    assert await pool.fetchval("SELECT status FROM tasks WHERE id = $1",
                               UUID(job["id"])) == "pending"
    # both may be processing at once: the one-per-model index leaves embed jobs out
    await pool.execute("UPDATE tasks SET status = 'processing' WHERE model_id = $1", model_id)


@pytest.mark.parametrize(("query", "body", "headers", "expected"), [
    ("", CORPUS, NDJSON, 422),  # no model
    ("model=alice/nothing", CORPUS, NDJSON, 404),
    ("model=alice/idle", CORPUS, NDJSON, 409),  # no serving generation
    ("model=alice/corpus&generation=7", CORPUS, NDJSON, 409),  # not live
    ("model=alice/corpus&dimensions=0", CORPUS, NDJSON, 422),
    ("model=alice/corpus&dimensions=x", CORPUS, NDJSON, 422),
    ("model=alice/corpus&normalize=maybe", CORPUS, NDJSON, 422),
    ("model=alice/corpus&generation=2147483648", CORPUS, NDJSON, 422),
    ("model=alice/corpus", CORPUS, {"Content-Type": "text/csv"}, 415),
    ("model=alice/corpus", CORPUS, {"Content-Type": "application/json"}, 415),
    ("model=alice/corpus", b"\n \n", NDJSON, 422),  # no inputs
    ("model=alice/corpus", b'{"id": 1, "text": "a"}\n' * 1001, NDJSON, 413),  # past max inputs
    ("model=alice/corpus", b"x" * (2 << 20), NDJSON, 413),  # past the store quota (1 MB)
])
async def test_refusals(api: str, pool: asyncpg.Pool, http: aiohttp.ClientSession,
                        embed_api: tuple[str, Path], query: str, body: bytes,
                        headers: dict[str, str], expected: int) -> None:
    await _serving(pool, "alice", "corpus")
    await register(pool, "alice", "idle", ModelSource(backend="hashing"), "public")
    _, alice = await make_user(pool, "alice")
    folder = embed_api[1] / "embed-jobs"
    before = set(folder.iterdir()) if folder.exists() else set()
    status, error = await call(http, "POST", f"{api}/api/v2/embed-jobs?{query}", data=body,
                               headers={**headers, **alice})
    assert status == expected, error
    assert error["status_code"] == expected and error["message"]
    assert await pool.fetchval("SELECT count(*) FROM embed_jobs") == 0
    after = set(folder.iterdir()) if folder.exists() else set()
    assert after == before, "a refused job leaves no file"


async def test_a_job_is_its_owners_alone(api: str, pool: asyncpg.Pool,
                                         http: aiohttp.ClientSession) -> None:
    """Another user — even one who may read the model — gets 404 for a job, as for none;
    an administrator sees it; a private model's job needs read on the model to start."""
    model_id = await _serving(pool, "alice", "secret", access="private")
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    _, admin = await make_user(pool, "root", admin=True)
    status, _ = await _post(http, api, "model=alice/secret", headers=bob)
    assert status == 404, "bob may not read alice's private model"
    job_token = {"Authorization": "Bearer " + issue_job_token(TEST_SECRET_KEY, model_id, 1)}
    status, _ = await _post(http, api, "model=alice/secret", headers=job_token)
    assert status == 403, "a job token is no user"
    status, _ = await _post(http, api, "model=alice/secret")
    assert status == 401
    status, job = await _post(http, api, "model=alice/secret", headers=alice)
    assert status == 202
    url = f"{api}/api/v2/embed-jobs/{job['id']}"
    for method, path in (("GET", ""), ("GET", "/results"), ("DELETE", "")):
        status, error = await call(http, method, url + path, headers=bob)
        assert status == 404, (method, path, error)
    status, listed = await call(http, "GET", f"{api}/api/v2/embed-jobs", headers=bob)
    assert listed == []
    status, _ = await call(http, "GET", f"{api}/api/v2/embed-jobs?all=true", headers=bob)
    assert status == 403, "only administrators list everyone's jobs"
    status, _ = await call(http, "GET", f"{api}/api/v2/embed-jobs?all=yes", headers=admin)
    assert status == 422
    status, _ = await call(http, "GET", url, headers=admin)
    assert status == 200
    carol, carol_h = await make_user(pool, "carol")
    await permissions.upsert(pool, model_id, carol.id, "read", None)
    status, _ = await call(http, "GET", url, headers=carol_h)
    assert status == 404, "read access to the model is not access to a job on it"
    status, _ = await call(http, "GET", f"{api}/api/v2/tasks/{job['id']}", headers=carol_h)
    assert status == 404, "nor to the job's task"
    status, task = await call(http, "GET", f"{api}/api/v2/tasks/{job['id']}", headers=alice)
    assert status == 200 and task["kind"] == "embed"
    status, everyone = await call(http, "GET", f"{api}/api/v2/embed-jobs?all=true",
                                  headers=admin)
    assert [j["id"] for j in everyone] == [job["id"]]
    status, _ = await call(http, "GET", f"{api}/api/v2/embed-jobs/not-a-uuid", headers=alice)
    assert status == 404


async def test_cancel_then_remove_and_the_jobs_quota(
        api: str, pool: asyncpg.Pool, http: aiohttp.ClientSession,
        embed_api: tuple[str, Path]) -> None:
    await _serving(pool, "alice", "corpus")
    _, alice = await make_user(pool, "alice")
    jobs = [(await _post(http, api, "model=alice/corpus", headers=alice))[1]
            for _ in range(MAX_JOBS)]
    status, error = await _post(http, api, "model=alice/corpus", headers=alice)
    assert status == 403 and "GREENROOM_QUOTA_EMBED_JOBS" in error["message"]
    url = f"{api}/api/v2/embed-jobs/{jobs[0]['id']}"
    status, _ = await call(http, "GET", url + "/results", headers=alice)
    assert status == 409, "no results before the job is done"
    status, cancelled = await call(http, "DELETE", url, headers=alice)
    assert status == 200 and cancelled["status"] == "cancelled"
    assert (embed_api[1] / "embed-jobs" / jobs[0]["id"]).is_dir(), "kept until removed"
    status, _ = await call(http, "DELETE", url, headers=alice)
    assert status == 200
    assert not (embed_api[1] / "embed-jobs" / jobs[0]["id"]).exists()
    status, _ = await call(http, "GET", url, headers=alice)
    assert status == 404
    status, _ = await _post(http, api, "model=alice/corpus", headers=alice)
    assert status == 202, "removing a job frees its place in the quota"


async def test_results_as_jsonl_npy_and_ids(api: str, pool: asyncpg.Pool,
                                            http: aiohttp.ClientSession,
                                            embed_api: tuple[str, Path]) -> None:
    """A done job's results file (written here as the worker writes it) in its three forms:
    the .npy holds the embedded rows, the ids their ids in the same order."""
    await _serving(pool, "alice", "corpus")
    _, alice = await make_user(pool, "alice")
    _, job = await _post(http, api, "model=alice/corpus", headers=alice)
    vectors = np.random.default_rng(1).random((2, 5), dtype=np.float32)
    lines = [{"id": "a", "embedding": vectors[0]}, {"id": "b", "error": "too long"},
             {"id": 3, "embedding": vectors[1]}]
    data = b"".join(orjson.dumps(r, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n" for r in lines)
    (embed_api[1] / "embed-jobs" / job["id"] / RESULTS_FILE).write_bytes(data)
    await pool.execute("UPDATE embed_jobs SET done = 2, failed = 1, dimension = 5, "
                       "results_bytes = $2 WHERE id = $1", UUID(job["id"]), len(data))
    await pool.execute("UPDATE tasks SET status = 'done', finished_at = now() WHERE id = $1",
                       UUID(job["id"]))
    url = f"{api}/api/v2/embed-jobs/{job['id']}/results"
    async with http.get(url, headers=alice) as resp:
        assert resp.status == 200 and resp.content_type == "application/x-ndjson"
        assert await resp.read() == data
    async with http.get(url + "?format=npy", headers=alice) as resp:
        assert resp.status == 200
        array = np.load(io.BytesIO(await resp.read()))
    assert array.dtype == np.float32 and np.array_equal(array, vectors)
    async with http.get(url + "?format=ids", headers=alice) as resp:
        assert [orjson.loads(x) for x in (await resp.read()).splitlines()] == ["a", 3]
    status, _ = await call(http, "GET", url + "?format=csv", headers=alice)
    assert status == 422


async def test_a_new_job_on_an_earlier_jobs_input(api: str, pool: asyncpg.Pool,
                                                  http: aiohttp.ClientSession,
                                                  embed_api: tuple[str, Path]) -> None:
    """The same corpus again (a new generation's index) without uploading it again; only
    the caller's own earlier job may lend its input."""
    await _serving(pool, "alice", "corpus")
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    _, first = await _post(http, api, "model=alice/corpus", headers=alice)
    status, again = await call(http, "POST", f"{api}/api/v2/embed-jobs?model=alice/corpus"
                               f"&input_from={first['id']}&dimensions=8", headers=alice)
    assert status == 202, again
    assert again["counts"]["total"] == 3 and again["input_bytes"] == len(CORPUS)
    folder = embed_api[1] / "embed-jobs"
    assert (folder / again["id"] / "input.jsonl").read_bytes() == CORPUS
    status, _ = await call(http, "POST", f"{api}/api/v2/embed-jobs?model=alice/corpus"
                           f"&input_from={first['id']}", headers=bob)
    assert status == 404, "bob may not name alice's job"
    status, _ = await _post(http, api, f"model=alice/corpus&input_from={first['id']}",
                            headers=alice)
    assert status == 422, "a body beside input_from"
