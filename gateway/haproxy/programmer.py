"""Program HAProxy from the routing table: slots, servers, the `direct` map, the drain.

A public deployment with ready replicas is served by HAProxy directly: its serving
generation owns one slot backend, whose pre-declared servers (`s<k>_<j>`) take its
replicas' addresses (`set server … addr`, `state ready`); the `replicas` map names each
server's replica for the X-Greenroom-Replica header and the reports. A new generation
gets a fresh slot, filled before the deployment's names move to it with one `set map`
each, so every request after the switch goes to the new generation. The old slot's
servers are drained (`state drain`) and, once `scur` shows nothing in flight on them,
put in maintenance (which also closes their idle connections) and become free again.

Pre-declared servers rather than `add server`: HAProxy 2.6 keeps no idle connections
to servers added at run time (measured: one new connection to the replica per request,
2-3x the CPU), while declared ones reuse kept-alive connections as nginx does.

A deployment in a canary (a candidate generation with a weight in its route, issue 27)
is split by HAProxy's server weights: the candidate gets a slot of its own, filled as a
new generation's is; the serving slot's `splitK` backend weighs its two servers
`100 - weight` (`cK_1`, to the serving slot) and `weight` (`cK_2`, which the `via` map
points at the candidate's slot), and the deployment's names point at `splitK`
(gateway/haproxy/config.py). Each step's new weight is two `set weight` commands, sent in
one line. When the route names no candidate again, the names go back to the serving slot and the
candidate's slot drains; after a green switch the candidate's slot is the serving one.
What each generation carried is counted per slot (gateway/haproxy/traffic.py).

A deployment that is not public, has no ready replica (scaled to zero: the Python
gateway holds the request), has more replicas (or a candidate with more) than a slot has
servers, is in a shadow rollout (HAProxy 2.6 cannot mirror a request but through an SPOE
agent outside its core: the Python gateways behind it mirror and compare,
gateway/traffic.py), or finds the pool empty is not in the map, so the Python gateway
serves it. Map entries that must go are removed before anything else changes: a model
made private stops being served directly on the first command.
"""

import asyncio
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from uuid import UUID

import structlog

from db.deployments import Route
from db.traffic import Candidate
from gateway.haproxy.config import Layout, server_names, slot_name, split_name, split_servers
from gateway.haproxy.runtime_api import RuntimeApi, RuntimeApiError, ServerStat
from schemas import replica_auth

log = structlog.get_logger(__name__)
_ADDR_OK = ("IP changed", "no need to change", "port changed")


@dataclass
class Slot:
    """One backend of the pool and what it holds now."""

    backend: str
    index: int
    free: list[str]  # its servers not given to a replica
    model_id: UUID | None = None
    generation: int | None = None
    servers: dict[UUID, str] = field(default_factory=dict)  # replica id → server name
    retiring: set[UUID] = field(default_factory=set)  # drained; freed once idle


@dataclass(frozen=True, slots=True)
class Carried:
    """What HAProxy carries for one replica: in flight now, and finished since assigned."""

    replica_id: UUID
    current: int
    total: int


def _weighed(route: Route) -> Candidate | None:
    """The candidate HAProxy splits `route` with: one with ready replicas and a weight (a
    shadow's is the Python gateways'); None when the route has none."""
    candidate = route.candidate
    if candidate is None or not candidate.replicas or candidate.split.shadow_percent > 0:
        return None
    return candidate


def _as_route(route: Route, candidate: Candidate) -> Route:
    """The candidate generation as a route of its own (what fills and labels its slot)."""
    return Route(route.model_id, route.name, route.identifier, candidate.split.generation,
                 route.access_level, candidate.replicas, revision=candidate.revision)


def _keys(route: Route) -> list[str]:
    """The names a request may use in /serve/{name}: the deployment's name and model id."""
    return [route.name, str(route.model_id)]


def _owners(routes: list[Route]) -> dict[str, UUID]:
    """Each map key's model: a model id always names its own model, over a deployment that
    took that id as its name (review M10: the last route written won, so a decoy named
    after another model's id took its traffic); as the Python gateway's table decides."""
    owners = {route.name: route.model_id for route in routes}
    return owners | {str(route.model_id): route.model_id for route in routes}


async def _ip_port(endpoint: str) -> tuple[str, int]:
    """`http://host:port` (a replica's endpoint) as an IP address and port."""
    parts = urlsplit(endpoint)
    port = parts.port or 80
    infos = await asyncio.get_running_loop().getaddrinfo(parts.hostname, port,
                                                         type=socket.SOCK_STREAM)
    return str(infos[0][4][0]), port


class Programmer:
    def __init__(self, api: RuntimeApi, layout: Layout, secret_key: str | None = None) -> None:
        self._api, self._layout = api, layout
        self._secret_key = secret_key
        self._keyed: set[str] = set()  # slot backends with an entry in the secrets map
        self._labelled: set[tuple[str, str]] = set()  # (map, slot) entries of the label maps
        self._slots = {slot_name(i): Slot(slot_name(i), i,
                                          list(reversed(server_names(i, layout))))
                       for i in range(layout.slots)}
        # Slot and split backends → the slot they belong to (`splitK` is slotK's).
        self._backends = self._slots | {split_name(s.index): s for s in self._slots.values()}
        self._free = [slot_name(i) for i in reversed(range(layout.slots))]
        self._live: dict[UUID, Slot] = {}  # model → the slot its serving generation owns
        self._candidates: dict[UUID, Slot] = {}  # model → its canary candidate's slot
        self._weights: dict[str, tuple[str, int]] = {}  # split → (candidate slot, weight) set
        self._mapped: dict[str, str] = {}  # direct map key → slot (or split) backend
        self._named: set[str] = set()  # servers with an entry in the replicas map
        self._base: dict[str, int] = {}  # server → its stot when given to its replica
        self._stot: dict[str, int] = {}  # server → stot at the last read
        self.generations: dict[str, int] = {}  # model id → generation routed to (any path)
        self._owners: dict[str, UUID] = {}  # map key → the model it names (_owners)

    @property
    def in_use(self) -> list[str]:
        """The slot backends serving a generation or draining one: what `show stat` reads."""
        return [s.backend for s in self._slots.values() if s.model_id is not None or s.servers]

    @property
    def draining(self) -> bool:
        return any(slot.retiring for slot in self._slots.values())

    async def apply(self, routes: list[Route]) -> None:
        """Make HAProxy route as `routes` say (see the module docstring for the order)."""
        per_slot = self._layout.servers_per_slot
        direct = {r.model_id: r for r in routes
                  if r.access_level == "public" and 0 < len(r.replicas) <= per_slot
                  and (r.candidate is None or (_weighed(r) is not None
                                               and len(r.candidate.replicas) <= per_slot))}
        owners = _owners(routes)
        keys = {key: model_id for key, model_id in owners.items() if model_id in direct}
        for key in [k for k, backend in self._mapped.items()
                    if keys.get(k) != self._backends[backend].model_id]:
            await self._unmap(key)
        self._owners = owners
        for route in direct.values():
            await self._serve(route)
        for model_id in [m for m in self._live if m not in direct]:
            await self._retire(self._live.pop(model_id))
        for model_id in [m for m in self._candidates if m not in direct]:
            await self._retire(self._candidates.pop(model_id))
        self.generations = {str(r.model_id): r.generation for r in routes}

    async def _serve(self, route: Route) -> None:
        current = self._live.get(route.model_id)
        if current is not None and current.generation == route.generation:
            await self._fill(current, route)
            await self._point(route, await self._split(route, current))
            await self._settle(route)
            return
        promoted = self._candidates.get(route.model_id)
        if promoted is not None and promoted.generation == route.generation:
            fresh: Slot | None = self._candidates.pop(route.model_id)  # after a green switch
        else:
            fresh = self._take(route)
            if fresh is not None:
                await self._key(fresh, route)
                await self._label(fresh, route)
        if fresh is None:
            log.warning("haproxy_slots_exhausted", deployment=route.name)
            await self._point(route, None)
        else:
            await self._fill(fresh, route)
            self._live[route.model_id] = fresh
            await self._point(route, await self._split(route, fresh))
        if current is not None:
            if fresh is None:
                del self._live[route.model_id]
            await self._retire(current)
        await self._settle(route)

    async def _split(self, route: Route, serving: Slot) -> str | None:
        """The backend the route's names point at: its serving slot, or during a canary
        the serving slot's split backend weighed to the candidate's slot (None: no slot
        was left for the candidate; the Python gateways split)."""
        candidate = _weighed(route)
        if candidate is None:
            return serving.backend
        as_route = _as_route(route, candidate)
        slot = self._candidates.get(route.model_id)
        replaced = None
        if slot is None or slot.generation != as_route.generation:
            fresh = self._take(as_route)
            if fresh is None:
                log.warning("haproxy_slots_exhausted", deployment=route.name,
                            candidate=as_route.generation)
                return None
            await self._key(fresh, as_route)
            await self._label(fresh, as_route)
            replaced, slot = slot, fresh
            self._candidates[route.model_id] = slot
        await self._fill(slot, as_route)
        await self._weigh(serving, slot, candidate.split.weight)
        if replaced is not None:  # another candidate: the via map no longer names its slot
            await self._retire(replaced)
        return split_name(serving.index)

    async def _weigh(self, serving: Slot, candidate: Slot, weight: int) -> None:
        """`splitK`'s servers weighed `100 - weight` (to the serving slot) and `weight`
        (to the candidate's): their shares of its requests (`balance roundrobin`)."""
        split = split_name(serving.index)
        if self._weights.get(split) == (candidate.backend, weight):
            return
        first, second = split_servers(serving.index)
        if self._weights.get(split, ("", 0))[0] != candidate.backend:
            await self._api.expect(f"set map {self._layout.via_map} {second} "
                                   f"{candidate.backend}")
        # Both weights in one line of the runtime API (its commands run back to back): one
        # reader of the weights never finds them a whole round trip apart, half set (a test
        # read the pair as (0, 50) between two commands on a busy machine).
        await self._api.expect(f"set weight {split}/{first} {100 - weight}; "
                               f"set weight {split}/{second} {weight}")
        self._weights[split] = (candidate.backend, weight)

    async def _settle(self, route: Route) -> None:
        """Drain a candidate's slot the route no longer splits with (the names have moved
        away from it first): after a failed step, or a candidate replaced."""
        slot = self._candidates.get(route.model_id)
        candidate = _weighed(route)
        if slot is None or (candidate is not None
                            and candidate.split.generation == slot.generation):
            return
        del self._candidates[route.model_id]
        await self._retire(slot)

    def _take(self, route: Route) -> Slot | None:
        """A free slot with servers enough for `route`'s replicas, now its generation's."""
        ready = [b for b in self._free
                 if len(self._slots[b].free) >= len(route.replicas)]
        if not ready:
            return None
        self._free.remove(ready[-1])
        slot = self._slots[ready[-1]]
        slot.model_id, slot.generation = route.model_id, route.generation
        return slot

    async def _key(self, slot: Slot, route: Route) -> None:
        """The slot's requests carry its new generation's replica secret; the error leaves
        the command (which holds the secret) out."""
        if self._secret_key is None:
            return
        secret = replica_auth.generation_secret(self._secret_key, route.model_id,
                                                route.generation)
        verb = "set" if slot.backend in self._keyed else "add"
        try:
            await self._api.expect(f"{verb} map {self._layout.secrets_map} {slot.backend} {secret}")
        except RuntimeApiError:
            raise RuntimeApiError(f"HAProxy refused the replica secret of {slot.backend}") from None
        self._keyed.add(slot.backend)

    async def _label(self, slot: Slot, route: Route) -> None:
        """The slot's answers name its generation and pinned revision (issue 26)."""
        for labels, value in ((self._layout.generations_map, str(route.generation)),
                              (self._layout.revisions_map,
                               f"r{route.revision}" if route.revision is not None else None)):
            key = (str(labels), slot.backend)
            if value is None:
                if key in self._labelled:
                    await self._api.expect(f"del map {labels} {slot.backend}")
                    self._labelled.discard(key)
                continue
            verb = "set" if key in self._labelled else "add"
            await self._api.expect(f"{verb} map {labels} {slot.backend} {value}")
            self._labelled.add(key)

    async def _fill(self, slot: Slot, route: Route) -> None:
        """A server for every replica of `route` in `slot`; drain those it no longer has."""
        wanted = dict(route.replicas)
        for replica_id, endpoint in wanted.items():
            if replica_id in slot.retiring:
                await self._api.expect(f"set server {slot.backend}/{slot.servers[replica_id]} "
                                       "state ready")
                slot.retiring.discard(replica_id)
            elif replica_id not in slot.servers:
                if not slot.free:  # more replicas than servers: the rest wait for a drain
                    log.warning("haproxy_slot_full", backend=slot.backend)
                    continue
                await self._assign(slot, slot.free.pop(), replica_id, endpoint)
        for replica_id in [r for r in slot.servers if r not in wanted and r not in slot.retiring]:
            await self._drain(slot, replica_id)

    async def _assign(self, slot: Slot, server: str, replica_id: UUID, endpoint: str) -> None:
        ip, port = await _ip_port(endpoint)
        name = f"{slot.backend}/{server}"
        await self._api.expect(f"set server {name} addr {ip} port {port}", *_ADDR_OK)
        verb = "set" if server in self._named else "add"
        await self._api.expect(f"{verb} map {self._layout.replicas_map} {server} {replica_id}")
        self._named.add(server)
        self._base[server] = self._stot.get(server, 0)
        await self._api.expect(f"set server {name} state ready")
        slot.servers[replica_id] = server

    async def _point(self, route: Route, backend: str | None) -> None:
        """The route's names to `backend`; None: out of the map (the Python gateways)."""
        for key in _keys(route):
            if self._owners.get(key, route.model_id) != route.model_id:
                continue  # another model's id: not this deployment's to take
            if backend is None:
                if key in self._mapped:
                    await self._unmap(key)
                continue
            if self._mapped.get(key) == backend:
                continue
            verb = "set" if key in self._mapped else "add"
            await self._api.expect(f"{verb} map {self._layout.direct_map} {key} {backend}")
            self._mapped[key] = backend

    async def _unmap(self, key: str) -> None:
        await self._api.expect(f"del map {self._layout.direct_map} {key}")
        del self._mapped[key]

    async def _drain(self, slot: Slot, replica_id: UUID) -> None:
        await self._api.expect(f"set server {slot.backend}/{slot.servers[replica_id]} "
                               "state drain")
        slot.retiring.add(replica_id)

    async def _retire(self, slot: Slot) -> None:
        """A slot no generation serves from: drain all its servers."""
        slot.model_id, slot.generation = None, None
        self._weights.pop(split_name(slot.index), None)
        for replica_id in [r for r in slot.servers if r not in slot.retiring]:
            await self._drain(slot, replica_id)
        self._release_if_empty(slot)

    async def reap(self, stats: list[ServerStat]) -> None:
        """Free drained servers with nothing in flight; free the slots left empty."""
        self._stot.update((s.server, s.total) for s in stats)  # a free slot's stay as last read
        idle = {s.server for s in stats if s.current == 0 and s.queued == 0}
        for slot in self._slots.values():
            for replica_id in [r for r in slot.retiring if slot.servers[r] in idle]:
                server = slot.servers[replica_id]
                try:
                    await self._api.expect(f"set server {slot.backend}/{server} state maint")
                except RuntimeApiError as exc:
                    log.warning("haproxy_server_not_freed", server=server, error=str(exc))
                    continue
                slot.retiring.discard(replica_id)
                del slot.servers[replica_id]
                slot.free.append(server)
            self._release_if_empty(slot)

    def _release_if_empty(self, slot: Slot) -> None:
        if slot.model_id is None and not slot.servers and slot.backend not in self._free:
            self._free.append(slot.backend)

    def load_by_model(self, backends: dict[str, int]) -> dict[UUID, int]:
        """Requests in flight per model HAProxy serves directly (its serving generation's
        slot, and its canary candidate's), from `RuntimeApi.backends`."""
        load = {model_id: backends.get(slot.backend, 0) for model_id, slot in self._live.items()}
        for model_id, slot in self._candidates.items():
            load[model_id] = load.get(model_id, 0) + backends.get(slot.backend, 0)
        return load

    def owners(self) -> dict[str, tuple[UUID, int]]:
        """Slot backend → the (model, generation) it serves: whose traffic it counts."""
        return {slot.backend: (slot.model_id, slot.generation) for slot in self._slots.values()
                if slot.model_id is not None and slot.generation is not None}

    def carried(self, stats: list[ServerStat]) -> list[Carried]:
        """Per replica HAProxy serves (or drains): `scur`, and `stot` since it was assigned."""
        by_server = {s.server: s for s in stats}
        out = []
        for slot in self._slots.values():
            for replica_id, server in slot.servers.items():
                stat = by_server.get(server)
                if stat is not None:
                    out.append(Carried(replica_id, stat.current,
                                       stat.total - self._base.get(server, 0)))
        return out
