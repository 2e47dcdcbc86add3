"""GET /docs: Swagger UI on /openapi.json, from files shipped in this package.

No CDN is reachable from where Greenroom runs, so swagger-ui-dist's bundle is vendored
under service/static/swagger-ui (its VERSION file says which release and from where).
"""

from pathlib import Path

from aiohttp import web

from edge.auth.rules import PUBLIC
from edge.route_spec import RouteSpec
from edge.routes import register
from edge.static_files import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static" / "swagger-ui"
STATIC_PREFIX = "/docs/static"
_PAGE = f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Greenroom API</title>
  <link rel="stylesheet" href="{STATIC_PREFIX}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{STATIC_PREFIX}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{url: "/openapi.json", dom_id: "#swagger-ui",
      deepLinking: true, displayOperationId: true, docExpansion: "list"}});
  </script>
</body>
</html>
"""


async def docs(request: web.Request) -> web.Response:
    """The browsable API reference."""
    return web.Response(text=_PAGE, content_type="text/html")


FILES = StaticFiles(STATIC, {"Cache-Control": "public, max-age=86400"})


async def static(request: web.Request) -> web.Response:
    """Swagger UI's script and style sheet."""
    return FILES.response(request.match_info["name"])


ROUTES = [RouteSpec("GET", "/docs", docs, PUBLIC, summary="Browsable API reference"),
          RouteSpec("GET", STATIC_PREFIX + "/{name:.+}", static, PUBLIC,
                    summary="Swagger UI's files")]


def setup(app: web.Application) -> None:
    register(app, ROUTES)
