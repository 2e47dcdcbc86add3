"""A gateway killed outright takes the processes it started with it (gateway/children.py):
HAProxy and the Python gateway behind it (`--engine haproxy`), and a Python gateway's peers
(`GREENROOM_GATEWAY_PROCESSES`). Before, a gateway killed with SIGKILL left them running,
orphaned: an HAProxy of an ended test spun at 60 % of a core for the rest of the suite."""

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from gateway.haproxy.controller import find_haproxy
from schemas.settings import Settings
from tests.conftest import START_TIMEOUT_S, Proc
from tests.support.services import wait_for_http
from worker.runtimes.process import free_port

STOP_S = 20.0  # a SIGTERM'd child's graceful stop, with room for a loaded machine


async def _gateway(spawn: Callable[..., Proc], http: aiohttp.ClientSession,
                   **overrides: object) -> tuple[str, Proc, list[int]]:
    """A gateway process, its URL, and every process it started."""
    port = free_port("127.0.0.1")
    proc = spawn("gateway.server", gateway_port=port, **overrides)
    base = f"http://127.0.0.1:{port}"
    await wait_for_http(http, base + "/healthz", timeout_s=START_TIMEOUT_S)
    return base, proc, _descendants(proc.popen.pid)


def _stat(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent) of a running process, from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return name, rest[0], int(rest[1])


def _descendants(pid: int) -> list[int]:
    parents = {int(p.name): stat[2] for p in Path("/proc").iterdir() if p.name.isdigit()
               if (stat := _stat(int(p.name))) is not None}
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for child, parent in parents.items() if parent in frontier]
        found += frontier
    return found


async def _gone(children: list[int]) -> list[int]:
    """The children still running after STOP_S (killed then, so a failure leaves none)."""
    deadline = time.monotonic() + STOP_S
    alive = list(children)
    while alive and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        alive = [c for c in alive if _running(c)]
    for child in alive:
        with contextlib.suppress(OSError):
            os.kill(child, signal.SIGKILL)
    return alive


def _running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[1] != "Z"


@pytest.mark.skipif(find_haproxy(Settings()) is None, reason="haproxy is not installed")
async def test_an_haproxy_gateway_killed_takes_haproxy_and_its_python_gateway_with_it(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession) -> None:
    _, proc, children = await _gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=4)
    names = sorted((_stat(c) or ("gone",))[0] for c in children)
    assert any(n.startswith("haproxy") for n in names), names
    assert any(n.startswith("python") for n in names), names
    proc.kill(signal.SIGKILL)
    assert await _gone(children) == []


async def test_a_python_gateway_killed_takes_its_peers_with_it(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession) -> None:
    base, proc, peers = await _gateway(spawn, http, gateway_processes=3)
    assert len(peers) == 2, peers
    proc.kill(signal.SIGKILL)
    assert await _gone(peers) == []
    with pytest.raises(aiohttp.ClientConnectionError):  # nothing holds the port any more
        async with http.get(base + "/healthz") as resp:
            await resp.read()
