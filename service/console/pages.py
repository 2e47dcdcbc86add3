"""GET /ui: the console's page and its static files, shipped as package data.

Files are read once at start-up into a fixed table, so a request path can name nothing
else. Strict headers: scripts and styles from this origin only, no framing, no referrer.
"""

import mimetypes
from pathlib import Path

from aiohttp import web

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


def setup(app: web.Application) -> None:
    files = _load()

    async def index(request: web.Request) -> web.Response:
        return _serve(files, "index.html")

    async def static(request: web.Request) -> web.Response:
        return _serve(files, request.match_info["name"])

    async def slash(request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    app.router.add_get("/ui", slash)
    app.router.add_get("/ui/", index)
    app.router.add_get("/ui/static/{name:.+}", static)
