"""Must-show 4: every process's documented series exist and move as they should after a
deploy, an inference (one of them past a dead replica) and a failed rollout."""

import asyncio
import json
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from db import models, replicas
from schemas.settings import Settings
from tests.conftest import Proc, wait_task
from tests.support import services
from tests.support.as_admin import admin_http  # noqa: F401  (as the administrator)
from worker.runtimes.process import free_port

REPO = Path(__file__).resolve().parents[2]
OPERATIONS = REPO / "docs" / "operations.md"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def documented() -> dict[str, str]:
    """metric → process, from the table in the Metrics section of docs/operations.md."""
    section = OPERATIONS.read_text().split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (\w+) \|", section, re.MULTILINE)
    assert len(rows) >= 16, "the metrics table of docs/operations.md"
    return dict(rows)


async def scrape(http: aiohttp.ClientSession, url: str) -> tuple[Samples, set[str]]:
    """(samples by name and labels, the names of every family, suffixes included)."""
    async with http.get(url) as resp:
        assert resp.status == 200
        text = await resp.text()
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
            names.add(sample.name)
    return samples, names


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of a series over the samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def present(names: set[str], metric: str) -> bool:
    return metric in names or any(n.startswith(metric + "_") for n in names)


async def _deploy(http: aiohttp.ClientSession, api: str, config: dict[str, Any]) -> dict[str, Any]:
    async with http.post(f"{api}/deploy", json={"embedding_model_id": "alice/metered",
                                                "config": config}) as resp:
        assert resp.status == 202
        task = await resp.json()
    return await wait_task(http, api, "deploy", task["task_id"])


async def _embed(http: aiohttp.ClientSession, api: str) -> str:
    async with http.post(f"{api}/v1/embeddings", json={"model": "metered", "input": "x"}) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-Greenroom-Replica"]


async def _kill_replica(pool: asyncpg.Pool, state_dir: Path, replica_id: str) -> None:
    """SIGKILL the replica's process group and return once its port refuses connections
    (every process of it has exited, its connections closed)."""
    marker = f"GREENROOM_REPLICA_ID={replica_id}".encode()
    pids = [pid for pid, env in services.replica_processes(state_dir).items() if marker in env]
    assert len(pids) == 1
    os.killpg(pids[0], signal.SIGKILL)
    replica, = await replicas.get_many(pool, [UUID(replica_id)])
    assert replica.endpoint is not None
    port = int(replica.endpoint.rsplit(":", 1)[1])
    for _ in range(500):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.01)
    raise AssertionError("the killed replica still accepts connections")


async def test_documented_metrics_exist_and_move(
        api: str, gateway: str, spawn: Callable[..., Proc], http: aiohttp.ClientSession,
        pool: asyncpg.Pool, settings: Settings, hashing_model: Any) -> None:
    model_id = await hashing_model("metered")
    port = free_port("127.0.0.1")
    spawn("worker", worker_metrics_port=port, reconcile_interval_s=2)
    worker_url, api_url = f"http://127.0.0.1:{port}/metrics", f"{api}/metrics"
    gateway_url = f"{gateway}/metrics"
    await services.wait_for_http(http, worker_url)
    api_before, _ = await scrape(http, api_url)
    gateway_before, _ = await scrape(http, gateway_url)
    worker_before, _ = await scrape(http, worker_url)

    done = await _deploy(http, api, {"replicas": 2})
    assert done["status"] == "done", done
    served_by = await _embed(http, gateway)
    # The gateway sends a lone request to the same replica each time: kill it, and the
    # next request meets a dead upstream first, then is retried on the other replica. Once
    # the replica has exited (its connections closed): a request written to a replica is
    # never sent again (review M6), only one that could not connect.
    await _kill_replica(pool, settings.state_dir, served_by)
    assert await _embed(http, gateway) != served_by
    await asyncio.sleep(4.5)  # two reconcile passes: the dead replica replaced
    await models.update_source(pool, model_id, {"backend": "hashing", "startup_delay_s": 600})
    failed = await _deploy(http, api, {"replicas": 1, "deploy_timeout_s": 1})
    assert failed["status"] == "failed", failed
    await asyncio.sleep(2.5)  # a reconcile pass after it: gauges read again

    api_after, api_names = await scrape(http, api_url)
    gateway_after, gateway_names = await scrape(http, gateway_url)
    worker_after, worker_names = await scrape(http, worker_url)
    replica = done["metadata"]["replicas"]
    alive = [url for url in replica if not await _dead(http, url)]
    model_after, model_names = await scrape(http, alive[0] + "/metrics")
    names = {"api": api_names, "gateway": gateway_names, "worker": worker_names,
             "replica": model_names}
    missing = [m for m, proc in documented().items() if not present(names[proc], m)]
    assert not missing, missing

    def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = {"method": "POST", "route": "/deploy"}
    assert moved(api_before, api_after, "greenroom_api_requests_total",
                 status="202", **route) == 2
    assert moved(api_before, api_after, "greenroom_api_request_duration_seconds_count",
                 **route) == 2
    # Polling a task is counted under its route template, not one series per task id.
    assert moved(api_before, api_after, "greenroom_api_requests_total",
                 method="GET", route="/deploy/{task_id}", status="200") >= 2
    assert moved(gateway_before, gateway_after, "greenroom_gateway_requests_total",
                 deployment="metered", status="200") == 2
    assert moved(gateway_before, gateway_after, "greenroom_gateway_request_duration_seconds_count",
                 deployment="metered") == 2
    assert moved(gateway_before, gateway_after, "greenroom_gateway_upstream_errors_total",
                 deployment="metered") == 1
    inflight = [ls for (n, ls) in gateway_after if n == "greenroom_gateway_inflight_requests"]
    assert len(inflight) >= 2, "one series per routed replica"

    tasks = "greenroom_worker_tasks_total"
    assert moved(worker_before, worker_after, tasks, kind="deploy", outcome="done") == 1
    assert moved(worker_before, worker_after, tasks, kind="deploy", outcome="failed") == 1
    assert moved(worker_before, worker_after,
                 "greenroom_worker_task_pickup_delay_seconds_count") == 2
    phases = "greenroom_worker_rollout_phase_duration_seconds_count"
    assert moved(worker_before, worker_after, phases, kind="deploy",
                 phase="starting_replicas") == 2
    assert moved(worker_before, worker_after, phases, kind="deploy", phase="draining") == 1
    assert moved(worker_before, worker_after, "greenroom_worker_reconciler_actions_total",
                 action="replace_crashed_replica") == 1
    assert value(worker_after, "greenroom_replicas", state="ready") == 2
    assert ("greenroom_worker_queue_depth", frozenset()) in worker_after

    assert value(model_after, "model_server_requests_total", status="200") >= 1
    assert value(model_after, "model_server_embeddings_total") >= 1


async def _dead(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/health", timeout=aiohttp.ClientTimeout(total=2)) as resp:
            return resp.status != 200
    except aiohttp.ClientError:
        return True


def test_the_grafana_dashboard_reads_every_documented_metric() -> None:
    import json

    dashboard = json.loads((REPO / "docs/grafana/greenroom.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    used = {re.sub(r"_(bucket|sum|count)$", "", m)
            for m in re.findall(r"\b((?:greenroom|model_server)_\w+)", exprs)}
    assert used == set(documented()), used ^ set(documented())


async def test_invented_methods_and_paths_add_no_series(
        api: str, http: aiohttp.ClientSession) -> None:
    """Review finding 14: a method or path a client makes up is one label value each (the
    HTTP parser refuses unknown tokens; these are methods it knows, WebDAV's and others)."""
    api_url = f"{api}/metrics"
    unusual = ("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT",
               "SEARCH", "PURGE")
    for i, method in enumerate(unusual * 2):
        async with http.request(method, f"{api}/deploy/x{i}") as resp:
            assert 400 <= resp.status < 500
    samples, _ = await scrape(http, api_url)
    methods = {dict(labels)["method"] for (name, labels) in samples
               if name == "greenroom_api_requests_total"}
    routes = {dict(labels)["route"] for (name, labels) in samples
              if name == "greenroom_api_requests_total" and dict(labels)["method"] == "other"}
    assert not set(unusual) & methods, methods
    assert "other" in methods and len(routes) <= 2, routes
    assert value(samples, "greenroom_api_requests_total", method="other") == 20


async def test_gateway_metrics_need_the_metrics_token_when_one_is_set(
        spawn: Callable[..., Any], http: aiohttp.ClientSession, clean: None) -> None:
    """Review finding 20: the gateway's series name private deployments; with
    GREENROOM_METRICS_TOKEN set a scraper must send it."""
    from tests.conftest import start_gateway

    base = await start_gateway(spawn, http, metrics_token="scrape-token-5521")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "scrape-token-5521"}):
        async with http.get(f"{base}/metrics", headers=headers) as resp:
            body = await resp.json()
            assert resp.status == 401 and body["status_code"] == 401, body
            assert "scrape-token-5521" not in json.dumps(body)
    async with http.get(f"{base}/metrics",
                        headers={"Authorization": "Bearer scrape-token-5521"}) as resp:
        assert resp.status == 200 and "greenroom_gateway" in await resp.text()


@pytest.mark.parametrize(("remote", "allowed"), [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.1.2.3", False), ("192.168.0.7", False), ("::ffff:10.1.2.3", False), (None, False)])
def test_gateway_metrics_without_a_token_are_for_loopback_callers_only(
        remote: str | None, allowed: bool) -> None:
    """The rule itself, for callers a test on this host cannot be (a fake transport gives
    the request its peer address)."""
    from unittest import mock

    from aiohttp.test_utils import make_mocked_request

    from edge.errors import as_api_error
    from gateway import metrics_access
    from schemas.errors import Forbidden
    from schemas.settings import Settings

    transport = mock.Mock()
    transport.get_extra_info.return_value = (remote, 40000) if remote else None
    request = make_mocked_request("GET", "/metrics", transport=transport)
    if allowed:
        metrics_access.check(request, Settings())
    else:
        with pytest.raises(Forbidden) as refused:
            metrics_access.check(request, Settings())
        assert as_api_error(refused.value).status == 403
