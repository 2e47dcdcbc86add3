"""Who may read a gateway's /metrics: its series name every deployment, private ones too.

With `GREENROOM_METRICS_TOKEN` set, a scraper sends it as a bearer token (compared in
constant time); unset, only callers on this host's loopback may read it. Behind HAProxy
(`--engine haproxy`) every request comes from loopback, so the caller is the address HAProxy
names in `X-Greenroom-Client` (it replaces any value a client sent); that header counts only
from a loopback peer, and can only make a caller less trusted (review M1).
"""

import hmac
import ipaddress

from aiohttp import web

from gateway.haproxy.config import CLIENT_HEADER
from schemas.errors import Forbidden, Unauthorized
from schemas.settings import Settings


def _loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback


def _caller(request: web.Request) -> str | None:
    """The caller's address: the peer's, or behind HAProxy on loopback the client's."""
    remote = request.remote
    if _loopback(remote) and CLIENT_HEADER in request.headers:
        return request.headers[CLIENT_HEADER]
    return remote


def check(request: web.Request, settings: Settings) -> None:
    """401 without the configured token; 403 from off the host when none is configured."""
    token = settings.metrics_token
    if token is None:
        if not _loopback(_caller(request)):
            raise Forbidden("metrics are served to this host only; set "
                            "GREENROOM_METRICS_TOKEN to scrape from elsewhere")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()):
        raise Unauthorized("metrics need the bearer token GREENROOM_METRICS_TOKEN names",
                           challenge="Bearer")
