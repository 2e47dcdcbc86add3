"""Seed 000 (Model Bazaar v1 deploy API): every sample request, replayed field by field."""

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import aiohttp
import asyncpg

from db import dependencies, permissions
from tests.conftest import Proc, wait_task
from tests.support.accounts import call, make_user
from tests.support.as_admin import admin_anon_http, admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

V1 = "/api/v1/deploy"


def _envelope(body: Any, status: int, message: str) -> Any:
    assert set(body) == {"status_code", "message", "data"}, body
    assert body["status_code"] == status and body["message"] == message, body
    return body["data"]


def _swap(body: Any, old: str, new: str) -> Any:
    """The body with one model reference in its strings replaced by another."""
    if isinstance(body, str):
        return body.replace(old, new)
    if isinstance(body, dict):
        return {k: _swap(v, old, new) for k, v in body.items()}
    return body


async def _finished(api: str, kind: str, model_id: str, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession(headers=headers) as http:
        _, task = await call(http, "GET", f"{api}/{kind}-status/{model_id}")
        done = await wait_task(http, api, kind, task["task_id"], 60)
    assert done["status"] == "done", done


async def test_get_model_permissions(api: str, anon_http: aiohttp.ClientSession,
                                     pool: asyncpg.Pool, hashing_model: Any) -> None:
    alice_user, alice = await make_user(pool, "alice")
    reader, reader_headers = await make_user(pool, "reader")
    model_id = await hashing_model("model_123")
    await pool.execute("UPDATE models SET access_level = 'private' WHERE id = $1", model_id)
    exp = datetime(2030, 10, 18, 17, 0, tzinfo=UTC)
    await permissions.upsert(pool, model_id, reader.id, "read", exp)
    url = f"{api}{V1}/permissions/{model_id}"
    message = f"Successfully fetched user permissions for model with ID {model_id}"

    status, body = await call(anon_http, "GET", url, headers=reader_headers)
    data = _envelope(body, 200, message)
    assert status == 200 and set(data) == {"read", "write", "exp", "override"}
    assert data == {"read": True, "write": False, "exp": "2030-10-18T17:00:00Z",
                    "override": False}
    status, body = await call(anon_http, "GET", url, headers=alice)
    data = _envelope(body, 200, message)
    assert (data["read"], data["write"], data["override"]) == (True, True, True)
    # anonymous (and a bad token, which counts as none): read only for public models; a
    # private one answers exactly as a missing one (review L1), not 200 {read: false}
    missing = uuid4()
    for headers in ({}, {"Authorization": "Bearer garbage"}):
        status, body = await call(anon_http, "GET", url, headers=headers)
        _, absent = await call(anon_http, "GET", f"{api}{V1}/permissions/{missing}",
                               headers=headers)
        assert status == 404 and body == _swap(absent, str(missing), str(model_id)), body
    await pool.execute("UPDATE models SET access_level = 'public' WHERE id = $1", model_id)
    status, body = await call(anon_http, "GET", f"{api}{V1}/permissions/alice/model_123")
    data = _envelope(body, 200, "Successfully fetched user permissions for model with ID "
                     "alice/model_123")
    assert data == {"read": True, "write": False, "exp": None, "override": False}
    assert alice_user.id != reader.id


async def test_seed_000_run_feedbacks_status_logs_stop(
        api: str, gateway: str, spawn: Callable[..., Proc], anon_http: aiohttp.ClientSession,
        pool: asyncpg.Pool, hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    model_id = str(await hashing_model("model_123"))
    http = anon_http
    spawn("worker")

    # Run Deployment: 202, queued, with the model's id; the seed 002 task is the same task.
    status, body = await call(http, "POST", f"{api}{V1}/run", headers=alice, json={
        "model_identifier": "alice/model_123", "memory": 2048, "autoscaling_enabled": True,
        "autoscaler_max_count": 5, "genai_key": "your_genai_key"})
    assert status == 202
    assert _envelope(body, 202, "Deployment is in-progress") == {
        "status": "queued", "model_identifier": "alice/model_123", "model_id": model_id}
    await _finished(api, "deploy", model_id, alice)

    # Feedback recorded through the gateway, read back newest first.
    for i in range(7):
        status, _ = await call(http, "POST", f"{gateway}/serve/model-123/feedback", json={
            "event": "upvote", "query": f"Sample query {i}",
            "reference_text": "Sample result upvoted", "reference_id": 15})
        assert status == 201
    status, _ = await call(http, "POST", f"{gateway}/serve/model-123/feedback", json={
        "event": "associate", "source": "Sample source text", "target": "Sample target text"})
    assert status == 201
    await call(http, "POST", f"{gateway}/serve/model-123/feedback",
               json={"event": "implicit_upvote", "query": "not listed"})

    # Get Feedbacks
    status, body = await call(http, "GET", f"{api}{V1}/feedbacks", headers=alice,
                              params={"model_identifier": "alice/model_123",
                                      "per_event_count": "5"})
    data = _envelope(body, 200, "Successfully retrieved the feedbacks")
    assert status == 200 and set(data) == {"upvote", "associate"}
    assert [u["query"] for u in data["upvote"]] == [f"Sample query {i}" for i in (6, 5, 4, 3, 2)]
    upvote = data["upvote"][0]
    assert set(upvote) == {"query", "reference_text", "reference_id", "timestamp"}
    assert (upvote["reference_text"], upvote["reference_id"]) == ("Sample result upvoted", 15)
    stamp = datetime.strptime(upvote["timestamp"], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=1), "UTC timestamps"
    assert data["associate"] == [{"source": "Sample source text", "target": "Sample target text",
                                  "timestamp": data["associate"][0]["timestamp"]}]

    # Deployment Status
    status, body = await call(http, "GET", f"{api}{V1}/status", headers=alice,
                              params={"model_identifier": "alice/model_123"})
    data = _envelope(body, 200, "Successfully got the deployment status")
    assert set(data) == {"deploy_status", "messages", "model_id", "replicas_current",
                         "replicas_desired"}  # the replica counts: issue 14
    assert data["replicas_current"] == data["replicas_desired"] == 1
    assert data["deploy_status"] == "complete" and data["model_id"] == model_id
    assert all(isinstance(m, str) for m in data["messages"]) and data["messages"]

    # Get Deployment Logs: a list of lines
    status, body = await call(http, "GET", f"{api}{V1}/logs", headers=alice,
                              params={"model_identifier": "alice/model_123"})
    data = _envelope(body, 200, "Successfully got the deployment logs.")
    assert isinstance(data, list) and data and all(isinstance(line, str) for line in data)

    # Stop Deployment: 400 while an active workflow depends on the model.
    workflow = await hashing_model("workflow")
    await dependencies.add(pool, workflow, [await _id(pool, model_id)])
    status, body = await call(http, "POST", f"{api}{V1}/run", headers=alice,
                              json={"model_identifier": "alice/workflow"})
    assert status == 202
    await _finished(api, "deploy", str(workflow), alice)
    status, body = await call(http, "POST", f"{api}{V1}/stop", headers=alice,
                              json={"model_identifier": "alice/model_123"})
    assert status == 400 and body["status_code"] == 400
    assert body["message"] == ("Unable to stop deployment for model alice/model_123 since it "
                               "is used by other active workflows.")
    status, body = await call(http, "POST", f"{api}{V1}/stop", headers=alice,
                              json={"model_identifier": "alice/workflow"})
    assert status == 202
    await _finished(api, "delete", str(workflow), alice)
    status, body = await call(http, "POST", f"{api}{V1}/stop", headers=alice,
                              json={"model_identifier": "alice/model_123"})
    assert status == 202
    assert _envelope(body, 202, "Service is shutting down") == {"status": "queued",
                                                                 "model_id": model_id}
    await _finished(api, "delete", model_id, alice)


async def _id(pool: asyncpg.Pool, ref: str) -> Any:
    from db import models

    model = await models.find(pool, ref)
    assert model is not None
    return model.id


async def test_workflow_deploy_deploys_its_dependencies_first(
        api: str, anon_http: aiohttp.ClientSession, pool: asyncpg.Pool,
        hashing_model: Any) -> None:
    _, alice = await make_user(pool, "alice")
    base = await hashing_model("base")
    workflow = await hashing_model("flow")
    await dependencies.add(pool, workflow, [base])
    status, _ = await call(anon_http, "POST", f"{api}{V1}/run", headers=alice,
                           json={"model_identifier": "alice/flow"})
    assert status == 202
    rows = await pool.fetch("SELECT model_id FROM tasks WHERE kind = 'deploy' "
                            "ORDER BY created_at")
    assert [r["model_id"] for r in rows] == [base, workflow]
