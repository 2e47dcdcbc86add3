"""What a gateway reports to Redis about its traffic: the drain and the autoscaler read it.

Each gateway process writes one `GatewayReport` under `GATEWAY_KEY_PREFIX + gateway_id`
about every second (at once when a draining replica goes idle), with a TTL: a gateway
that stops reporting disappears. Several gateways (and several processes of one) each
write their own; a reader sums or checks them all.
"""

import structlog
from pydantic import BaseModel, Field, ValidationError
from redis.asyncio import Redis

from schemas.queue import GATEWAY_KEY_PREFIX

log = structlog.get_logger(__name__)


class GatewayReport(BaseModel):
    """One gateway process's view of the routes it serves and the traffic it carries."""

    gateway_id: str
    # Unix time the report was written; readers ignore reports much older than the TTL.
    at: float
    # model id → the generation this gateway routes to (absent: it routes nowhere).
    generations: dict[str, int] = Field(default_factory=dict)
    # replica id → requests in flight to it now (absent: none).
    inflight: dict[str, int] = Field(default_factory=dict)
    # replica id → requests this gateway has finished on it since it started (a counter:
    # the autoscaler takes differences between two reports for a request rate).
    requests: dict[str, int] = Field(default_factory=dict)
    # model id → requests held waiting for a first ready replica (a deployment scaled to
    # zero): the autoscaler reads it as demand and starts one.
    held: dict[str, int] = Field(default_factory=dict)


async def read_reports(redis: Redis) -> list[GatewayReport]:
    """Every live gateway process's latest report (one that cannot be read is skipped)."""
    keys = [k async for k in redis.scan_iter(match=GATEWAY_KEY_PREFIX + "*", count=100)]
    if not keys:
        return []
    reports = []
    for value in await redis.mget(keys):
        if not value:
            continue  # expired between SCAN and MGET
        try:
            reports.append(GatewayReport.model_validate_json(value))
        except ValidationError:
            log.warning("gateway_report_unreadable")
    return reports
