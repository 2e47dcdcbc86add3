"""Issue 24, must-show 6: the rules the API's OpenAPI document cannot state in JSON Schema,
each excepted by name in tests/fuzz/schemathesis.toml, pinned here: a reused idempotency
key, `autoscaling_min` over `autoscaling_max`, and Allow on a URL two templates share. And
what the document now states exactly: /scale's `config` is the replica count only, and an
empty upload is no archive (415, as any body of another type)."""

from typing import Any

import aiohttp
import asyncpg

from tests.support.accounts import call, make_user

MODEL = "alice/hash-model"


async def test_a_reused_idempotency_key_with_another_request_is_a_422(
        api: str, http: aiohttp.ClientSession, admin_headers: dict[str, str],
        hashing_model: Any) -> None:
    await hashing_model()
    first = {"id": "contract-1", "embedding_model_id": MODEL}
    status, task = await call(http, "POST", f"{api}/deploy", headers=admin_headers, json=first)
    assert status == 202, task
    status, again = await call(http, "POST", f"{api}/deploy", headers=admin_headers, json=first)
    assert (status, again["task_id"]) == (200, task["task_id"])
    # (/scale checks first that something serves: here a 409, as without the key.)
    for path, body in (("/deploy", first | {"config": {"replicas": 2}}), ("/delete", first)):
        status, error = await call(http, "POST", api + path, headers=admin_headers, json=body)
        assert status == 422, (path, error)
        assert error["status_code"] == 422 and error["detail"] == {"task_id": task["task_id"]}


async def test_autoscaling_min_over_max_is_a_422(
        api: str, http: aiohttp.ClientSession, admin_headers: dict[str, str],
        hashing_model: Any) -> None:
    await hashing_model()
    config = {"autoscaling_enabled": True, "autoscaling_min": 3, "autoscaling_max": 2}
    for path, body in (("/deploy", {"embedding_model_id": MODEL, "config": config}),
                       (f"/api/v2/deploy/{MODEL}", config)):
        status, error = await call(http, "POST", api + path, headers=admin_headers, json=body)
        assert status == 422, (path, error)
        assert "autoscaling_min must not exceed autoscaling_max" in str(error), error


async def test_a_scale_tasks_config_is_its_replica_count_only(
        api: str, http: aiohttp.ClientSession, admin_headers: dict[str, str],
        hashing_model: Any) -> None:
    await hashing_model()
    for config in ({}, {"replicas": 2, "memory": 512}, {"replicas": 0}):
        status, error = await call(http, "POST", f"{api}/scale", headers=admin_headers,
                                   json={"embedding_model_id": MODEL, "config": config})
        assert status == 422 and error["status_code"] == 422, (config, error)
    # Valid: refused only because nothing serves the model yet.
    status, error = await call(http, "POST", f"{api}/scale", headers=admin_headers,
                               json={"embedding_model_id": MODEL, "config": {"replicas": 2}})
    assert status == 409, error


async def test_an_empty_upload_is_a_415(api: str, http: aiohttp.ClientSession,
                                        admin_headers: dict[str, str]) -> None:
    status, model = await call(http, "POST", f"{api}/api/v2/models", headers=admin_headers,
                               json={"name": "empty"})
    assert status == 201, model
    status, error = await call(http, "POST", f"{api}/api/v2/models/{model['id']}/upload",
                               headers=admin_headers, data=b"")
    assert status == 415 and error["status_code"] == 415, error
    assert "empty" in error["message"], error


async def test_allow_names_every_template_a_url_matches(
        api: str, http: aiohttp.ClientSession) -> None:
    """/api/v2/deploy/alice/logs is the logs of model `alice` and the model `alice/logs`:
    its Allow names the methods of both (RFC 9110), which is why schemathesis.toml turns
    allow_header_conformance off on such templates."""
    for path, allowed in (("/api/v2/deploy/alice/logs", {"GET", "POST", "DELETE"}),
                          ("/api/v2/deploy/log", {"GET", "POST", "DELETE"}),
                          ("/api/v2/models/alice/upload", {"GET", "POST"})):
        async with http.request("OPTIONS", api + path) as resp:
            assert resp.status == 405, (path, resp.status)
            assert {m.strip() for m in resp.headers["Allow"].split(",")} == allowed, path


async def test_a_body_nested_past_the_bound_is_a_422_not_a_500(
        api: str, http: aiohttp.ClientSession, admin_headers: dict[str, str]) -> None:
    """Valid JSON nested ~900 deep (about 2 kB) passed the decoder, then a recursive check
    of the body hit Python's recursion limit: a 500, from an anonymous login. Past 64
    levels (no documented request nests past a few), or past the decoder's own limit,
    it is a 422."""
    for depth in (65, 900, 5000):
        body = '{"username": "alice", "password": ' + "[" * depth + "]" * depth + "}"
        for path, headers in (("/api/v2/auth/login", {}), ("/deploy", admin_headers)):
            status, error = await call(http, "POST", api + path, data=body,
                                       headers=headers | {"Content-Type": "application/json"})
            assert status == 422 and "nested deeper than 64" in error["message"], (
                depth, path, error)
    # 64 levels are still read (and then judged by the document: a password is a string).
    body = '{"username": "alice", "password": ' + "[" * 63 + "]" * 63 + "}"
    status, error = await call(http, "POST", f"{api}/api/v2/auth/login", data=body,
                               headers={"Content-Type": "application/json"})
    assert status == 422 and "nested" not in error["message"], error


async def test_allow_pickle_takes_pythons_true_and_false(
        api: str, http: aiohttp.ClientSession, pool: asyncpg.Pool) -> None:
    """Python's `requests` sends `allow_pickle=True`: read as `true` (here a non-admin's,
    so a 403 before the body is read), as the document's enum lists it; other words 422."""
    _, headers = await make_user(pool, "pickler")
    status, model = await call(http, "POST", f"{api}/api/v2/models", headers=headers,
                               json={"name": "weights"})
    assert status == 201, model
    url = f"{api}/api/v2/models/{model['id']}/upload"
    for value, expected in (("True", 403), ("true", 403), ("False", 415), ("maybe", 422)):
        status, error = await call(http, "POST", f"{url}?allow_pickle={value}",
                                   headers=headers, data=b"")
        assert status == expected, (value, error)
