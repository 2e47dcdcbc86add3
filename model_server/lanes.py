"""Priority lanes and deadlines a request carries in its headers (issue 29).

A replica has two queues: `interactive` (someone waits: a query) and `batch` (patient:
ingestion). The batcher fills each batch from the interactive lane first; the batch lane
is never starved (see Batcher). The lane is read from `X-Greenroom-Priority`, which the
gateway sets from the caller's API key and header, and which a worker's bulk job sends
straight to a replica; absent, a request is interactive.

`X-Request-Timeout` is the seconds the caller will wait, counted from when the replica
reads the request: past it, the request's queued work is dropped before it is computed
(counted in `model_server_expired_total`) and the answer is 504.

The header names are the gateway's (schemas/lanes.py), restated here because the model
server imports no other package of Greenroom; tests/model_server/test_wire_contract.py
keeps the two equal.
"""

import math
from collections.abc import Mapping
from typing import Literal

from model_server.errors import InvalidRequest

PRIORITY_HEADER = "X-Greenroom-Priority"
TIMEOUT_HEADER = "X-Request-Timeout"
# On an embedding answer: the tokens the model computed for it (the gateway's tokens/s).
TOKENS_HEADER = "X-Greenroom-Tokens"
Lane = Literal["interactive", "batch"]
LANES: tuple[Lane, ...] = ("interactive", "batch")
# A deadline further away than a day is no deadline worth keeping a timer for.
MAX_TIMEOUT_S = 86_400.0


def lane_of(headers: Mapping[str, str]) -> Lane:
    """The request's lane: interactive unless the header names `batch`; 422 for a value
    that is neither."""
    value = headers.get(PRIORITY_HEADER)
    if value is None:
        return "interactive"
    lane = value.strip().lower()
    if lane == "interactive":
        return "interactive"
    if lane == "batch":
        return "batch"
    raise InvalidRequest(
        f"{PRIORITY_HEADER} must be `interactive` or `batch`, not {value[:40]!r}",
        {"header": PRIORITY_HEADER, "allowed": list(LANES)})


def timeout_of(headers: Mapping[str, str]) -> float | None:
    """The request's timeout in seconds, None without the header; 422 unless it is a
    positive number of seconds (at most a day)."""
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = math.nan
    if not (0 < seconds <= MAX_TIMEOUT_S):
        raise InvalidRequest(
            f"{TIMEOUT_HEADER} must be a number of seconds above 0 and at most "
            f"{MAX_TIMEOUT_S:g}, not {value[:40]!r}",
            {"header": TIMEOUT_HEADER, "max": MAX_TIMEOUT_S})
    return seconds
