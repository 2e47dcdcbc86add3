"""Typed application keys for what a gateway process alone holds (those the API holds too
are in edge/keys.py)."""

from aiohttp import web
from redis.asyncio import Redis

from gateway.access import AccessCache
from gateway.admission import Admission
from gateway.routing import Gateway

GATEWAY = web.AppKey("gateway", Gateway)
ACCESS = web.AppKey("access", AccessCache)
GATEWAY_REDIS = web.AppKey("gateway_redis", Redis)
ADMISSION = web.AppKey("admission", Admission)
