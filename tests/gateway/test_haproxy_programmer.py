"""The HAProxy configuration HAProxy itself accepts, and the order of the Runtime API
commands the controller sends on a switch, a drain and a model made private (against a
fake admin socket that records commands: the real HAProxy runs in
tests/gateway/test_haproxy.py)."""

import asyncio
import dataclasses
import subprocess
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from db.deployments import Route
from gateway.haproxy.config import Layout, write
from gateway.haproxy.controller import find_haproxy
from gateway.haproxy.programmer import Programmer
from gateway.haproxy.runtime_api import RuntimeApi, ServerStat
from schemas.settings import Settings

MODEL = UUID(int=1)


class RecordingApi(RuntimeApi):
    """A fake Runtime API: records each command and answers as HAProxy does to success."""

    def __init__(self) -> None:
        super().__init__(Path("/nonexistent"))
        self.sent: list[str] = []

    async def command(self, line: str) -> str:
        self.sent.append(line)
        return "New server registered.\n" if line.startswith("add server") else "\n"


def _layout(tmp_path: Path, slots: int = 2, per_slot: int = 2) -> Layout:
    return Layout(tmp_path, "127.0.0.1", 8001, 8404, [9001, 9002], slots, per_slot)


def _route(generation: int, ports: list[int], access: str = "public") -> tuple[Route, list[UUID]]:
    ids = [uuid4() for _ in ports]
    replicas = [(i, f"http://127.0.0.1:{p}") for i, p in zip(ids, ports, strict=True)]
    return Route(MODEL, "m", "alice/m", generation, access, replicas), ids


@pytest.mark.skipif(find_haproxy(Settings()) is None, reason="haproxy is not installed")
def test_haproxy_accepts_the_configuration(tmp_path: Path) -> None:
    layout = _layout(tmp_path, slots=64, per_slot=16)
    write(layout)
    binary = find_haproxy(Settings())
    assert binary is not None
    check = subprocess.run([binary, "-c", "-f", str(layout.config)], capture_output=True,
                           text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_a_switch_fills_the_new_slot_before_one_set_map_per_name(tmp_path: Path) -> None:
    api = RecordingApi()
    programmer = Programmer(api, _layout(tmp_path))
    first, old_ids = _route(1, [7001])
    await programmer.apply([first])
    second, _ = _route(2, [7002])
    api.sent.clear()
    await programmer.apply([second])
    direct = str(tmp_path / "direct.map")
    assert api.sent == [
        # The new slot's answers name their generation (issue 26) before any is routed there.
        f"add map {tmp_path / 'generations.map'} slot1 2",
        "set server slot1/s1_1 addr 127.0.0.1 port 7002",
        f"add map {tmp_path / 'replicas.map'} s1_1 {second.replicas[0][0]}",
        "set server slot1/s1_1 state ready",
        f"set map {direct} m slot1", f"set map {direct} {MODEL} slot1",
        "set server slot0/s0_1 state drain",
    ]
    assert programmer.generations == {str(MODEL): 2}
    # The old server is freed only once nothing is in flight on it.
    busy = [ServerStat("slot0", "s0_1", 1, 5, 0)]
    api.sent.clear()
    await programmer.reap(busy)
    assert api.sent == [] and programmer.draining
    assert [(c.replica_id, c.current) for c in programmer.carried(busy)] == [(old_ids[0], 1)]
    await programmer.reap([ServerStat("slot0", "s0_1", 0, 6, 0)])
    assert api.sent == ["set server slot0/s0_1 state maint"] and not programmer.draining


async def test_a_model_made_private_is_unmapped_first(tmp_path: Path) -> None:
    api = RecordingApi()
    programmer = Programmer(api, _layout(tmp_path))
    public, _ = _route(1, [7001])
    await programmer.apply([public])
    api.sent.clear()
    private = Route(MODEL, "m", "alice/m", 1, "private", public.replicas)
    await programmer.apply([private])
    direct = str(tmp_path / "direct.map")
    assert api.sent[:2] == [f"del map {direct} m", f"del map {direct} {MODEL}"]
    assert api.sent[2:] == ["set server slot0/s0_1 state drain"]
    assert programmer.generations == {str(MODEL): 1}  # the Python gateway serves it now


async def test_more_replicas_than_a_slot_holds_go_to_the_python_gateway(tmp_path: Path) -> None:
    api = RecordingApi()
    programmer = Programmer(api, _layout(tmp_path, per_slot=2))
    big, _ = _route(1, [7001, 7002, 7003])
    await programmer.apply([big])
    assert api.sent == []


async def test_stats_are_read_only_for_the_slots_in_use_in_one_round_trip(
        tmp_path: Path) -> None:
    class StatApi(RecordingApi):
        def __init__(self) -> None:
            super().__init__()
            self.asked: list[list[str]] = []

        async def _ask(self, lines: list[str]) -> list[str]:
            self.asked.append(lines)
            header = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,\n"
            return [header + f"{name},s{name[-1]}_1,0,0,{n},0,,{10 * n},"
                    for n, name in enumerate([line.split()[2] for line in lines], 1)]

    api = StatApi()
    programmer = Programmer(api, _layout(tmp_path, slots=4))
    assert await api.servers(programmer.in_use) == [] and api.asked == [], "nothing in use"
    route, _ = _route(1, [7001])
    await programmer.apply([route])
    other = Route(UUID(int=2), "o", "alice/o", 1, "public", [(uuid4(), "http://127.0.0.1:7002")])
    await programmer.apply([route, other])
    stats = await api.servers(programmer.in_use)
    assert api.asked == [["show stat slot0 4 -1", "show stat slot1 4 -1"]]
    assert [(s.backend, s.current, s.total) for s in stats] == [("slot0", 1, 10),
                                                                ("slot1", 2, 20)]
    assert await api.backends(programmer.in_use) == {"slot0": 1, "slot1": 2}


async def test_the_stats_session_is_kept_and_opened_again_once_closed(tmp_path: Path) -> None:
    """Against a socket that answers as HAProxy's CLI does in prompt mode and closes the
    first session after one command (as HAProxy's `stats timeout` does to an idle one)."""
    sessions: list[list[str]] = []

    async def cli(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen: list[str] = []
        sessions.append(seen)
        while line := (await reader.readline()).decode().strip():
            seen.append(line)
            if line == "prompt":
                writer.write(b"\n> ")
            else:
                name = line.split()[2]
                writer.write(f"# pxname,svname,scur,\n{name},BACKEND,{len(seen)},\n\n> ".encode())
            await writer.drain()
            if len(sessions) == 1 and len(seen) == 2:
                break
        writer.close()

    path = tmp_path / "admin.sock"
    server = await asyncio.start_unix_server(cli, str(path))
    api = RuntimeApi(path)
    try:
        assert await api.backends(["slot0"]) == {"slot0": 2}
        assert await api.backends(["slot0", "slot1"]) == {"slot0": 2, "slot1": 3}
        assert await api.backends(["slot1"]) == {"slot1": 4}
    finally:
        api.close()
        server.close()
    assert sessions == [["prompt", "show stat slot0 2 -1"],
                        ["prompt", "show stat slot0 2 -1", "show stat slot1 2 -1",
                         "show stat slot1 2 -1"]]


async def test_a_read_cancelled_mid_answer_does_not_leave_its_answer_to_the_next(
        tmp_path: Path) -> None:
    """The answer to a cancelled read still arrives on the session; the next read must not
    take it for its own (the session is dropped on cancellation)."""
    sessions = 0

    async def cli(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        sessions += 1
        while line := (await reader.readline()).decode().strip():
            if line == "prompt":
                writer.write(b"\n> ")
            else:
                name = line.split()[2]
                if name == "slow":
                    await asyncio.sleep(0.3)
                writer.write(f"# pxname,svname,scur,\n{name},BACKEND,1,\n\n> ".encode())
            await writer.drain()
        writer.close()

    path = tmp_path / "admin.sock"
    server = await asyncio.start_unix_server(cli, str(path))
    api = RuntimeApi(path)
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(api.backends(["slow"]), 0.1)
        await asyncio.sleep(0.4)  # the slow answer has been written by now
        assert await api.backends(["slot0"]) == {"slot0": 1}
    finally:
        api.close()
        server.close()
    assert sessions == 2


async def test_a_model_id_names_its_own_model_over_a_deployment_named_after_it(
        tmp_path: Path) -> None:
    """Review M10: a decoy deployment named after another model's id (one made before such
    names were refused) took that id's traffic whenever its route was written last."""
    victim = Route(uuid4(), "pub", "alice/pub", 1, "public",
                   [(uuid4(), "http://127.0.0.1:7001")])
    decoy = Route(uuid4(), str(victim.model_id), "bob/decoy", 1, "public",
                  [(uuid4(), "http://127.0.0.1:7002")])
    for order in ([victim, decoy], [decoy, victim]):
        api = RecordingApi()
        programmer = Programmer(api, _layout(tmp_path, slots=4))
        await programmer.apply(order)
        await programmer.apply(order)
        direct = str(tmp_path / "direct.map")
        maps = [line.split()[-2:] for line in api.sent
                if line.startswith(("add map " + direct, "set map " + direct))]
        last = dict(maps)
        assert last[str(victim.model_id)] == programmer._live[victim.model_id].backend, maps
        assert last["pub"] == programmer._live[victim.model_id].backend
        assert last[str(decoy.model_id)] == programmer._live[decoy.model_id].backend


async def test_a_slot_names_its_generation_and_pinned_revision_before_it_is_routed(
        tmp_path: Path) -> None:
    """Issue 26: the X-Greenroom-Generation and -Revision headers HAProxy sets come from the
    slot's entries in two maps, written before any name points at the slot."""
    api = RecordingApi()
    programmer = Programmer(api, _layout(tmp_path))
    route, _ = _route(4, [7001])
    await programmer.apply([dataclasses.replace(route, revision=3)])
    assert api.sent[:2] == [f"add map {tmp_path / 'generations.map'} slot0 4",
                            f"add map {tmp_path / 'revisions.map'} slot0 r3"], api.sent
    assert all("direct.map" not in line for line in api.sent[:2])
    write(_layout(tmp_path))
    text = (tmp_path / "haproxy.cfg").read_text()
    assert f"set-header X-Greenroom-Generation %[str(slot1),map({tmp_path / 'generations.map'})]" \
        in text
    assert f"set-header X-Greenroom-Revision %[str(slot1),map({tmp_path / 'revisions.map'})]" \
        in text
