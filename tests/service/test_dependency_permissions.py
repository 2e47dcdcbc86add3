"""Review H1: a model's dependencies go through the same permissions as the model itself.

The review's sequence, as bob against alice's private `secret`, over HTTP against a real API
process and Postgres (no worker: the tasks an answer made, or did not make, stay in the
table to be counted).
"""

from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg

from db import deployments
from schemas.tasks import DeploymentStatus
from tests.support.accounts import call, make_user
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

SOURCE = {"backend": "hashing", "dimension": 16}
V1, V2 = "/api/v1/deploy", "/api/v2/deploy"


async def _register(http: aiohttp.ClientSession, api: str, headers: dict[str, str],
                    name: str, **fields: Any) -> tuple[int, Any]:
    return await call(http, "POST", f"{api}/api/v2/models", headers=headers,
                      json={"name": name, "source": SOURCE, **fields})


async def _alice_and_bob(http: aiohttp.ClientSession, api: str, pool: asyncpg.Pool
                         ) -> tuple[dict[str, str], dict[str, str], str]:
    """alice (with her private `secret`) and bob; returns their headers and secret's id."""
    _, alice = await make_user(pool, "alice")
    _, bob = await make_user(pool, "bob")
    status, secret = await _register(http, api, alice, "secret")
    assert status == 201 and secret["access_level"] == "private", secret
    return alice, bob, str(secret["id"])


async def _grant(http: aiohttp.ClientSession, api: str, alice: dict[str, str],
                 permission: str) -> None:
    status, body = await call(http, "PUT", f"{api}/api/v2/models/alice/secret/permissions",
                              headers=alice, json={"username": "bob", "permission": permission})
    assert status == 200, body


async def _tasks_on(pool: asyncpg.Pool, model_id: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM tasks WHERE model_id = $1",
                                     UUID(model_id))
    return count


async def _serving(pool: asyncpg.Pool, ref: str) -> None:
    """Make the model's deployment `complete`, as a finished rollout leaves it."""
    model_id = await pool.fetchval(
        "SELECT m.id FROM models m JOIN users u ON u.id = m.owner_id "
        "WHERE u.username || '/' || m.name = $1", ref)
    await deployments.begin_generation(pool, model_id, ref.replace("/", "-"))
    await deployments.set_status(pool, model_id, DeploymentStatus.complete)


def _shape(body: Any, ref: str) -> Any:
    """The answer with the reference the caller sent blanked out."""
    return {k: (v.replace(ref, "REF") if isinstance(v, str) else
                {dk: "REF" if dv == ref else dv for dk, dv in v.items()}
                if isinstance(v, dict) else v) for k, v in body.items()}


async def test_a_private_dependency_answers_at_register_exactly_as_a_missing_one(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    _, bob, secret_id = await _alice_and_bob(http, api, pool)
    missing_id = str(uuid4())
    answers: dict[str, tuple[int, Any]] = {}
    for ref in ("alice/secret", "alice/no-such-model", secret_id, missing_id):
        status, body = await _register(http, api, bob, f"wrapper-{len(answers)}",
                                       dependencies=[ref])
        answers[ref] = (status, _shape(body, ref))
    print(f"register with a dependency, as bob: {answers}")
    assert answers["alice/secret"] == answers["alice/no-such-model"]
    assert answers[secret_id] == answers[missing_id]
    status, body = answers["alice/secret"]
    assert status == 404 and body == {"status_code": 404, "message": "dependency 'REF' not found",
                                      "detail": {"dependency": "REF"}}


async def test_a_read_grant_lets_bob_register_a_dependent_but_never_start_alices_model(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, bob, secret_id = await _alice_and_bob(http, api, pool)
    await _grant(http, api, alice, "read")
    status, wrapper = await _register(http, api, bob, "wrapper", dependencies=["alice/secret"])
    assert status == 201 and wrapper["dependencies"] == ["alice/secret"], wrapper

    status, body = await call(http, "POST", f"{api}{V2}/bob/wrapper", headers=bob, json={})
    assert status == 409, body
    assert body["message"] == ("dependency alice/secret of bob/wrapper is not running, and "
                               "starting it needs write permission on it: ask its owner to "
                               "deploy it or to grant write"), body
    status, body = await call(http, "POST", f"{api}{V1}/run", headers=bob,
                              json={"model_identifier": "bob/wrapper"})
    assert status == 409 and body["status_code"] == 409, body
    assert await _tasks_on(pool, secret_id) == 0, "a deploy alice never made"
    assert await _tasks_on(pool, wrapper["id"]) == 0, "refused before any task"

    # Once alice runs it herself, bob's deploy uses it and starts nothing of hers.
    await _serving(pool, "alice/secret")
    status, body = await call(http, "POST", f"{api}{V2}/bob/wrapper", headers=bob, json={})
    assert (status, body) == (200, {})
    assert await _tasks_on(pool, secret_id) == 0
    assert await _tasks_on(pool, wrapper["id"]) == 1


async def test_write_permission_is_the_owners_consent_to_start_a_dependency(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, bob, secret_id = await _alice_and_bob(http, api, pool)
    await _grant(http, api, alice, "write")
    status, wrapper = await _register(http, api, bob, "wrapper", dependencies=["alice/secret"])
    assert status == 201, wrapper
    status, body = await call(http, "POST", f"{api}{V2}/bob/wrapper", headers=bob, json={})
    assert (status, body) == (200, {})
    rows = await pool.fetch("SELECT model_id FROM tasks WHERE kind = 'deploy' "
                            "ORDER BY created_at")
    assert [str(r["model_id"]) for r in rows] == [secret_id, wrapper["id"]]


async def test_alices_stop_is_never_held_by_a_dependent_she_did_not_allow(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, bob, _ = await _alice_and_bob(http, api, pool)
    await _grant(http, api, alice, "read")
    status, _ = await _register(http, api, bob, "wrapper", dependencies=["alice/secret"])
    assert status == 201
    await _serving(pool, "alice/secret")
    await _serving(pool, "bob/wrapper")

    status, body = await call(http, "DELETE", f"{api}{V2}/alice/secret", headers=alice)
    assert (status, body) == (200, {})
    status, body = await call(http, "POST", f"{api}{V1}/stop", headers=alice,
                              json={"model_identifier": "alice/secret"})
    assert status == 202, body

    # With write granted, bob's running dependent does hold it (seed 000's 400).
    await _grant(http, api, alice, "write")
    status, body = await call(http, "DELETE", f"{api}{V2}/alice/secret", headers=alice)
    assert status == 400 and "used by other active workflows" in body["message"], body


async def test_a_dependency_is_named_only_to_those_who_can_read_it(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    alice, bob, secret_id = await _alice_and_bob(http, api, pool)
    _, carol = await make_user(pool, "carol")
    await _grant(http, api, alice, "read")
    status, wrapper = await _register(http, api, bob, "wrapper", dependencies=["alice/secret"],
                                      access_level="public")
    assert status == 201 and wrapper["dependencies"] == ["alice/secret"], wrapper
    status, seen = await call(http, "GET", f"{api}/api/v2/models/bob/wrapper", headers=carol)
    assert status == 200 and seen["dependencies"] == [], "carol learns of alice's model"
    _, listed = await call(http, "GET", f"{api}/api/v2/models", headers=carol)
    assert [m["dependencies"] for m in listed if m["name"] == "wrapper"] == [[]]

    # alice takes bob's read back: to bob the dependency is now as if it had been deleted.
    status, _ = await call(http, "DELETE", f"{api}/api/v2/models/alice/secret/permissions/bob",
                           headers=alice)
    assert status == 200
    _, seen = await call(http, "GET", f"{api}/api/v2/models/bob/wrapper", headers=bob)
    assert seen["dependencies"] == []
    status, body = await call(http, "POST", f"{api}{V2}/bob/wrapper", headers=bob, json={})
    assert (status, body) == (200, {})
    assert await _tasks_on(pool, secret_id) == 0
