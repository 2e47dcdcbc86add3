"""Seed 001 (Model Bazaar v2 deploy API): every sample request, replayed field by field."""

from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from db import models
from schemas.settings import Settings
from tests.conftest import Proc, bearer, wait_task
from tests.support.accounts import call, make_user, replica_environs
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

V2 = "/api/v2/deploy"
SEED_DEPLOY_BODY = {"deployment_name": "my-app", "autoscaling_enabled": True,
                    "autoscaling_min": 1, "autoscaling_max": 4, "memory": 800}
STATUS_WORDS = {"not_started", "starting", "in_progress", "complete", "failed", "stopped"}


def _is_status(body: Any) -> bool:
    # The seed's fields, issue 14's replica counts and issue 26's generation, its revision
    # and the warm one beside them.
    return (set(body) == {"status", "errors", "warnings", "replicas_current",
                          "replicas_desired", "generation", "revision", "warm_generation"}
            and body["status"] in STATUS_WORDS
            and all(isinstance(m, str) for m in body["errors"] + body["warnings"]))


async def _finished(http: aiohttp.ClientSession, api: str, kind: str, model_id: str,
                    headers: dict[str, str]) -> None:
    """Wait for the model's latest task of `kind` (seed 002's view of the same tasks)."""
    _, task = await call(http, "GET", f"{api}/{kind}-status/{model_id}", headers=headers)
    async with aiohttp.ClientSession(headers=headers) as authorised:
        done = await wait_task(authorised, api, kind, task["task_id"], 60)
    assert done["status"] == "done", done


async def test_seed_001_samples(api: str, gateway: str, spawn: Callable[..., Proc], anon_http:
                                aiohttp.ClientSession, pool: asyncpg.Pool, settings: Settings,
                                hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    model_id = str(await hashing_model("seed-one"))
    http = anon_http
    spawn("worker")

    # Deploy a Model: the seed's body, 200 {}; the task is the seed 002 task.
    status, body = await call(http, "POST", f"{api}{V2}/{model_id}", json=SEED_DEPLOY_BODY,
                              headers=alice)
    assert (status, body) == (200, {})
    await _finished(http, api, "deploy", model_id, alice)
    async with http.post(f"{gateway}/serve/my-app/embed", json={"inputs": "hi"}) as resp:
        assert resp.status == 200  # deployment_name became the URL name

    # Get Deployment Status: {status, errors, warnings}.
    status, body = await call(http, "GET", f"{api}{V2}/{model_id}/status", headers=alice)
    assert status == 200 and _is_status(body)
    assert body == {"status": "complete", "errors": [], "warnings": [], "replicas_current": 1,
                    "replicas_desired": 1, "generation": 1, "revision": "r1",
                    "warm_generation": None}

    # The job token each replica got in its environment drives the internal routes.
    envs = replica_environs(settings.state_dir)
    assert len(envs) == 1 and envs[0]["GREENROOM_MODEL_ID"] == model_id
    job = bearer(envs[0]["GREENROOM_JOB_TOKEN"])

    # Log Deployment Error/Warning (the seed lists it as GET; POST is accepted too).
    status, body = await call(http, "POST", f"{api}{V2}/log", headers=job,
                              json={"level": "warning", "message": "a warning message"})
    assert (status, body) == (200, {})
    status, body = await call(http, "GET", f"{api}{V2}/log", headers=job,
                              json={"level": "error", "message": "this failed"})
    assert (status, body) == (200, {})

    # Get Deployment Status From Deploy Job: the seed's response shape.
    status, body = await call(http, "GET", f"{api}{V2}/{model_id}/status-internal", headers=job)
    assert status == 200 and _is_status(body)
    assert body == {"status": "complete", "errors": ["this failed"],
                    "warnings": ["a warning message"], "replicas_current": 1,
                    "replicas_desired": 1, "generation": 1, "revision": "r1",
                    "warm_generation": None}

    # Get Deployment Logs: one {stdout, stderr} per replica.
    status, body = await call(http, "GET", f"{api}{V2}/{model_id}/logs", headers=alice)
    assert status == 200 and isinstance(body, list) and len(body) >= 1
    assert all(set(entry) == {"stdout", "stderr"} for entry in body)
    assert any("replica" in e["stdout"] + e["stderr"] or e["stderr"] for e in body)

    # Update Deployment Status: metadata lands on the model.
    status, body = await call(http, "POST", f"{api}{V2}/update-status", headers=job,
                              json={"status": "in_progress", "metadata": {"key": "value"}})
    assert (status, body) == (200, {})
    model = await models.find(pool, model_id)
    assert model is not None and model.metadata == {"key": "value"}
    status, body = await call(http, "GET", f"{api}{V2}/{model_id}/status", headers=alice)
    assert body["status"] == "in_progress"
    await call(http, "POST", f"{api}{V2}/update-status", headers=job, json={"status": "complete"})

    # Save Deployed Model: a new in_progress model that cannot be deployed, and an update token.
    status, body = await call(http, "POST", f"{api}{V2}/{model_id}/save", headers=job,
                              json={"model_name": "name for new saved model"})
    assert status == 200 and set(body) == {"model_id", "update_token"}
    saved = await models.find(pool, body["model_id"])
    assert saved is not None and saved.train_status == "in_progress"
    assert saved.parent_id == model.id and saved.owner == "alice"
    status, refused = await call(http, "POST", f"{api}{V2}/{saved.id}", headers=alice)
    assert status == 409 and refused["status_code"] == 409
    update = bearer(body["update_token"])
    status, done = await call(http, "POST", f"{api}/api/v2/train/update-status", headers=update,
                              json={"status": "complete", "metadata": {"saved": True}})
    assert (status, done) == (200, {})
    saved = await models.find(pool, body["model_id"])
    assert saved is not None and saved.train_status == "complete"
    assert saved.metadata == {"saved": True}
    # the update token is for the train route only, and only for the saved model
    status, _ = await call(http, "POST", f"{api}{V2}/update-status", headers=update,
                           json={"status": "complete"})
    assert status == 403

    # Undeploy a Model: 200 {}; then the status reads stopped and the job token is dead.
    status, body = await call(http, "DELETE", f"{api}{V2}/{model_id}", headers=alice)
    assert (status, body) == (200, {})
    await _finished(http, api, "delete", model_id, alice)
    _, current = await call(http, "GET", f"{api}{V2}/{model_id}/status", headers=alice)
    assert current["status"] == "stopped"
    status, body = await call(http, "GET", f"{api}{V2}/{model_id}/status-internal", headers=job)
    assert status == 401 and body["status_code"] == 401


async def test_seed_001_validation(api: str, anon_http: aiohttp.ClientSession,
                                   pool: asyncpg.Pool, hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    model_id = str(await hashing_model("seed-validate"))
    url = f"{api}{V2}/{model_id}"
    for bad in ({"autoscaling_min": 4, "autoscaling_max": 2}, {"memory": 64},
                {"memory": 10**6}, {"deployment_name": "Not A Name"}, {"surprise": 1}):
        status, body = await call(anon_http, "POST", url, json=bad, headers=alice)
        assert status == 422 and body["status_code"] == 422 and body["message"], bad
    # all parameters are optional: no body at all deploys with defaults
    status, body = await call(anon_http, "POST", url, headers=alice)
    assert (status, body) == (200, {})
    status, body = await call(anon_http, "GET", f"{url}/status", headers=alice)
    assert status == 200 and body["status"] == "starting"
