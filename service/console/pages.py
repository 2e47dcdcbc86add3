"""GET /ui: the console's page and its static files, shipped as package data.

Files are read once at start-up into a fixed table, so a request path can name nothing
else. Strict headers: scripts and styles from this origin only, no framing, no referrer.
"""

import mimetypes
from pathlib import Path

from aiohttp import web

from service.auth import RouteSpec

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
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml"}


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for path in sorted(STATIC.rglob("*")):
        if path.is_file():
            kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
            files[path.relative_to(STATIC).as_posix()] = (path.read_bytes(),
                                                          kind or "application/octet-stream")
    return files


def _serve(files: dict[str, tuple[bytes, str]], name: str) -> web.Response:
    found = files.get(name)
    if found is None:
        raise web.HTTPNotFound()
    body, kind = found
    charset = "utf-8" if kind.startswith("text/") or kind.endswith("+xml") else None
    return web.Response(body=body, content_type=kind, charset=charset, headers=HEADERS)


FILES = _load()


async def index(request: web.Request) -> web.Response:
    """The console's page."""
    return _serve(FILES, "index.html")


async def static(request: web.Request) -> web.Response:
    """A script, style sheet or image of the console."""
    return _serve(FILES, request.match_info["name"])


async def slash(request: web.Request) -> web.Response:
    """/ui → /ui/, so the page's relative links resolve."""
    raise web.HTTPFound("/ui/")


ROUTES = [
    RouteSpec("GET", "/ui", slash, "public", summary="The console (redirects to /ui/)"),
    RouteSpec("GET", "/ui/", index, "public", summary="The console"),
    RouteSpec("GET", "/ui/static/{name:.+}", static, "public",
              summary="The console's static files"),
]
