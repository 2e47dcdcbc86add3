"""The authorisation matrix: every route of the route table x every kind of caller.

Generated from the route tables of the API app and the gateway app
(edge.routes.ROUTE_TABLE): a route added to any surface without a sample request here
fails the test, and so does a route registered on the router outside the table.
Expected answers: 401 for no, a malformed or an expired token; 404 on a model the caller
may not read, exactly as for a missing one (review L1: the private model's existence is not
theirs to learn), and so for the seed-000 permissions route and the gateway's routes even
without a token; 403 for too little permission on a model the caller knows; 2xx otherwise.
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import pytest
from aiohttp import web
from arq import func
from arq.connections import RedisSettings
from arq.worker import Worker
from redis.asyncio import Redis

from db import deployments, generations, models, permissions, replicas, revisions
from edge.auth.rules import Access, Caller, ModelFrom
from edge.route_spec import RouteSpec
from edge.routes import ROUTE_TABLE
from gateway.app import create_gateway_app
from schemas.embed_jobs import RESULTS_FILE, job_dir
from schemas.queue import (
    JOB_REPLICA_LOGS,
    LOGS_RESULT_KEEP_S,
    QUEUE_NAME,
    ROUTES_CHANNEL,
    decode_job,
    encode_job,
)
from schemas.settings import Settings
from schemas.tokens import issue_job_token, issue_update_token, issue_user_token
from service.app import create_app
from tests.conftest import TEST_SECRET_KEY, bearer, start_gateway
from tests.support.accounts import call, eventually, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.services import tiny_model_archive
from worker.runtimes.process import free_port

SERVED_NAME = "private-app"
OK = "2xx"
ANON = ("none", "malformed", "expired")


@dataclass
class World:
    api: str
    gateway: str
    pool: asyncpg.Pool
    model: UUID
    headers: dict[str, dict[str, str]] = field(default_factory=dict)
    deploy_task: str = ""
    delete_task: str = ""
    scale_task: str = ""
    embed_job: str = ""
    rollback_task: str = ""


Sample = Callable[[World, str], Awaitable[tuple[str, dict[str, Any]]]]


def fixed(path: str, **kw: Any) -> Sample:
    async def sample(world: World, who: str) -> tuple[str, dict[str, Any]]:
        return path.format(m=world.model, name=SERVED_NAME, dt=world.deploy_task,
                           lt=world.delete_task, st=world.scale_task,
                           rt=world.rollback_task), dict(kw)
    return sample


def unique_body(make: Callable[[], dict[str, Any]], path: str) -> Sample:
    async def sample(world: World, who: str) -> tuple[str, dict[str, Any]]:
        return path.format(m=world.model), {"json": make()}
    return sample


async def _revoke_sample(world: World, who: str) -> tuple[str, dict[str, Any]]:
    """The caller's own key when it can make one; else some key of alice's."""
    async with aiohttp.ClientSession(headers=world.headers[who]) as http:
        status, body = await call(http, "POST", world.api + "/api/v2/auth/api-keys",
                                  json={"name": "to-revoke"})
    if status != 201:
        async with aiohttp.ClientSession(headers=world.headers["owner"]) as http:
            _, body = await call(http, "POST", world.api + "/api/v2/auth/api-keys",
                                 json={"name": "alices"})
    return f"/api/v2/auth/api-keys/{body['id']}", {}


async def _revoke_grant_sample(world: World, who: str) -> tuple[str, dict[str, Any]]:
    eve = await world.pool.fetchval("SELECT id FROM users WHERE username = 'eve'")
    await permissions.upsert(world.pool, world.model, eve, "read", None)
    return f"/api/v2/models/{world.model}/permissions/eve", {}


# The users behind the callers that are users (make_user in _principals).
USERNAMES = {"expired": "alice", "other_user": "bob", "reader": "carol",
             "expired_grant": "dave", "owner": "alice", "admin": "admin"}
_HASHES: dict[str, str] = {}


def _hash_once(password: str) -> str:
    if password not in _HASHES:
        from service.domain.accounts import hash_password

        _HASHES[password] = hash_password(password)
    return _HASHES[password]


async def _password_sample(world: World, who: str) -> tuple[str, dict[str, Any]]:
    """The caller's current password is made a known one, so a user's change succeeds."""
    if who in USERNAMES:
        await world.pool.execute("UPDATE users SET password_hash = $2 WHERE username = $1",
                                 USERNAMES[who], _hash_once("matrix-pass-1"))
    return "/api/v2/users/me/password", {
        "json": {"current_password": "matrix-pass-1", "new_password": "matrix-pass-2"}}


async def _restore_accounts(world: World) -> None:
    """Undo what a password change, a logout or a disable did to the callers' accounts: the
    matrix's tokens are valid again, and alice's password is the login sample's."""
    await world.pool.execute("UPDATE users SET token_version = 0, disabled_at = NULL")
    await world.pool.execute("UPDATE users SET password_hash = $1 WHERE username = 'alice'",
                             _hash_once("alice-pass-1"))


async def _save_sample(world: World, who: str) -> tuple[str, dict[str, Any]]:
    """Save a copy of the model as it was registered: the upload sample may have moved its
    source into the store, whose folder only its owner may name (tested in test_model_upload);
    here the answer is about permission alone."""
    await models.update_source(world.pool, world.model, {"backend": "hashing", "dimension": 384})
    return f"/api/v2/deploy/{world.model}/save", {
        "json": {"model_name": f"saved-{uuid4().hex[:8]}"}}




def _ndjson() -> aiohttp.BytesPayload:
    return aiohttp.BytesPayload(b'{"id": 1, "text": "a"}\n', content_type="application/x-ndjson")


async def _embed_post_sample(world: World) -> tuple[str, dict[str, Any]]:
    return f"/api/v2/embed-jobs?model={world.model}", {"data": _ndjson()}


async def _embed_job_sample(world: World, tail: str) -> tuple[str, dict[str, Any]]:
    """The owner's done job (made in the test's set-up)."""
    return f"/api/v2/embed-jobs/{world.embed_job}{tail}", {}


async def _new_embed_job_sample(world: World) -> tuple[str, dict[str, Any]]:
    """A new job of the owner's for each caller: a DELETE cancels it."""
    async with aiohttp.ClientSession(headers=world.headers["owner"]) as http:
        status, job = await call(http, "POST", world.api + "/api/v2/embed-jobs?model="
                                 f"{world.model}", data=_ndjson())
    assert status == 202, job
    return f"/api/v2/embed-jobs/{job['id']}", {}


M = {"embedding_model_id": "{m}"}
SAMPLES: dict[tuple[str, str], Sample] = {
    ("GET", "/healthz"): fixed("/healthz"),
    ("GET", "/readyz"): fixed("/readyz"),
    ("GET", "/metrics"): fixed("/metrics"),
    ("GET", "/openapi.json"): fixed("/openapi.json"),
    ("GET", "/docs"): fixed("/docs"),
    ("GET", "/docs/static/{name}"): fixed("/docs/static/swagger-ui.css"),
    ("POST", "/deploy"): fixed("/deploy", json=M),
    ("GET", "/deploy/{task_id}"): fixed("/deploy/{dt}"),
    ("GET", "/deploy-status/{embedding_model_id}"): fixed("/deploy-status/{m}"),
    ("POST", "/delete"): fixed("/delete", json=M),
    ("GET", "/delete/{task_id}"): fixed("/delete/{lt}"),
    ("GET", "/delete-status/{embedding_model_id}"): fixed("/delete-status/{m}"),
    ("POST", "/scale"): fixed("/scale", json={**M, "config": {"replicas": 1}}),
    ("GET", "/scale/{task_id}"): fixed("/scale/{st}"),
    ("POST", "/api/v2/deploy/{model_id}/scale"): fixed("/api/v2/deploy/{m}/scale",
                                                       json={"replicas": 1}),
    ("POST", "/v1/embeddings"): fixed("/v1/embeddings",
                                      json={"model": SERVED_NAME, "input": "hello"}),
    ("POST", "/serve/{name}/embed"): fixed("/serve/{name}/embed", json={"inputs": "hello"}),
    ("POST", "/serve/{name}"): fixed("/serve/{name}", json={"inputs": "hello"}),
    ("POST", "/serve/{name}/"): fixed("/serve/{name}/", json={"inputs": "hello"}),
    ("POST", "/serve/{name}/embed_all"): fixed("/serve/{name}/embed_all", json={"inputs": "a"}),
    ("POST", "/serve/{name}/tokenize"): fixed("/serve/{name}/tokenize", json={"inputs": "a"}),
    ("POST", "/serve/{name}/decode"): fixed("/serve/{name}/decode", json={"ids": [1, 2]}),
    ("POST", "/serve/{name}/v1/embeddings"): fixed("/serve/{name}/v1/embeddings",
                                                   json={"input": "hello"}),
    ("GET", "/serve/{name}/health"): fixed("/serve/{name}/health"),
    ("GET", "/serve/{name}/info"): fixed("/serve/{name}/info"),
    ("GET", "/serve/{name}/metrics"): fixed("/serve/{name}/metrics"),
    ("POST", "/serve/{name}/feedback"): fixed("/serve/{name}/feedback",
                                              json={"event": "upvote", "query": "q"}),
    ("POST", "/api/v2/auth/login"): fixed("/api/v2/auth/login",
                                          json={"username": "alice", "password": "alice-pass-1"}),
    ("POST", "/api/v2/users"): unique_body(
        lambda: {"username": f"u{uuid4().hex[:10]}", "password": "password-123"},
        "/api/v2/users"),
    ("GET", "/api/v2/users"): fixed("/api/v2/users"),
    ("GET", "/api/v2/users/me"): fixed("/api/v2/users/me"),
    ("POST", "/api/v2/users/me/password"): _password_sample,
    ("PUT", "/api/v2/users/{username}/status"): fixed("/api/v2/users/eve/status",
                                                      json={"disabled": True}),
    ("POST", "/api/v2/auth/logout"): fixed("/api/v2/auth/logout"),
    ("GET", "/api/v2/users/me/usage"): fixed("/api/v2/users/me/usage"),
    ("GET", "/api/v2/users/{username}/usage"): fixed("/api/v2/users/alice/usage"),
    ("PUT", "/api/v2/users/{username}/quotas"): fixed("/api/v2/users/alice/quotas", json={}),
    ("POST", "/api/v2/auth/api-keys"): fixed("/api/v2/auth/api-keys", json={"name": "k"}),
    ("GET", "/api/v2/auth/api-keys"): fixed("/api/v2/auth/api-keys"),
    ("DELETE", "/api/v2/auth/api-keys/{key_id}"): _revoke_sample,
    ("POST", "/api/v2/models"): unique_body(
        lambda: {"name": f"m{uuid4().hex[:10]}", "source": {"backend": "hashing"}},
        "/api/v2/models"),
    ("GET", "/api/v2/models"): fixed("/api/v2/models"),
    ("GET", "/api/v2/models/{model_id}/permissions"): fixed("/api/v2/models/{m}/permissions"),
    ("PUT", "/api/v2/models/{model_id}/permissions"): fixed(
        "/api/v2/models/{m}/permissions", json={"username": "eve", "permission": "read"}),
    ("DELETE", "/api/v2/models/{model_id}/permissions/{username}"): _revoke_grant_sample,
    ("GET", "/api/v2/models/{model_id}"): fixed("/api/v2/models/{m}"),
    ("PATCH", "/api/v2/models/{model_id}"): fixed("/api/v2/models/{m}", json={}),
    ("GET", "/api/v2/models/{model_id}/revisions"): fixed("/api/v2/models/{m}/revisions"),
    ("GET", "/api/v2/models/{model_id}/generations"): fixed("/api/v2/models/{m}/generations"),
    ("POST", "/api/v2/deploy/{model_id}/rollback"): fixed("/api/v2/deploy/{m}/rollback"),
    ("GET", "/rollback/{task_id}"): fixed("/rollback/{rt}"),
    ("POST", "/api/v2/models/{model_id}/upload"): fixed("/api/v2/models/{m}/upload",
                                                        data=tiny_model_archive()),
    ("POST", "/api/v2/deploy/update-status"): fixed("/api/v2/deploy/update-status",
                                                    json={"status": "complete"}),
    ("POST", "/api/v2/deploy/log"): fixed("/api/v2/deploy/log",
                                          json={"level": "info", "message": "hello"}),
    ("GET", "/api/v2/deploy/log"): fixed("/api/v2/deploy/log",
                                         json={"level": "info", "message": "hello"}),
    ("POST", "/api/v2/train/update-status"): fixed("/api/v2/train/update-status",
                                                   json={"status": "complete"}),
    ("GET", "/api/v2/deploy/{model_id}/status"): fixed("/api/v2/deploy/{m}/status"),
    ("GET", "/api/v2/deploy/{model_id}/status-internal"): fixed(
        "/api/v2/deploy/{m}/status-internal"),
    ("GET", "/api/v2/deploy/{model_id}/logs"): fixed("/api/v2/deploy/{m}/logs"),
    ("GET", "/api/v2/deployments/{model_id}/series"): fixed(
        "/api/v2/deployments/{m}/series?window=15m"),
    ("POST", "/api/v2/deploy/{model_id}/save"): _save_sample,
    ("POST", "/api/v2/deploy/{model_id}"): fixed("/api/v2/deploy/{m}", json={}),
    ("DELETE", "/api/v2/deploy/{model_id}"): fixed("/api/v2/deploy/{m}"),
    ("GET", "/api/v1/deploy/permissions/{model_id}"): fixed("/api/v1/deploy/permissions/{m}"),
    ("POST", "/api/v1/deploy/run"): fixed("/api/v1/deploy/run",
                                          json={"model_identifier": "{m}"}),
    ("GET", "/api/v1/deploy/feedbacks"): fixed("/api/v1/deploy/feedbacks?model_identifier={m}"),
    ("GET", "/api/v1/deploy/status"): fixed("/api/v1/deploy/status?model_identifier={m}"),
    ("POST", "/api/v1/deploy/stop"): fixed("/api/v1/deploy/stop",
                                           json={"model_identifier": "{m}"}),
    ("GET", "/api/v1/deploy/logs"): fixed("/api/v1/deploy/logs?model_identifier={m}"),
    ("GET", "/api/v2/deployments"): fixed("/api/v2/deployments"),
    ("GET", "/api/v2/deployments/{model_id}"): fixed("/api/v2/deployments/{m}"),
    ("GET", "/api/v2/deployments/{model_id}/replica-logs"): fixed(
        "/api/v2/deployments/{m}/replica-logs"),
    ("GET", "/api/v2/tasks/{task_id}"): fixed("/api/v2/tasks/{dt}"),
    ("GET", "/api/v2/changes"): fixed("/api/v2/changes?timeout=0.2"),
    ("GET", "/ui"): fixed("/ui"),
    ("GET", "/ui/"): fixed("/ui/"),
    ("GET", "/ui/static/{name}"): fixed("/ui/static/app.js"),
    ("POST", "/api/v2/embed-jobs"): lambda world, who: _embed_post_sample(world),
    ("GET", "/api/v2/embed-jobs"): fixed("/api/v2/embed-jobs"),
    ("GET", "/api/v2/embed-jobs/{job_id}"): lambda world, who: _embed_job_sample(world, ""),
    ("GET", "/api/v2/embed-jobs/{job_id}/results"):
        lambda world, who: _embed_job_sample(world, "/results"),
    ("DELETE", "/api/v2/embed-jobs/{job_id}"): lambda world, who: _new_embed_job_sample(world),
}

# Routes that revoke the caller's tokens (or disable a user): the accounts are put back after
# each request, so the next caller's token is valid again.
RESTORE = {("POST", "/api/v2/users/me/password"), ("PUT", "/api/v2/users/{username}/status"),
           ("POST", "/api/v2/auth/logout")}

# Callers: the nine of the issue, plus the model's own job and update tokens so the
# job-only routes show their 2xx too.
PRINCIPALS = ["none", "malformed", "expired", "other_user", "reader", "expired_grant",
              "owner", "admin", "foreign_job", "own_job", "own_update"]
ALLOWED: dict[str, set[str]] = {
    "user": {"other_user", "reader", "expired_grant", "owner", "admin"},
    "admin": {"admin"},
    "read": {"reader", "owner", "admin", "own_job"},
    "inference": {"reader", "owner", "admin", "own_job"},
    "write": {"owner", "admin"},
    "owner": {"owner", "admin"},
    "job": {"foreign_job", "own_job"},  # a job token acts on its own model only
    "job_model": {"own_job"},
    "update": {"own_update"},
    "user_read": {"reader", "owner", "admin"},
    "own": {"owner", "admin"},  # a user's own thing (an embed job), and administrators
}


# Who may learn that the private model exists: its readers and the tokens issued for it.
KNOWS = {"reader", "owner", "admin", "own_job", "own_update"}


def expected(access: Access, who: str) -> str:
    auth, on_model = access.name, access.model in (ModelFrom.request, ModelFrom.serving)
    if auth == "public" or (auth == "optional" and not on_model):
        return OK
    if auth == "optional":
        # a bad token counts as none (seed 000's no-throw check); none cannot know the model
        return OK if who in KNOWS else "404"
    if auth == "inference" and who == "none":
        return "404"  # the gateway: no token, as for a missing deployment
    if who in ANON:
        return "401"
    if access.caller is Caller.user and who in ("foreign_job", "own_job", "own_update"):
        return "403"  # a route for users refuses another kind of caller before its model
    if auth == "own" and who not in ALLOWED[auth]:
        return "404"  # another user's job answers as a missing one
    # a job-only route refuses any other kind of caller before it looks at the model
    hidden = who not in KNOWS and (auth != "job_model" or who == "foreign_job")
    if on_model and hidden:
        return "404"
    return OK if who in ALLOWED[auth] else "403"


def _template(spec: RouteSpec) -> str:
    """The route's path with regex parts dropped: /x/{model_id:...}/y → /x/{model_id}/y."""
    out, depth, skipping = [], 0, False
    for ch in spec.path:
        if ch == "{":
            depth += 1
            if depth == 1:
                skipping = False
        elif ch == "}":
            depth -= 1
            if depth == 0:
                skipping = False
        elif ch == ":" and depth == 1:
            skipping = True
            continue
        if not skipping or (ch == "}" and depth == 0):
            out.append(ch)
    return "".join(out)


def _app_table(app: web.Application) -> list[RouteSpec]:
    table: list[RouteSpec] = app[ROUTE_TABLE]
    registered = {(r.method, r.resource.canonical if r.resource else "")
                  for r in app.router.routes()}
    assert len(registered) == len(table), "every route is registered through the table"
    return table


def route_tables(settings: Settings) -> dict[str, list[RouteSpec]]:
    """Each process's routes: the API's and the gateway's."""
    return {"api": _app_table(create_app(settings)),
            "gateway": _app_table(create_gateway_app(settings))}


def route_table(settings: Settings) -> list[RouteSpec]:
    return [spec for table in route_tables(settings).values() for spec in table]


def test_every_route_has_a_sample_and_an_auth_rule(settings: Settings) -> None:
    table = route_table(settings)
    keys = {(spec.method, _template(spec)) for spec in table}
    assert keys == set(SAMPLES), f"missing samples: {keys - set(SAMPLES)}; " \
                                 f"stale: {set(SAMPLES) - keys}"
    for spec in table:
        assert spec.access.name in ("public", "optional") or spec.access.name in ALLOWED, spec


def test_logs_routes_are_read_as_the_seeds_say(settings: Settings) -> None:
    """Seeds 000 and 001 give a model's readers its logs; what a replica prints can carry
    the model's secrets (review M9), so the worker takes them out (tests/service/
    test_logs_jobs.py) rather than the routes asking for more than the seeds."""
    logs = [spec for spec in route_table(settings) if "logs" in spec.path
            and spec.access.caller != "job"]
    assert {(s.method, _template(s)) for s in logs} == {
        ("GET", "/api/v2/deploy/{model_id}/logs"), ("GET", "/api/v1/deploy/logs"),
        ("GET", "/api/v2/deployments/{model_id}/replica-logs")}
    assert all(spec.access.name == "read" for spec in logs), logs


@contextlib.asynccontextmanager
async def stub_replica() -> AsyncIterator[str]:
    """A stand-in model server the gateway can route to (no worker runs in this test)."""
    async def embed(request: web.Request) -> web.Response:
        return web.json_response([[0.0, 1.0]])

    async def openai(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": []})

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/embed", embed)
    app.router.add_post("/", embed)
    app.router.add_post("/v1/embeddings", openai)
    for path in ("/embed_all", "/tokenize", "/decode"):
        app.router.add_post(path, ok)
    for path in ("/health", "/info", "/metrics"):
        app.router.add_get(path, ok)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port("127.0.0.1")
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def logs_worker(redis_url: str) -> AsyncIterator[None]:
    """An arq worker answering replica_logs only, so the logs routes can show their 2xx."""
    async def replica_logs(ctx: dict[str, Any], model_id: str, tail: int) -> list[Any]:
        return [{"replica_id": "r", "generation": 1, "stdout": "out", "stderr": "err"}]

    worker = Worker(functions=[func(replica_logs, name=JOB_REPLICA_LOGS,
                                    keep_result=LOGS_RESULT_KEEP_S)],
                    queue_name=QUEUE_NAME, redis_settings=RedisSettings.from_dsn(redis_url),
                    job_serializer=encode_job, job_deserializer=decode_job,
                    poll_delay=0.05, handle_signals=False)
    running = asyncio.create_task(worker.async_run())
    try:
        yield
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await worker.close()


async def _serve_model(pool: asyncpg.Pool, model_id: UUID, endpoint: str) -> int:
    """Make the private model `serving` at the stub, as a finished rollout would, after an
    earlier generation that served (a rollback's target)."""
    revision = await revisions.for_source(pool, model_id, {"backend": "hashing"}, "sha256:0")
    _, earlier = await deployments.begin_generation(pool, model_id, SERVED_NAME)
    await generations.pin(pool, model_id, earlier, revision.number, {})
    await generations.mark_served(pool, model_id, earlier)
    _, generation = await deployments.begin_generation(pool, model_id, SERVED_NAME)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "stub", endpoint)
    await deployments.switch(pool, model_id, generation, SERVED_NAME, {})
    return generation


async def _principals(world: World, pool: asyncpg.Pool, admin: dict[str, str],
                      model: UUID, generation: int, hashing_model: Any) -> None:
    alice, owner = await make_user(pool, "alice", password="alice-pass-1")
    _, other = await make_user(pool, "bob")
    reader, reader_h = await make_user(pool, "carol")
    stale, stale_h = await make_user(pool, "dave")
    await make_user(pool, "eve")
    now = datetime.now(UTC)
    await permissions.upsert(pool, model, reader.id, "read", now + timedelta(days=1))
    await permissions.upsert(pool, model, stale.id, "read", now - timedelta(minutes=1))
    foreign = await hashing_model("foreign")
    await replicas.insert(pool, replica_id=uuid4(), model_id=foreign, generation=1,
                          task_id=None, runtime="process")
    world.headers = {
        "none": {}, "malformed": {"Authorization": "Bearer not-a-token"},
        "expired": bearer(issue_user_token(TEST_SECRET_KEY, alice.id, timedelta(seconds=-5))),
        "other_user": other, "reader": reader_h, "expired_grant": stale_h, "owner": owner,
        "admin": admin,
        "foreign_job": bearer(issue_job_token(TEST_SECRET_KEY, foreign, 1)),
        "own_job": bearer(issue_job_token(TEST_SECRET_KEY, model, generation)),
        "own_update": bearer(issue_update_token(TEST_SECRET_KEY, model)),
    }


def _outcome(status: int) -> str:
    return OK if 200 <= status < 300 else str(status)


@pytest.mark.timeout(240)
async def test_authorisation_matrix(api: str, pool: asyncpg.Pool, settings: Settings,
                                    anon_http: aiohttp.ClientSession, hashing_model: Any,
                                    admin_headers: dict[str, str], spawn: Any,
                                    http: aiohttp.ClientSession) -> None:
    await make_user(pool, "alice", password="alice-pass-1")
    model = await hashing_model("private-one")
    await pool.execute("UPDATE models SET access_level = 'private' WHERE id = $1", model)
    world = World(api, await start_gateway(spawn, http), pool, model)
    async with stub_replica() as endpoint, logs_worker(settings.require_redis_url()):
        generation = await _serve_model(pool, model, endpoint)
        await _principals(world, pool, admin_headers, model, generation, hashing_model)
        await _announce_and_wait(world, anon_http, settings.require_redis_url())
        for kind in ("deploy", "delete"):
            _, task = await call(anon_http, "POST", f"{api}/{kind}", headers=admin_headers,
                                 json={"embedding_model_id": str(model)})
            setattr(world, f"{kind}_task", task["task_id"])
        _, task = await call(anon_http, "POST", f"{api}/api/v2/deploy/{model}/scale",
                             headers=admin_headers, json={"replicas": 1})
        world.scale_task = task["task_id"]
        world.embed_job = await _done_embed_job(world, settings)
        _, task = await call(anon_http, "POST", f"{api}/api/v2/deploy/{model}/rollback",
                             headers=admin_headers)
        world.rollback_task = task["task_id"]
        mismatches = await _run_matrix(world, anon_http, route_tables(settings))
    assert not mismatches, "\n".join(mismatches)


async def _done_embed_job(world: World, settings: Settings) -> str:
    """An embed job of the owner's, ended as a worker ends one (no worker runs here)."""
    path, _ = await _new_embed_job_sample(world)
    job_id = path.rsplit("/", 1)[1]
    (job_dir(settings, UUID(job_id)) / RESULTS_FILE).write_bytes(b'{"id":1,"embedding":[1.0]}\n')
    await world.pool.execute("UPDATE embed_jobs SET done = 1, dimension = 1 WHERE id = $1",
                             UUID(job_id))
    await world.pool.execute("UPDATE tasks SET status = 'done' WHERE id = $1", UUID(job_id))
    return job_id


async def _announce_and_wait(world: World, http: aiohttp.ClientSession,
                             redis_url: str) -> None:
    redis = Redis.from_url(redis_url)
    await redis.publish(ROUTES_CHANNEL, str(world.model))
    await redis.aclose()

    async def serving() -> bool:
        async with http.post(f"{world.gateway}/serve/{SERVED_NAME}/embed", json={"inputs": "x"},
                             headers=world.headers["admin"]) as resp:
            return resp.status == 200
    await eventually(serving, 10, "the gateway routes to the stub")


async def _run_matrix(world: World, http: aiohttp.ClientSession,
                      tables: dict[str, list[RouteSpec]]) -> list[str]:
    mismatches, rows = [], 0
    table = [(spec, world.api if process == "api" else world.gateway)
             for process, specs in tables.items() for spec in specs]
    for spec, base in table:
        sample = SAMPLES[(spec.method, _template(spec))]
        for who in PRINCIPALS:
            path, kw = await sample(world, who)
            kw = _fill(kw, world)
            got, body = await _request(http, spec.method, base + path, world.headers[who], kw)
            if (spec.method, _template(spec)) in RESTORE:
                await _restore_accounts(world)
            want = expected(spec.access, who)
            rows += 1
            if got != want:
                mismatches.append(f"{spec.method} {path} as {who}: {got}, want {want}: "
                                  f"{body[:160]}")
    assert rows == len(table) * len(PRINCIPALS)
    print(f"authorisation matrix: {len(table)} routes x {len(PRINCIPALS)} callers = {rows} "
          f"requests, {len(mismatches)} unexpected")
    return mismatches


async def _request(http: aiohttp.ClientSession, method: str, url: str,
                   headers: dict[str, str], kw: dict[str, Any]) -> tuple[str, str]:
    """One row's outcome and body. A login the password pool sheds (its 429 says when to
    come back: hashes run slow on a loaded machine) is asked again after that wait, up to
    five times: the matrix is about who may call a route, not about the machine's load."""
    for _ in range(5):
        async with http.request(method, url, headers=headers, **kw) as resp:
            status, body = resp.status, await resp.text()
            retry_after = resp.headers.get("Retry-After")
        if status != 429 or retry_after is None or "logins in progress" not in body:
            break
        await asyncio.sleep(float(retry_after))
    return _outcome(status), body


def _fill(kw: dict[str, Any], world: World) -> dict[str, Any]:
    body = kw.get("json")
    if isinstance(body, dict):
        kw = {**kw, "json": {k: (v.format(m=world.model) if isinstance(v, str) else v)
                             for k, v in body.items()}}
    return kw
