"""GET /api/v2/deployments/{model}/series (issue 31): a deployment's traffic, latency and
replicas over time, per generation, with its events as markers; READ permission."""

from aiohttp import web

from edge.auth.locators import path_param
from edge.auth.rules import READ
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.series import SeriesResponse
from service.api.bazaar_v2 import MODEL
from service.domain import series

PREFIX = "/api/v2/deployments"


async def get_series(request: web.Request) -> web.Response:
    """The last `window` (default 1h, at most 24h) of the deployment, in 10 s buckets."""
    model = call_of(request).model
    assert model is not None
    window_s = series.parse_window(request.query.get("window"))
    return json_response(await series.read(request.app[PG], model.id, window_s,
                                           request.app[SETTINGS].series_bucket_s))


ROUTES = [
    RouteSpec("GET", f"{PREFIX}/{MODEL}/series", get_series, READ, None, SeriesResponse,
              path_param("model_id"), query=(("window", False, {
                  "type": "string", "pattern": r"^\d{1,6}[smh]?$", "default": "1h"}),),
              summary="A deployment's traffic, latency, replicas and events over time"),
]
