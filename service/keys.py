"""Typed application keys for what the API process holds for its lifetime."""

import asyncpg
from aiohttp import web
from arq.connections import ArqRedis

from gateway.routing import Gateway
from schemas.settings import Settings
from service.auth.login_throttle import LoginThrottle
from service.domain.passwords import Passwords
from service.metrics import ApiMetrics

SETTINGS = web.AppKey("settings", Settings)
PG = web.AppKey("pg", asyncpg.Pool)
REDIS = web.AppKey("redis", ArqRedis)
GATEWAY = web.AppKey("gateway", Gateway)
LOGIN_THROTTLE = web.AppKey("login_throttle", LoginThrottle)
PASSWORDS = web.AppKey("passwords", Passwords)
METRICS = web.AppKey("metrics", ApiMetrics)
