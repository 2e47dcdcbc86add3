"""Seed 002's task API: shapes, status codes and the JSON error body for client errors."""

import json
from typing import Any
from uuid import uuid4

import aiohttp
import pytest

from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from tests.support.shared_api import module_api, shared_api  # noqa: F401  (one API per module)

RESPONSE_FIELDS = {"task_id", "status", "phase", "created_at", "updated_at",
                   "embedding_model_id", "metadata", "detail"}


async def _call(http: aiohttp.ClientSession, method: str, url: str,
                **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, **kw) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


def _is_error(body: Any, status: int) -> bool:
    return (isinstance(body, dict) and body.get("status_code") == status
            and isinstance(body.get("message"), str) and "detail" in body
            and "Traceback" not in str(body))


async def test_seed_curl_examples_create_tasks(api: str, http: aiohttp.ClientSession,
                                               hashing_model: Any) -> None:
    model_id = str(await hashing_model("seed"))
    status, task = await _call(http, "POST", f"{api}/deploy",
                               json={"model_id": model_id, "config": {"param": "value"}})
    assert status == 202 and set(task) >= RESPONSE_FIELDS
    assert task["status"] == "pending" and task["embedding_model_id"] == model_id
    assert task["metadata"] == {"ignored_config_keys": ["param"]}
    status, got = await _call(http, "GET", f"{api}/deploy/{task['task_id']}")
    assert status == 200 and got["task_id"] == task["task_id"]
    status, latest = await _call(http, "GET", f"{api}/deploy-status/{model_id}")
    assert status == 200 and latest["task_id"] == task["task_id"]
    status, deletion = await _call(http, "POST", f"{api}/delete",
                                   json={"model_id": model_id, "param": "value"})
    assert status == 202
    status, got = await _call(http, "GET", f"{api}/delete/{deletion['task_id']}")
    assert status == 200 and got["task_id"] == deletion["task_id"]
    status, latest = await _call(http, "GET", f"{api}/delete-status/alice/seed")
    assert status == 200 and latest["task_id"] == deletion["task_id"]
    # a deploy task is not a delete task and the other way round
    status, body = await _call(http, "GET", f"{api}/delete/{task['task_id']}")
    assert status == 404 and _is_error(body, 404)


# `{id}` is a fresh random UUID, drawn in the test: a test's id must be the same in every
# pytest-xdist worker's collection.
@pytest.mark.parametrize("path", [
    "/deploy/{id}", "/deploy/not-a-uuid", "/delete/{id}",
    "/deploy-status/nobody/nothing", "/delete-status/{id}", "/no/such/route",
])
async def test_unknown_ids_are_404(api: str, http: aiohttp.ClientSession, path: str) -> None:
    status, body = await _call(http, "GET", api + path.format(id=uuid4()))
    assert status == 404 and _is_error(body, 404)


async def test_status_of_a_model_without_tasks_is_404(api: str, http: aiohttp.ClientSession,
                                                      hashing_model: Any) -> None:
    await hashing_model("idle")
    status, body = await _call(http, "GET", f"{api}/deploy-status/alice/idle")
    assert status == 404 and _is_error(body, 404)


def _rollout(rollout: dict[str, Any]) -> bytes:
    return json.dumps({"embedding_model_id": "alice/bad", "config": {"rollout": rollout}}).encode()


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 400),
    (b"", 400),
    (b"[1, 2]", 422),
    (b'{"config": {}}', 422),
    (b'{"embedding_model_id": 5}', 422),
    (b'{"embedding_model_id": "alice/bad", "config": {"memory": "lots"}}', 422),
    (b'{"embedding_model_id": "alice/bad", "config": {"autoscaling_min": 4, '
     b'"autoscaling_max": 2}}', 422),
    (b'{"embedding_model_id": "alice/bad", "config": {"replicas": 0}}', 422),
    # config.rollout (schemas/rollout.py): a mode it has no name for, an unknown key, a
    # probe set too large, too small, or with a sentence too long or blank.
    (_rollout({"compatibility": "same"}), 422),
    (_rollout({"probes": ["a"] * 20}), 422),
    (_rollout({"probe": ["a sentence"] * 501}), 422),
    (_rollout({"probe": ["a sentence"] * 19}), 422),
    (_rollout({"probe": ["a sentence"] * 19 + ["x" * 501]}), 422),
    (_rollout({"probe": ["a sentence"] * 19 + ["   "]}), 422),
    # A traffic phase longer than MAX_TRAFFIC_PHASE_S (review 1): four canary steps of
    # 1800 s (each allowed 10x), or a shadow of a day.
    (_rollout({"strategy": "canary", "canary": {"steps": [5, 25, 50, 100],
                                                "step_s": 1800}}), 422),
    (_rollout({"strategy": "shadow", "shadow": {"duration_s": 86_400}}), 422),
    (b'{"embedding_model_id": "nobody/nothing"}', 404),
    (b'{"embedding_model_id": "' + b"x" * (1024 * 1024 + 10) + b'"}', 413),
])
async def test_bad_requests_get_4xx_json(api: str, http: aiohttp.ClientSession,
                                         hashing_model: Any, body: bytes, status: int) -> None:
    await hashing_model("bad")
    for path in ("/deploy", "/delete"):
        got, payload = await _call(http, "POST", api + path, data=body,
                                   headers={"Content-Type": "application/json"})
        assert got == status, payload
        assert _is_error(payload, status)


async def test_idempotency_key_and_id(api: str, http: aiohttp.ClientSession,
                                      hashing_model: Any) -> None:
    await hashing_model("idem")
    body = {"id": "caller-key-1", "embedding_model_id": "alice/idem"}
    status, first = await _call(http, "POST", f"{api}/deploy", json=body)
    assert status == 202
    status, again = await _call(http, "POST", f"{api}/deploy", json=body)
    assert status == 200 and again["task_id"] == first["task_id"]
    status, err = await _call(http, "POST", f"{api}/deploy",
                              json={**body, "config": {"memory": 512}})
    assert status == 422 and _is_error(err, 422)
    headers = {"Idempotency-Key": "header-key-1"}
    plain = {"embedding_model_id": "alice/idem"}
    status, by_header = await _call(http, "POST", f"{api}/delete", json=plain, headers=headers)
    assert status == 202
    status, repeat = await _call(http, "POST", f"{api}/delete", json=plain, headers=headers)
    assert status == 200 and repeat["task_id"] == by_header["task_id"]


async def test_gateway_errors_are_json(gateway: str, http: aiohttp.ClientSession) -> None:
    status, body = await _call(http, "POST", f"{gateway}/v1/embeddings",
                               json={"model": "nothing", "input": "x"})
    assert status == 404 and _is_error(body, 404)
    status, body = await _call(http, "POST", f"{gateway}/v1/embeddings", json={"input": "x"})
    assert status == 422 and _is_error(body, 422)
    status, body = await _call(http, "POST", f"{gateway}/serve/nothing/embed", json={"inputs": "x"})
    assert status == 404 and _is_error(body, 404)
