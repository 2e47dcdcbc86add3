"""Program HAProxy from the routing table: slots, servers, the `direct` map, the drain.

A public deployment with ready replicas is served by HAProxy directly: its serving
generation owns one slot backend, whose servers are its replicas (named by replica id).
A new generation gets a fresh slot, filled before its names move to it with one
`set map` each, so every request after the switch goes to the new generation. The old
slot's servers are drained (`state drain`) and, once `scur` shows nothing in flight on
them, put in maintenance and deleted; an empty slot goes back to the pool.

A deployment that is not public, has no ready replica (scaled to zero: the Python
gateway holds the request) or finds the pool empty is not in the map, so the Python
gateway serves it. Map entries that must go are removed before anything else changes:
a model made private stops being served directly on the first command.
"""

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from uuid import UUID

import structlog

from db.deployments import Route
from gateway.haproxy.config import slot_name
from gateway.haproxy.runtime_api import RuntimeApi, RuntimeApiError, ServerStat

log = structlog.get_logger(__name__)


@dataclass
class Slot:
    """One backend of the pool and what it holds now."""

    backend: str
    model_id: UUID | None = None
    generation: int | None = None
    servers: dict[UUID, str] = field(default_factory=dict)  # replica id → host:port
    retiring: set[UUID] = field(default_factory=set)  # drained; deleted once idle


def address(endpoint: str) -> str:
    """`http://host:port` (a replica's endpoint) as HAProxy's `host:port`."""
    parts = urlsplit(endpoint)
    return f"{parts.hostname}:{parts.port or 80}"


def _keys(route: Route) -> list[str]:
    """The names a request may use in /serve/{name}: the deployment's name and model id."""
    return [route.name, str(route.model_id)]


class Programmer:
    def __init__(self, api: RuntimeApi, direct_map: Path, slots: int) -> None:
        self._api, self._map = api, direct_map
        self._slots = {slot_name(i): Slot(slot_name(i)) for i in range(slots)}
        self._free = [slot_name(i) for i in reversed(range(slots))]
        self._live: dict[UUID, Slot] = {}  # model → the slot its serving generation owns
        self._mapped: dict[str, str] = {}  # map key → slot backend
        self.generations: dict[str, int] = {}  # model id → generation routed to (any path)

    @property
    def draining(self) -> bool:
        return any(slot.retiring for slot in self._slots.values())

    def slot_backends(self) -> set[str]:
        return set(self._slots)

    async def apply(self, routes: list[Route]) -> None:
        """Make HAProxy route as `routes` say (see the module docstring for the order)."""
        direct = {r.model_id: r for r in routes if r.access_level == "public" and r.replicas}
        keys = {key: r.model_id for r in direct.values() for key in _keys(r)}
        for key in [k for k, backend in self._mapped.items()
                    if keys.get(k) != self._slots[backend].model_id]:
            await self._unmap(key)
        for route in direct.values():
            await self._serve(route)
        for model_id in [m for m in self._live if m not in direct]:
            await self._retire(self._live.pop(model_id))
        self.generations = {str(r.model_id): r.generation for r in routes}

    async def _serve(self, route: Route) -> None:
        current = self._live.get(route.model_id)
        if current is not None and current.generation == route.generation:
            await self._fill(current, route)
            await self._point(route, current.backend)
            return
        fresh = self._take(route)
        if fresh is None:
            log.warning("haproxy_slots_exhausted", deployment=route.name)
            for key in _keys(route):
                if key in self._mapped:
                    await self._unmap(key)
        else:
            await self._fill(fresh, route)
            await self._point(route, fresh.backend)
            self._live[route.model_id] = fresh
        if current is not None:
            if fresh is None:
                del self._live[route.model_id]
            await self._retire(current)

    def _take(self, route: Route) -> Slot | None:
        if not self._free:
            return None
        slot = self._slots[self._free.pop()]
        slot.model_id, slot.generation = route.model_id, route.generation
        return slot

    async def _fill(self, slot: Slot, route: Route) -> None:
        """Servers for every replica of `route` in `slot`; drain those it no longer has."""
        wanted = dict(route.replicas)
        for replica_id, endpoint in wanted.items():
            name = f"{slot.backend}/{replica_id}"
            if replica_id in slot.retiring:
                await self._api.expect(f"set server {name} state ready")
                slot.retiring.discard(replica_id)
            elif replica_id not in slot.servers:
                await self._api.expect(f"add server {name} {address(endpoint)}",
                                       "New server registered")
                await self._api.expect(f"enable server {name}")
                slot.servers[replica_id] = endpoint
        for replica_id in [r for r in slot.servers if r not in wanted and r not in slot.retiring]:
            await self._drain(slot, replica_id)

    async def _point(self, route: Route, backend: str) -> None:
        for key in _keys(route):
            if self._mapped.get(key) == backend:
                continue
            verb = "set" if key in self._mapped else "add"
            await self._api.expect(f"{verb} map {self._map} {key} {backend}")
            self._mapped[key] = backend

    async def _unmap(self, key: str) -> None:
        await self._api.expect(f"del map {self._map} {key}")
        del self._mapped[key]

    async def _drain(self, slot: Slot, replica_id: UUID) -> None:
        await self._api.expect(f"set server {slot.backend}/{replica_id} state drain")
        slot.retiring.add(replica_id)

    async def _retire(self, slot: Slot) -> None:
        """A slot no generation serves from: drain all its servers."""
        slot.model_id, slot.generation = None, None
        for replica_id in [r for r in slot.servers if r not in slot.retiring]:
            await self._drain(slot, replica_id)
        self._release_if_empty(slot)

    async def reap(self, stats: list[ServerStat]) -> None:
        """Delete drained servers with nothing in flight; free the slots left empty."""
        idle = {(s.backend, s.server) for s in stats if s.current == 0 and s.queued == 0}
        for slot in self._slots.values():
            for replica_id in [r for r in slot.retiring if (slot.backend, str(r)) in idle]:
                name = f"{slot.backend}/{replica_id}"
                try:
                    await self._api.expect(f"set server {name} state maint")
                    await self._api.expect(f"del server {name}", "Server deleted")
                except RuntimeApiError as exc:  # idle connections not yet closed: next time
                    log.info("haproxy_server_not_deleted_yet", server=name, answer=str(exc))
                    continue
                slot.retiring.discard(replica_id)
                del slot.servers[replica_id]
            self._release_if_empty(slot)

    def _release_if_empty(self, slot: Slot) -> None:
        if slot.model_id is None and not slot.servers and slot.backend not in self._free:
            self._free.append(slot.backend)
