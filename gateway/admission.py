"""Lanes, deadlines and per-key limits at the gateway (issue 29).

Lane. A request runs in its API key's lane (`interactive` unless the key was created with
`lane: batch`); a caller may lower a request to `batch` with `X-Greenroom-Priority: batch`
but a batch-lane key cannot raise itself to interactive (schemas/lanes.py's
`effective_lane`). The gateway passes the lane on to the replica in the same header.

Deadline. `X-Request-Timeout` (seconds) starts when the gateway reads the request; it
bounds the wait for a replica of a deployment at zero (gateway/hold.py), and the rest of it
is passed on to the replica, which drops the request's queued work when it passes (504).

Limits. An API key may carry `requests_per_s` and `tokens_per_s` (set at creation; unset,
the gateway's GREENROOM_GATEWAY_KEY_REQUESTS_PER_S / _TOKENS_PER_S, unlimited when unset
too), enforced per key and per model by token buckets holding one second of each. A
session token (a user's login JWT) gets those default limits per user and per model (all
of a user's sessions share the buckets) and the interactive lane, which its header may
lower. No token (a public deployment's anonymous caller) and the platform's own tokens
(a job's, an update's) get no limits, and the interactive lane unless the header lowers
it; HAProxy, which serves public deployments' anonymous requests straight from its slots,
passes the caller's `X-Greenroom-Priority` and `X-Request-Timeout` on unchanged, so such a
request runs in the same lane either way. A
request needs a whole request in its bucket and a token bucket not in debt; the tokens it
cost are debited once the replica says (its `X-Greenroom-Tokens` answer header), so a big
request may take the bucket into debt and the next waits until it is paid back. Past
either: 429 with `Retry-After` and OpenAI's `x-ratelimit-*` headers, which every answer to
a limited key carries.

Why local buckets and no library: the buckets live in each gateway process, so a check
costs no round trip on the hot path (the default engine's share of a replica's throughput
is the figure this gateway is judged by; a Redis call per request would add one). With N
gateway processes behind a balancer a key can get up to N times its limit; the limit is
documented as per gateway process. `limits` (the well-kept library) counts requests in
windows and cannot take a debit after the fact, which the token limit needs.
"""

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from aiohttp import web

from db import api_keys
from edge.auth.authentication import API_KEY_PREFIX, authenticate, hash_api_key
from edge.keys import PG
from schemas.errors import Invalid, RateLimited
from schemas.lanes import (
    LANES,
    MAX_TIMEOUT_S,
    PRIORITY_HEADER,
    TIMEOUT_HEADER,
    TOKENS_HEADER,
    Lane,
    effective_lane,
)

R = TypeVar("R", bound=web.StreamResponse)
MAX_KEYS = 10_000
MAX_BUCKETS = 100_000


@dataclass(slots=True)
class Bucket:
    """A token bucket of `rate` a second holding at most one second's worth (at least one,
    so a limit under one a second still lets a request through now and then)."""

    rate: float
    level: float
    at: float

    @property
    def capacity(self) -> float:
        return max(self.rate, 1.0)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_s(self, need: float) -> float:
        """Seconds until `need` is in the bucket (0: now)."""
        return max(0.0, (need - self.level) / self.rate)


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_s: float | None
    tokens_per_s: float | None


# Whose buckets a request draws on: ("key", an API key's id) or ("user", a user's id, for
# a session token).
Subject = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Caller:
    """What admission reads of a request's token: its buckets' owner, lane and limits
    (None: the gateway's defaults)."""

    subject: Subject
    lane: Lane
    requests_per_s: float | None = None
    tokens_per_s: float | None = None


@dataclass(slots=True)
class Ticket:
    """One admitted request: its lane, its deadline and its buckets (None: unlimited)."""

    lane: Lane
    deadline: float | None
    requests: Bucket | None = None
    tokens: Bucket | None = None

    def settle(self, response: R) -> R:
        """Debit the tokens the replica reports and add the x-ratelimit-* headers."""
        if self.requests is None and self.tokens is None:
            return response  # unlimited: nothing to debit or show
        if self.tokens is not None:
            spent = response.headers.get(TOKENS_HEADER, "0")
            self.tokens.level -= float(spent) if spent.isdigit() else 0.0
        response.headers.update(limit_headers(self.requests, self.tokens))
        return response


def limit_headers(requests: Bucket | None, tokens: Bucket | None) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers: the limit (a second's worth), what remains of it,
    and the seconds until the bucket is full again."""
    headers: dict[str, str] = {}
    for name, bucket in (("requests", requests), ("tokens", tokens)):
        if bucket is None:
            continue
        headers[f"x-ratelimit-limit-{name}"] = f"{bucket.rate:g}"
        headers[f"x-ratelimit-remaining-{name}"] = str(max(0, math.floor(bucket.level)))
        headers[f"x-ratelimit-reset-{name}"] = f"{bucket.wait_s(bucket.capacity):.3f}s"
    return headers


def timeout_of(headers: Mapping[str, str]) -> float | None:
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= MAX_TIMEOUT_S):
        raise Invalid(f"{TIMEOUT_HEADER} must be a number of seconds above 0 and at most "
                      f"{MAX_TIMEOUT_S:g}", {"header": TIMEOUT_HEADER})
    return seconds


def asked_lane(headers: Mapping[str, str]) -> str | None:
    value = headers.get(PRIORITY_HEADER)
    if value is None:
        return None
    lane = value.strip().lower()
    if lane not in LANES:
        raise Invalid(f"{PRIORITY_HEADER} must be `interactive` or `batch`",
                      {"header": PRIORITY_HEADER, "allowed": list(LANES)})
    return lane


def _deadline(headers: Mapping[str, str]) -> float | None:
    """When the request's X-Request-Timeout runs out (time.monotonic()); 422 if malformed."""
    timeout_s = timeout_of(headers)
    return None if timeout_s is None else time.monotonic() + timeout_s


class Admission:
    def __init__(self, defaults: Limits, ttl_s: float = 1.0) -> None:
        self.defaults, self.ttl_s = defaults, ttl_s
        self._callers: dict[str, tuple[float, Caller | None]] = {}
        self._buckets: dict[tuple[Subject, UUID, str], Bucket] = {}

    def clear(self) -> None:
        """An auth change (a key revoked): read keys again."""
        self._callers = {}

    async def _caller(self, request: web.Request) -> Caller | None:
        """The request's caller, read at most once per `ttl_s` per token; None for no
        token and for the platform's own tokens (no limits)."""
        header = request.headers.get("Authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not token:
            return None  # anonymous: interactive unless the header lowers it, no limits
        now = time.monotonic()
        hit = self._callers.get(token)
        if hit is None or hit[0] <= now:
            hit = (now + self.ttl_s, await _read_caller(request, token))
            if len(self._callers) >= MAX_KEYS:
                self._callers = {}
            self._callers[token] = hit
        return hit[1]

    def anonymous(self, headers: Mapping[str, str]) -> Ticket:
        """The ticket of a request without limits: the lane its header asks (interactive
        unless lowered) and its deadline; 422 for a bad header."""
        return Ticket(effective_lane("interactive", asked_lane(headers)), _deadline(headers))

    async def admit(self, request: web.Request, model_id: UUID) -> Ticket:
        """The request's lane, deadline and buckets; 422 for a bad header, 429 past a limit.
        Call after the access check (the key is known good)."""
        asked, deadline = asked_lane(request.headers), _deadline(request.headers)
        caller = await self._caller(request)
        ticket = Ticket(effective_lane(caller.lane if caller else "interactive", asked),
                        deadline)
        if caller is None:
            return ticket
        now = time.monotonic()
        ticket.requests = self._bucket(caller.subject, model_id, "requests", now,
                                       caller.requests_per_s or self.defaults.requests_per_s)
        ticket.tokens = self._bucket(caller.subject, model_id, "tokens", now,
                                     caller.tokens_per_s or self.defaults.tokens_per_s)
        waits = [b.wait_s(need) for b, need in ((ticket.requests, 1.0), (ticket.tokens, 1e-9))
                 if b is not None]
        wait = max(waits, default=0.0)
        if wait > 0:
            whose = "API key's" if caller.subject[0] == "key" else "user's"
            raise RateLimited(f"this {whose} rate limit for this model is used up; retry "
                              "after Retry-After seconds", {"retry_after_s": math.ceil(wait)},
                              math.ceil(wait), limit_headers(ticket.requests, ticket.tokens))
        if ticket.requests is not None:
            ticket.requests.level -= 1
        return ticket

    def _bucket(self, subject: Subject, model_id: UUID, kind: str, now: float,
                rate: float | None) -> Bucket | None:
        if rate is None:
            return None
        bucket = self._buckets.get((subject, model_id, kind))
        if bucket is None or bucket.rate != rate:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets = {}
            bucket = self._buckets[subject, model_id, kind] = Bucket(rate, max(rate, 1.0), now)
        bucket.refill(now)
        return bucket



async def _read_caller(request: web.Request, token: str) -> Caller | None:
    """An API key's lane and limits from its row; a session token's user (the principal
    the access check resolved, cached by edge/auth/principal_cache.py)."""
    if token.startswith(API_KEY_PREFIX):
        traits = await api_keys.traits_for_key(request.app[PG], hash_api_key(token))
        if traits is None:
            return None
        return Caller(("key", traits.key_id),
                      "batch" if traits.lane == "batch" else "interactive",
                      traits.requests_per_s, traits.tokens_per_s)
    principal = await authenticate(request)
    if principal.kind == "user" and principal.user_id is not None:
        return Caller(("user", principal.user_id), "interactive")
    return None  # a job's or an update's token: the platform's own calls
