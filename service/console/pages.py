"""GET /ui: the console's page and its static files, shipped as package data.

Strict headers: scripts and styles from this origin only, no framing, no referrer.
"""

from pathlib import Path

from aiohttp import web

from edge.auth.rules import PUBLIC
from edge.route_spec import RouteSpec
from edge.static_files import StaticFiles

STATIC = Path(__file__).parent / "static"
HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}
FILES = StaticFiles(STATIC, HEADERS)


async def index(request: web.Request) -> web.Response:
    """The console's page."""
    return FILES.response("index.html")


async def static(request: web.Request) -> web.Response:
    """A script, style sheet or image of the console."""
    return FILES.response(request.match_info["name"])


async def slash(request: web.Request) -> web.Response:
    """/ui → /ui/, so the page's relative links resolve."""
    raise web.HTTPFound("/ui/")


ROUTES = [
    RouteSpec("GET", "/ui", slash, PUBLIC, summary="The console (redirects to /ui/)"),
    RouteSpec("GET", "/ui/", index, PUBLIC, summary="The console"),
    RouteSpec("GET", "/ui/static/{name:.+}", static, PUBLIC,
              summary="The console's static files"),
]
