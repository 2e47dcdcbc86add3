"""Who may read a gateway's /metrics: its series name every deployment, private ones too.

With `GREENROOM_METRICS_TOKEN` set, a scraper sends it as a bearer token (compared in
constant time); unset, only callers on this host's loopback may read it.
"""

import hmac
import ipaddress

from aiohttp import web

from schemas.errors import Forbidden, Unauthorized
from schemas.settings import Settings


def _loopback(remote: str | None) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 on a dual-stack socket
    return (mapped or address).is_loopback


def check(request: web.Request, settings: Settings) -> None:
    """401 without the configured token; 403 from off the host when none is configured."""
    token = settings.metrics_token
    if token is None:
        if not _loopback(request.remote):
            raise Forbidden("metrics are served to this host only; set "
                            "GREENROOM_METRICS_TOKEN to scrape from elsewhere")
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.get_secret_value().encode()):
        raise Unauthorized("metrics need the bearer token GREENROOM_METRICS_TOKEN names",
                           challenge="Bearer")
