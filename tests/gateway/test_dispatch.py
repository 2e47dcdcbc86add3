"""gateway/dispatch.py: the data plane's /serve routes found in one look-up resolve to exactly
what aiohttp's own router resolves them to; everything else falls through to it."""

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_urldispatcher import MatchInfoError

from edge.routes import ROUTE_TABLE
from gateway.app import create_gateway_app
from gateway.dispatch import ServeIndex
from schemas.settings import Settings


async def _resolve(app: web.Application, method: str, path: str) -> web.UrlMappingMatchInfo:
    return await app.router.resolve(make_mocked_request(method, path, app=app))


async def _ordinary(app: web.Application, method: str, path: str) -> web.UrlMappingMatchInfo:
    """What aiohttp's router resolves `path` to without the index."""
    request = make_mocked_request(method, path, app=app)
    allowed: set[str] = set()
    for resource in app.router.resources():
        if isinstance(resource, ServeIndex):
            continue
        match, methods = await resource.resolve(request)
        if match is not None:
            return match
        allowed |= methods
    raise AssertionError(f"{method} {path}: no route (allowed {allowed})")


async def test_every_serve_route_resolves_as_aiohttps_router_does(settings: Settings) -> None:
    app = create_gateway_app(settings)
    serve = [s for s in app[ROUTE_TABLE] if s.path.startswith("/serve/{name}")]
    [index] = [r for r in app.router.resources() if isinstance(r, ServeIndex)]
    assert len(serve) >= 10  # POST /, /embed, ..., GET /health, ..., feedback
    for spec in serve:
        path = spec.path.replace("{name}", "my-model.v2")
        found = await _resolve(app, spec.method, path)
        expected = await _ordinary(app, spec.method, path)
        assert found.route is expected.route, path
        assert found.route.method == spec.method
        assert found.route.resource is not None
        assert found.route.resource.canonical == spec.path
        assert dict(found) == dict(expected) == {"name": "my-model.v2"}
        # ...and the index is what found it (all but feedback, which is guarded).
        hit, _ = await index.resolve(make_mocked_request(spec.method, path, app=app))
        assert (hit is not None) == (not path.endswith("/feedback")), path


async def test_the_index_answers_only_its_hits(settings: Settings) -> None:
    app = create_gateway_app(settings)
    # Not a data-plane route: feedback, with aiohttp's own route.
    feedback = await _resolve(app, "POST", "/serve/m/feedback")
    assert feedback.route.resource is not None
    assert feedback.route.resource.canonical == "/serve/{name}/feedback"
    # A wrong method: 405 naming the method the route takes, as before.
    wrong = await _resolve(app, "GET", "/serve/m/embed")
    assert isinstance(wrong, MatchInfoError)
    assert wrong.http_exception.status == 405
    assert wrong.http_exception.headers["Allow"] == "POST"
    # A quoted slash in the name is aiohttp's to unquote.
    quoted = await _resolve(app, "POST", "/serve/a%2Fb/embed")
    assert dict(quoted) == {"name": "a/b"}
    # An empty name or an unknown route: 404.
    for path in ("/serve//embed", "/serve/m/nothing"):
        missing = await _resolve(app, "POST", path)
        assert isinstance(missing, MatchInfoError)
        assert missing.http_exception.status == 404, path
    # The index holds no route of its own: the route table's count is unchanged.
    assert len(app.router.routes()) == len(app[ROUTE_TABLE])
