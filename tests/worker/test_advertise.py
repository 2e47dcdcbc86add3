"""Replica endpoints name a routable address: the advertise address, else the bind address;
and a runtime bound to one host leaves other hosts' replicas alone."""

import json
from pathlib import Path
from uuid import uuid4

import aiohttp
import pytest
from pydantic import ValidationError

from schemas.settings import Settings
from tests.support.services import wait_for_http
from worker.runtimes.base import ReplicaSpec, endpoint_url, manages
from worker.runtimes.process import ProcessRuntime


def test_endpoint_host_defaults_to_loopback() -> None:
    assert Settings().replica_endpoint_host == "127.0.0.1"
    assert Settings(replica_host="10.1.2.3").replica_endpoint_host == "10.1.2.3"
    assert Settings(replica_host="0.0.0.0",
                    replica_advertise_host="10.1.2.3").replica_endpoint_host == "10.1.2.3"


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_bind_all_without_advertise_is_refused(bind: str) -> None:
    with pytest.raises(ValidationError, match="GREENROOM_REPLICA_ADVERTISE_HOST"):
        Settings(replica_host=bind)
    with pytest.raises(ValidationError, match="must be an address others can reach"):
        Settings(replica_host="10.1.2.3", replica_advertise_host=bind)


def test_endpoint_url_brackets_ipv6() -> None:
    assert endpoint_url("10.0.0.1", 80) == "http://10.0.0.1:80"
    assert endpoint_url("fd00::1", 80) == "http://[fd00::1]:80"
    assert endpoint_url("node-1.internal", 80) == "http://node-1.internal:80"


def test_host_bound_runtime_manages_only_its_host(tmp_path: Path) -> None:
    runtime = ProcessRuntime(Settings(state_dir=tmp_path, replica_host="0.0.0.0",
                                      replica_advertise_host="10.231.0.21"))
    assert manages(runtime, "http://10.231.0.21:4000")
    assert not manages(runtime, "http://10.231.0.22:4000")
    assert not manages(runtime, "http://127.0.0.1:4000")
    assert manages(runtime, None)  # not started yet: its starter's


async def test_process_replica_listens_on_bind_and_advertises(tmp_path: Path) -> None:
    """A replica told to bind 0.0.0.0 listens there, and its endpoint names the advertise
    address (127.0.0.1 here, the only address this check dials), which answers."""
    runtime = ProcessRuntime(Settings(state_dir=tmp_path, replica_host="0.0.0.0",
                                      replica_advertise_host="127.0.0.1",
                                      replica_cgroups=False))
    spec = ReplicaSpec(replica_id=uuid4(), model_id=uuid4(), model_identifier="t/h",
                       generation=1, task_id=None,
                       source={"backend": "hashing", "dimension": 8}, memory_mb=None)
    started = await runtime.start(spec)
    try:
        assert started.endpoint.startswith("http://127.0.0.1:")
        async with aiohttp.ClientSession() as http:
            await wait_for_http(http, started.endpoint + "/health", timeout_s=30)
        # Read once it answers: while the child is still between fork and exec (a loaded
        # machine), /proc/<pid>/environ can read empty.
        meta = json.loads((tmp_path / "replicas" / started.runtime_ref / "meta.json").read_text())
        environ = Path(f"/proc/{meta['pid']}/environ").read_bytes().split(b"\0")
        assert b"MODEL_SERVER_HOST=0.0.0.0" in environ
        info = await runtime.inspect(started.runtime_ref)
        assert info is not None and info.running and info.endpoint == started.endpoint
    finally:
        await runtime.remove(started.runtime_ref)
        await runtime.close()
