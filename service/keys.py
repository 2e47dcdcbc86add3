"""Typed application keys for what the API process alone holds for its lifetime (those the
gateway holds too are in edge/keys.py)."""

from aiohttp import web
from arq.connections import ArqRedis

from service.domain.login_throttle import LoginThrottle
from service.domain.passwords import Passwords
from service.metrics import ApiMetrics

REDIS = web.AppKey("redis", ArqRedis)
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)
PASSWORDS = web.AppKey("passwords", Passwords)
METRICS = web.AppKey("metrics", ApiMetrics)
