"""Review L1: no answer tells whether a model, a task or a deployment someone else keeps
private exists, and an idempotency key is the caller's own.

bob (no grant) asks about alice's private `secret` and about names that exist nowhere; the
two answers must be the same status and body once the name bob sent is blanked out. A
caller who can read but not write still hears 403 (too little permission on a model they
know). Real API and gateway processes, real Postgres; a stand-in replica where the gateway
needs something to route to.
"""

from collections.abc import Callable
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
from redis.asyncio import Redis

from db import deployments, permissions, replicas
from schemas.queue import ROUTES_CHANNEL
from schemas.settings import Settings
from tests.conftest import Proc, start_gateway
from tests.service.test_auth_matrix import stub_replica
from tests.support.accounts import call, eventually, make_user
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

SOURCE = {"backend": "hashing", "dimension": 16}
SERVED = "secret-app"


def _shape(body: Any, ref: str) -> Any:
    """The answer with the reference the caller sent blanked out (also inside `detail`)."""
    if isinstance(body, str):
        return body.replace(ref, "REF")
    if isinstance(body, dict):
        return {k: _shape(v, ref) for k, v in body.items()}
    return body


async def _answer(http: aiohttp.ClientSession, method: str, url: str, ref: str,
                  **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url.format(ref=ref), **kw) as resp:
        return resp.status, _shape(await resp.json(), ref)


async def _alice_secret(http: aiohttp.ClientSession, api: str, pool: asyncpg.Pool
                        ) -> tuple[dict[str, str], str]:
    _, alice = await make_user(pool, "alice")
    status, secret = await call(http, "POST", f"{api}/api/v2/models", headers=alice,
                                json={"name": "secret", "source": SOURCE})
    assert status == 201 and secret["access_level"] == "private", secret
    return alice, str(secret["id"])


ROUTES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/v2/models/{ref}", {}),
    ("PUT", "/api/v2/models/{ref}/permissions", {"json": {"username": "bob",
                                                          "permission": "read"}}),
    ("GET", "/api/v2/deploy/{ref}/status", {}),
    ("POST", "/api/v2/deploy/{ref}", {"json": {}}),
    ("DELETE", "/api/v2/deploy/{ref}", {}),
    ("GET", "/api/v1/deploy/status?model_identifier={ref}", {}),
    ("GET", "/deploy-status/{ref}", {}),
    ("GET", "/api/v2/deployments/{ref}", {}),
]


async def test_a_model_bob_cannot_read_answers_on_every_route_as_a_missing_one(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    _, secret_id = await _alice_secret(http, api, pool)
    _, bob = await make_user(pool, "bob")
    for method, path, kw in ROUTES:
        for private, missing in (("alice/secret", "alice/no-such-model"),
                                 (secret_id, str(uuid4()))):
            hidden = await _answer(http, method, api + path, private, headers=bob, **kw)
            absent = await _answer(http, method, api + path, missing, headers=bob, **kw)
            assert hidden == absent, f"{method} {path}: {hidden} against {absent}"
            assert hidden[0] == 404, (method, path, hidden)
    for body_route in ("/deploy", "/api/v1/deploy/run"):
        key = "embedding_model_id" if body_route == "/deploy" else "model_identifier"
        answers = [await _answer(http, "POST", api + body_route, ref, headers=bob,
                                 json={key: ref})
                   for ref in ("alice/secret", "alice/no-such-model")]
        assert answers[0] == answers[1] and answers[0][0] == 404, (body_route, answers)

    # A reader knows the model: too little permission stays 403.
    reader_user, reader = await make_user(pool, "carol")
    await permissions.upsert(pool, UUID(secret_id), reader_user.id, "read", None)
    status, body = await call(http, "POST", f"{api}/api/v2/deploy/alice/secret",
                              headers=reader, json={})
    assert status == 403 and "owner permission" in body["message"], body
    assert (await call(http, "GET", f"{api}/api/v2/models/alice/secret",
                       headers=reader))[0] == 200


async def test_anonymous_permissions_do_not_tell_a_private_model_from_a_missing_one(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, _ = await _alice_secret(http, api, pool)
    url = api + "/api/v1/deploy/permissions/{ref}"
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        hidden = await _answer(http, "GET", url, "alice/secret", headers=headers)
        absent = await _answer(http, "GET", url, "alice/no-such-model", headers=headers)
        print(f"anonymous permissions: private {hidden}, missing {absent}")
        assert hidden == absent and hidden[0] == 404
    # Seed 000's answer where the caller knows the model: the owner's, and a public one's.
    status, body = await call(http, "GET", url.format(ref="alice/secret"), headers=alice)
    assert status == 200 and body["data"]["override"] is True, body
    await pool.execute("UPDATE models SET access_level = 'public' WHERE name = 'secret'")
    status, body = await call(http, "GET", url.format(ref="alice/secret"))
    assert status == 200 and body["data"]["read"] is True and not body["data"]["write"], body


async def test_a_task_of_a_model_bob_cannot_read_answers_as_a_missing_task(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, _ = await _alice_secret(http, api, pool)
    _, bob = await make_user(pool, "bob")
    status, task = await call(http, "POST", f"{api}/deploy", headers=alice,
                              json={"embedding_model_id": "alice/secret"})
    assert status == 202, task
    for path in ("/deploy/{ref}", "/api/v2/tasks/{ref}"):
        hidden = await _answer(http, "GET", api + path, task["task_id"], headers=bob)
        absent = await _answer(http, "GET", api + path, str(uuid4()), headers=bob)
        assert hidden == absent and hidden[0] == 404, (path, hidden, absent)


async def _serve_secret(pool: asyncpg.Pool, endpoint: str, redis_url: str) -> None:
    """alice/secret serving at the stand-in replica, as a finished rollout leaves it."""
    model_id = await pool.fetchval("SELECT id FROM models WHERE name = 'secret'")
    _, generation = await deployments.begin_generation(pool, model_id, SERVED)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "stub", endpoint)
    await deployments.switch(pool, model_id, generation, SERVED, {})
    redis = Redis.from_url(redis_url)
    await redis.publish(ROUTES_CHANNEL, str(model_id))
    await redis.aclose()


async def test_the_gateway_answers_a_private_deployment_as_a_missing_one(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool, settings: Settings,
        spawn: Callable[..., Proc]) -> None:
    alice, _ = await _alice_secret(http, api, pool)
    _, bob = await make_user(pool, "bob")
    gateway = await start_gateway(spawn, http)
    async with stub_replica() as endpoint:
        await _serve_secret(pool, endpoint, settings.require_redis_url())

        async def alice_served() -> bool:
            async with http.post(f"{gateway}/serve/{SERVED}/embed", json={"inputs": "x"},
                                 headers=alice) as resp:
                return resp.status == 200
        await eventually(alice_served, 10, "the gateway routes alice/secret")

        bad = {"Authorization": "Bearer not-a-token"}
        for who, headers, want in (("anonymous", {}, 404), ("bob", bob, 404),
                                   ("a bad token", bad, 401)):
            for path, kw in (("/serve/{ref}/embed", {"json": {"inputs": "x"}}),
                             ("/serve/{ref}/feedback", {"json": {"event": "upvote",
                                                                 "query": "q"}}),
                             ("/v1/embeddings", {})):
                body_of = (lambda ref: {"json": {"model": ref, "input": "x"}}) \
                    if path == "/v1/embeddings" else (lambda ref, kw=kw: kw)
                hidden = await _answer(http, "POST", gateway + path, SERVED, headers=headers,
                                       **body_of(SERVED))
                absent = await _answer(http, "POST", gateway + path, "nothing-here",
                                       headers=headers, **body_of("nothing-here"))
                print(f"gateway {path} as {who}: private {hidden[0]}, missing {absent[0]}")
                assert hidden == absent and hidden[0] == want, (who, path, hidden, absent)


async def test_an_idempotency_key_is_the_callers_own(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, _ = await _alice_secret(http, api, pool)
    _, bob = await make_user(pool, "bob")
    status, _ = await call(http, "POST", f"{api}/api/v2/models", headers=bob,
                           json={"name": "mine", "source": SOURCE})
    assert status == 201
    key = {"Idempotency-Key": "deploy-1"}
    status, first = await call(http, "POST", f"{api}/deploy", headers=alice | key,
                               json={"embedding_model_id": "alice/secret"})
    assert status == 202, first
    for body in ({"embedding_model_id": "bob/mine"},
                 {"embedding_model_id": "bob/mine", "id": "deploy-1"}):
        status, theirs = await call(http, "POST", f"{api}/deploy", headers=bob | key,
                                    json=body)
        assert status in (200, 202) and "task_id" in theirs, theirs
        assert theirs["task_id"] != first["task_id"], "another user's task id"
        assert first["task_id"] not in str(theirs)
    status, again = await call(http, "POST", f"{api}/deploy", headers=alice | key,
                               json={"embedding_model_id": "alice/secret"})
    assert (status, again["task_id"]) == (200, first["task_id"])


async def test_revoking_answers_alike_for_an_unknown_user_and_one_without_a_grant(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, _ = await _alice_secret(http, api, pool)
    await make_user(pool, "bob")
    url = api + "/api/v2/models/alice/secret/permissions/{ref}"
    known = await _answer(http, "DELETE", url, "bob", headers=alice)
    unknown = await _answer(http, "DELETE", url, "nobody-at-all", headers=alice)
    assert known == unknown and known[0] == 404, (known, unknown)
