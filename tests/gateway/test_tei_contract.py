"""TEI's HTTP surface and OpenAI's input forms, each through a gateway process to a real
hashing model-server process; every malformed body a 4xx in its surface's error shape."""

import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import aiohttp
import asyncpg
import numpy as np
import pytest

from db import deployments, replicas
from tests.conftest import Proc, start_gateway
from tests.model_server.conftest import poll_health, start_server
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)

NAME = "tei-contract"
DIM = 64
BASE_KEYS = {"status_code", "message", "detail"}


async def serve_replica(pool: asyncpg.Pool, model_id: UUID, name: str, endpoint: str) -> UUID:
    """Make the model serve from `endpoint`, as a finished rollout would."""
    _, generation = await deployments.begin_generation(pool, model_id, name)
    replica_id = uuid4()
    await replicas.insert(pool, replica_id=replica_id, model_id=model_id,
                          generation=generation, task_id=None, runtime="process")
    await replicas.set_started(pool, replica_id, "test", endpoint)
    await deployments.switch(pool, model_id, generation, name, {})
    return replica_id


@pytest.fixture
async def served(pool: asyncpg.Pool, hashing_model: Any, spawn: Callable[..., Proc],
                 http: aiohttp.ClientSession, tmp_path: Path) -> AsyncIterator[str]:
    """`/serve/tei-contract` and model `tei-contract` on a gateway; returns the gateway URL."""
    server = start_server(tmp_path, MODEL_SERVER_BACKEND="hashing",
                          MODEL_SERVER_DIMENSION=str(DIM))
    try:
        await poll_health(http, server)
        model_id = await hashing_model(NAME)
        await serve_replica(pool, model_id, NAME, server.url)
        yield await start_gateway(spawn, http)
    finally:
        server.stop()


async def _post(http: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    async with http.post(url, json=body) as resp:
        return resp.status, await resp.json()


def _unit(rows: Any) -> np.ndarray:
    vectors = np.array(rows, dtype=np.float32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    return vectors


async def test_tei_routes_through_the_gateway(served: str, http: aiohttp.ClientSession) -> None:
    base = f"{served}/serve/{NAME}"
    status, embedded = await _post(http, f"{base}/embed", {"inputs": ["hello world", "again"]})
    assert status == 200 and len(embedded) == 2 and len(embedded[0]) == DIM
    _unit(embedded)
    for compat in (base, base + "/"):  # TEI's POST /, for either base-URL spelling
        status, body = await _post(http, compat, {"inputs": ["hello world", "again"]})
        assert status == 200 and np.allclose(body, embedded)
    status, raw = await _post(http, f"{base}/embed", {"inputs": "x y z", "normalize": False})
    assert status == 200 and np.linalg.norm(raw[0]) == pytest.approx(np.sqrt(3), rel=1e-5)

    status, tokens = await _post(http, f"{base}/tokenize", {"inputs": "héllo"})
    assert status == 200 and len(tokens) == 1
    assert tokens[0][0] == {"id": 1, "text": "[CLS]", "special": True, "start": None,
                            "stop": None}
    assert set(tokens[0][1]) == {"id", "text", "special", "start", "stop"}
    assert tokens[0][1]["text"] == "h" and (tokens[0][1]["start"], tokens[0][1]["stop"]) == (0, 1)
    status, plain = await _post(http, f"{base}/tokenize",
                                {"inputs": ["ab", "c"], "add_special_tokens": False})
    assert status == 200 and [len(t) for t in plain] == [2, 1]
    assert not any(t["special"] for row in plain for t in row)

    ids = [t["id"] for t in tokens[0]]
    status, text = await _post(http, f"{base}/decode", {"ids": ids})
    assert (status, text) == (200, ["héllo"])
    status, texts = await _post(http, f"{base}/decode",
                                {"ids": [ids, ids], "skip_special_tokens": False})
    assert (status, texts) == (200, ["[CLS]héllo[SEP]"] * 2)

    status, every = await _post(http, f"{base}/embed_all", {"inputs": ["ab", "cde"]})
    assert status == 200 and [len(row) for row in every] == [4, 5]  # [CLS] + bytes + [SEP]
    assert all(len(vector) == DIM for row in every for vector in row)

    # Token ids embed as the text they decode to.
    status, from_ids = await _post(http, f"{base}/embed", {"inputs": [ids, "héllo"]})
    assert status == 200 and np.allclose(from_ids[0], from_ids[1])

    for path, check in (("/health", lambda b: b == {"status": "ok"}),
                        ("/info", lambda b: b["dimension"] == DIM and b["model_id"])):
        async with http.get(base + path) as resp:
            assert resp.status == 200 and check(await resp.json())
    async with http.get(base + "/metrics") as resp:
        assert resp.status == 200 and "# TYPE" in await resp.text()


async def test_openai_input_forms(served: str, http: aiohttp.ClientSession) -> None:
    url = f"{served}/v1/embeddings"
    _, tokens = await _post(http, f"{served}/serve/{NAME}/tokenize",
                            {"inputs": ["one two", "three"], "add_special_tokens": False})
    ids = [[t["id"] for t in row] for row in tokens]
    forms = {
        "string": ("one two", 1),
        "list of strings": (["one two", "three"], 2),
        "token ids": (ids[0], 1),
        "list of token-id lists": (ids, 2),
    }
    vectors = {}
    for form, (value, count) in forms.items():
        status, body = await _post(http, url, {"model": NAME, "input": value, "user": "u-1"})
        assert status == 200, (form, body)
        assert body["object"] == "list" and len(body["data"]) == count, form
        assert [d["index"] for d in body["data"]] == list(range(count))
        vectors[form] = _unit([d["embedding"] for d in body["data"]])
    assert np.allclose(vectors["string"], vectors["token ids"])
    assert np.allclose(vectors["list of strings"], vectors["list of token-id lists"])

    status, body = await _post(http, url, {"model": NAME, "input": "one two",
                                           "encoding_format": "base64"})
    decoded = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert status == 200 and np.allclose(decoded, vectors["string"][0])

    words = "the quick brown fox jumps over the lazy dog by the river bank today"
    _, full = await _post(http, url, {"model": NAME, "input": words})
    status, body = await _post(http, url, {"model": NAME, "input": words, "dimensions": 32})
    short = np.array(body["data"][0]["embedding"])
    assert status == 200 and len(short) == 32
    prefix = np.array(full["data"][0]["embedding"][:32])
    assert np.linalg.norm(prefix) > 0
    assert np.allclose(short, prefix / np.linalg.norm(prefix), atol=1e-6)

    # The same through the TEI passthrough, where the deployment is in the path.
    status, body = await _post(http, f"{served}/serve/{NAME}/v1/embeddings", {"input": ids})
    assert status == 200 and np.allclose([d["embedding"] for d in body["data"]],
                                         vectors["list of strings"])


TEI_MALFORMED = [
    ("/embed", {"inputs": {"a": 1}}, 422),
    ("/embed", {"inputs": []}, 422),
    ("/embed", {"inputs": "x", "normalize": "yes"}, 422),
    ("/embed", {"inputs": [[1, -2]]}, 422),
    ("/embed", {"inputs": [[99999]]}, 422),
    ("/embed", {"inputs": "x", "prompt_name": "query"}, 422),
    ("/embed", {"inputs": ["x"] * 300}, 413),
    ("/", {"text": "no inputs"}, 422),
    ("/embed_all", {"inputs": 5}, 422),
    ("/tokenize", {"inputs": [1, 2]}, 422),
    ("/tokenize", {"inputs": "x", "add_special_tokens": "no"}, 422),
    ("/decode", {"ids": "abc"}, 422),
    ("/decode", {"ids": []}, 422),
    ("/decode", {"ids": [1, 100000]}, 422),
    ("/decode", {"ids": [[1], ["a"]]}, 422),
]
OPENAI_MALFORMED = [
    ({"model": NAME, "input": {"a": 1}}, 422),
    ({"model": NAME, "input": [1.5]}, 422),
    ({"model": NAME, "input": [[1], "x", 3]}, 422),
    ({"model": NAME, "input": "x", "encoding_format": "int8"}, 422),
    ({"model": NAME, "input": "x", "dimensions": DIM + 1}, 422),
    ({"model": NAME, "input": "x", "dimensions": 0}, 422),
    ({"model": NAME, "input": "x", "user": 7}, 422),
    ({"model": NAME}, 422),
    ({"input": "x"}, 422),  # the gateway's own check: no model named
    ({"model": "nothing-here", "input": "x"}, 404),
]


def _tei_shape(body: Any, status: int) -> bool:
    return (set(body) == BASE_KEYS | {"error", "error_type"} and body["status_code"] == status
            and body["error"] == body["message"] != "" and body["error_type"] == "Validation")


def _openai_shape(body: Any, status: int) -> bool:
    return (set(body) == BASE_KEYS | {"code", "type"} and body["status_code"] == status
            and body["code"] == status and bool(body["message"]) and bool(body["type"]))


async def test_malformed_bodies_are_4xx_in_the_surface_shape(
        served: str, http: aiohttp.ClientSession) -> None:
    wrong = []
    for path, body, status in TEI_MALFORMED:
        got, answer = await _post(http, f"{served}/serve/{NAME}{path}", body)
        if got != status or not _tei_shape(answer, status):
            wrong.append(f"TEI {path} {body}: {got} {answer}")
    for body, status in OPENAI_MALFORMED:
        got, answer = await _post(http, f"{served}/v1/embeddings", body)
        if got != status or not _openai_shape(answer, status):
            wrong.append(f"OpenAI {body}: {got} {answer}")
    for path in ("/serve/" + NAME + "/embed", "/v1/embeddings"):
        async with http.post(served + path, data=b"{not json",
                             headers={"Content-Type": "application/json"}) as resp:
            answer = await resp.json()
            shape = _tei_shape if path.startswith("/serve") else _openai_shape
            if resp.status != 400 or not shape(answer, 400):
                wrong.append(f"not JSON to {path}: {resp.status} {answer}")
    assert not wrong, "\n".join(wrong)
