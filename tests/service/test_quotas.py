"""Issue 19, must-show 1: quotas on every surface, the admin override, usage, the worker's
second check, and the clamp the autoscaler is to use."""

from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from db import models
from schemas.settings import Settings
from schemas.tasks import DeploymentConfig
from tests.conftest import Proc, wait_task
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

V1, V2 = "/api/v1/deploy", "/api/v2/deploy"


async def _quota(http: aiohttp.ClientSession, api: str, user: str, **limits: Any) -> Any:
    status, body = await call(http, "PUT", f"{api}/api/v2/users/{user}/quotas", json=limits)
    assert status == 200, body
    return body


async def _deploy(http: aiohttp.ClientSession, api: str, headers: dict[str, str], ref: str,
                  **config: Any) -> tuple[int, Any]:
    return await call(http, "POST", f"{api}/deploy", headers=headers,
                      json={"embedding_model_id": ref, "config": config})


async def _done(http: aiohttp.ClientSession, api: str, kind: str, task: Any,
                headers: dict[str, str]) -> Any:
    async with aiohttp.ClientSession(headers=headers) as authorised:
        return await wait_task(authorised, api, kind, task["task_id"], 90)


async def _usage(anon: aiohttp.ClientSession, api: str, headers: dict[str, str]) -> Any:
    status, body = await call(anon, "GET", f"{api}/api/v2/users/me/usage", headers=headers)
    assert status == 200, body
    return body


async def test_quotas_refuse_with_figures_on_every_surface_and_an_override_lifts_them(
        api: str, http: aiohttp.ClientSession, anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    for name in ("m1", "m2", "m3"):
        await hashing_model(name)
    await _quota(http, api, "alice", deployments=2)

    # Seed 002 (root): the third deployment is refused, naming quota, use and limit.
    for ref in ("alice/m1", "alice/m2"):
        status, body = await _deploy(anon_http, api, alice, ref)
        assert status == 202, body
    status, body = await _deploy(anon_http, api, alice, "alice/m3")
    assert status == 403, body
    assert body["detail"] == {"quota": "deployments", "current": 2, "requested": 1, "limit": 2}
    assert body["message"] == ("deployments quota exceeded: 2 deployments in use, this request "
                               "needs 1 more, the limit is 2")
    print(f"seed 002: {body['message']}")

    # Seed 001 (/api/v2/deploy): the common error body.
    status, body = await call(anon_http, "POST", f"{api}{V2}/alice/m3", headers=alice, json={})
    assert status == 403 and body["status_code"] == 403, body
    assert body["detail"]["quota"] == "deployments" and body["detail"]["limit"] == 2

    # Seed 000 (/api/v1/deploy/run): its envelope, the figures as data.
    status, body = await call(anon_http, "POST", f"{api}{V1}/run", headers=alice,
                              json={"model_identifier": "alice/m3"})
    assert status == 403, body
    assert body["status_code"] == 403 and body["message"].startswith("deployments quota")
    assert body["data"] == {"quota": "deployments", "current": 2, "requested": 1, "limit": 2}

    # Replicas and memory: a redeploy of m1 replaces what m1 asked for, so only m2 counts.
    status, body = await _deploy(anon_http, api, alice, "alice/m1", replicas=8)
    assert status == 403 and body["detail"] == {
        "quota": "replicas", "current": 1, "requested": 8, "limit": 8}, body
    status, body = await _deploy(anon_http, api, alice, "alice/m1", replicas=2, memory=4096)
    assert status == 403 and body["detail"] == {
        "quota": "memory_mb", "current": 128, "requested": 8192, "limit": 8192}, body

    # An administrator's override lifts each limit.
    lifted = await _quota(http, api, "alice", deployments=3, replicas=9, memory_mb=20000)
    assert lifted["limits"]["deployments"] == 3 and lifted["overrides"]["replicas"] == 9
    status, body = await _deploy(anon_http, api, alice, "alice/m3")
    assert status == 202, body
    status, body = await _deploy(anon_http, api, alice, "alice/m1", replicas=2, memory=4096)
    assert status == 202, body

    # Back to the defaults: null or omitted.
    reset = await _quota(http, api, "alice")
    assert reset["limits"] == {"models": 50, "deployments": 5, "replicas": 8, "memory_mb": 8192,
                               "store_mb": 16384}

    # Only an administrator sets quotas.
    status, body = await call(anon_http, "PUT", f"{api}/api/v2/users/alice/quotas",
                              headers=alice, json={"deployments": 100})
    assert status == 403, body


async def test_models_quota_refuses_the_next_registration(
        api: str, http: aiohttp.ClientSession, anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool) -> None:
    _, bob = await make_user(pool, "bob")
    await _quota(http, api, "bob", models=1)
    source = {"backend": "hashing", "dimension": 8}
    status, body = await call(anon_http, "POST", f"{api}/api/v2/models", headers=bob,
                              json={"name": "one", "source": source})
    assert status == 201, body
    status, body = await call(anon_http, "POST", f"{api}/api/v2/models", headers=bob,
                              json={"name": "two", "source": source})
    assert status == 403 and body["detail"] == {
        "quota": "models", "current": 1, "requested": 1, "limit": 1}, body
    # Seed 001's save makes a model too.
    status, body = await call(anon_http, "POST", f"{api}{V2}/bob/one/save", headers=bob,
                              json={"model_name": "copy"})
    assert status == 403 and body["detail"]["quota"] == "models", body


async def test_usage_follows_deploys_and_deletes(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        anon_http: aiohttp.ClientSession, pool: asyncpg.Pool, hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    await hashing_model("u1")
    await hashing_model("u2")
    spawn("worker")
    start = await _usage(anon_http, api, alice)
    assert start["usage"] == {"models": 2, "deployments": 0, "replicas": 0, "memory_mb": 0,
                              "store_mb": 0}
    assert start["unlimited"] is False

    _, task = await _deploy(anon_http, api, alice, "alice/u1", replicas=2, memory=256)
    assert (await _done(anon_http, api, "deploy", task, alice))["status"] == "done"
    _, task = await _deploy(anon_http, api, alice, "alice/u2")
    assert (await _done(anon_http, api, "deploy", task, alice))["status"] == "done"
    after = await _usage(anon_http, api, alice)
    assert after["usage"] == {"models": 2, "deployments": 2, "replicas": 3,
                              "memory_mb": 2 * 256 + 128, "store_mb": 0}, after

    # A redeploy at another count: the old generation is gone once the task is done.
    _, task = await _deploy(anon_http, api, alice, "alice/u1", replicas=1, memory=256)
    assert (await _done(anon_http, api, "deploy", task, alice))["status"] == "done"
    scaled = await _usage(anon_http, api, alice)
    assert scaled["usage"]["replicas"] == 2 and scaled["usage"]["memory_mb"] == 256 + 128

    status, task = await call(anon_http, "POST", f"{api}/delete", headers=alice,
                              json={"embedding_model_id": "alice/u1"})
    assert status == 202
    assert (await _done(anon_http, api, "delete", task, alice))["status"] == "done"
    end = await _usage(anon_http, api, alice)
    assert end["usage"] == {"models": 2, "deployments": 1, "replicas": 1, "memory_mb": 128,
                            "store_mb": 0}


async def test_the_worker_checks_again_before_starting_replicas(
        api: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        anon_http: aiohttp.ClientSession, pool: asyncpg.Pool, hashing_model: Any) -> None:
    """Accepted within quota, then the quota was lowered: the worker refuses the rollout."""
    _, alice = await make_user(pool, "alice")
    await hashing_model("w1")
    await hashing_model("w2")
    worker = spawn("worker")
    _, task = await _deploy(anon_http, api, alice, "alice/w1", replicas=3)
    assert (await _done(anon_http, api, "deploy", task, alice))["status"] == "done"
    worker.stop()  # w1's replicas keep serving; the next deploy waits, accepted
    status, task = await _deploy(anon_http, api, alice, "alice/w2", replicas=3)
    assert status == 202, task
    await _quota(http, api, "alice", replicas=4)
    spawn("worker")
    done = await _done(anon_http, api, "deploy", task, alice)
    assert done["status"] == "refused", done
    assert done["detail"] == ("replicas quota exceeded: 3 replicas in use, this request "
                              "needs 3 more, the limit is 4"), done
    assert done["metadata"]["quota"]["limit"] == 4
    usage = await _usage(anon_http, api, alice)
    assert usage["usage"]["replicas"] == 3 and usage["usage"]["deployments"] == 1


async def test_autoscaler_clamp_stays_within_the_replica_and_memory_quota(
        pool: asyncpg.Pool, settings: Settings, clean: None, hashing_model: Any) -> None:
    """The autoscaler (issue 14) is not built yet; this is the function it is to call."""
    import aiohttp as _aiohttp

    from db import events
    from worker.admission.quotas import clamp_scale, replicas_allowed
    from worker.context import WorkerContext

    a = await models.get(pool, await hashing_model("a"))
    b = await models.get(pool, await hashing_model("b"))
    assert a is not None and b is not None
    await pool.execute("INSERT INTO deployments (model_id, name, status, active_generation, "
                       "last_generation, config) VALUES ($1, 'a', 'complete', 1, 1, $2)",
                       a.id, {"replicas": 3})
    await pool.execute("INSERT INTO user_quotas (user_id, max_replicas, max_memory_mb) "
                       "VALUES ($1, 8, 100000)", a.owner_id)
    async with _aiohttp.ClientSession() as session:
        ctx = WorkerContext(settings=settings, pool=pool, redis=None,  # type: ignore[arg-type]
                            runtime=None, http=session, worker_id="t")  # type: ignore[arg-type]
        config = DeploymentConfig(autoscaling_enabled=True, autoscaling_max=16)
        assert await replicas_allowed(ctx, b, config, 16) == 5  # 8 minus a's 3
        assert await replicas_allowed(ctx, b, config, 2) == 2
        big = DeploymentConfig(memory=30000)
        assert await replicas_allowed(ctx, b, big, 16) == 3  # (100,000 - 3 * 128) // 30,000
        # What the autoscaler calls: clamped, and the deployment's events say so.
        assert await clamp_scale(ctx, b, config, 12, generation=1) == 5
        warnings = [e.message for e in await events.list_recent(pool, b.id)]
        assert warnings == ["autoscaler wanted 12 replicas; the owner's quota allows 5"]
        assert await clamp_scale(ctx, b, config, 4) == 4
        assert len(await events.list_recent(pool, b.id)) == 1, "no event when not clamped"
