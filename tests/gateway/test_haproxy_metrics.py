"""Review M1: with the HAProxy engine, the gateway's /metrics (which names private
deployments) leaked to any caller off the host that sent an `Authorization` header, or
asked for `/%6detrics`: HAProxy matched only the raw path `/metrics` without a header, and
the Python gateway behind it trusted loopback, where HAProxy's requests come from. Now
HAProxy matches the decoded path and names the client in X-Greenroom-Client, and the Python
gateway judges that address. Off the host = through this host's non-loopback address, with
the gateway bound to 0.0.0.0, as the review reproduced it."""

import ipaddress
import socket
from collections.abc import Callable

import aiohttp
import pytest
from yarl import URL

from gateway.haproxy.config import CLIENT_HEADER
from gateway.haproxy.controller import find_haproxy
from schemas.settings import Settings
from tests.conftest import Proc, start_gateway


def _outside_address() -> str | None:
    """An IPv4 address of this host that is not loopback (the review's `hostname -I`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect(("192.0.2.1", 9))  # no packet is sent; picks the outgoing address
            address = str(sock.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


OUTSIDE = _outside_address()
pytestmark = pytest.mark.skipif(OUTSIDE is None, reason="this host has no non-loopback address")
NO_HAPROXY = pytest.mark.skipif(find_haproxy(Settings()) is None,
                                reason="haproxy is not installed (apt-get install haproxy)")


async def _status(http: aiohttp.ClientSession, url: str, **headers: str) -> int:
    async with http.get(URL(url, encoded=True), headers=headers) as resp:
        return resp.status


@NO_HAPROXY
async def test_haproxy_refuses_metrics_off_the_host_with_any_header_or_an_encoded_path(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, clean: None) -> None:
    """Before: 200 for the junk Authorization and for /%6detrics. Now: 403 for both."""
    base = await start_gateway(spawn, http, gateway_engine="haproxy", haproxy_slots=2,
                               gateway_host="0.0.0.0")
    outside = base.replace("127.0.0.1", str(OUTSIDE))
    assert await _status(http, f"{base}/metrics") == 200  # a scraper on the host still may
    assert await _status(http, f"{outside}/metrics") == 403
    assert await _status(http, f"{outside}/metrics", Authorization="x") == 403
    assert await _status(http, f"{outside}/metrics", Authorization="Bearer junk") == 403
    assert await _status(http, f"{outside}/%6detrics") == 403
    assert await _status(http, f"{outside}//metrics/") in (403, 404)
    spoofed = {CLIENT_HEADER: "127.0.0.1", "Authorization": "x"}
    assert await _status(http, f"{outside}/metrics", **spoofed) == 403
    assert await _status(http, f"{outside}/healthz") == 200


async def test_the_python_gateway_ignores_a_client_header_from_off_the_host(
        spawn: Callable[..., Proc], http: aiohttp.ClientSession, clean: None) -> None:
    base = await start_gateway(spawn, http, gateway_host="0.0.0.0")
    outside = base.replace("127.0.0.1", str(OUTSIDE))
    assert await _status(http, f"{base}/metrics") == 200
    assert await _status(http, f"{outside}/metrics", **{CLIENT_HEADER: "127.0.0.1"}) == 403
    assert await _status(http, f"{outside}/%6detrics") == 403
