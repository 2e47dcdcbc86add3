"""GET /docs: Swagger UI on the API's /openapi.json and the gateway's, from files shipped
in this package.

No CDN is reachable from where Greenroom runs, so swagger-ui-dist's bundle is vendored
under service/static/swagger-ui (its VERSION file says which release and from where).
"""

from pathlib import Path

from aiohttp import web

from edge.auth.rules import PUBLIC
from edge.keys import SETTINGS
from edge.route_spec import RouteSpec
from edge.routes import register
from edge.static_files import StaticFiles

STATIC = Path(__file__).resolve().parent.parent / "static" / "swagger-ui"
STATIC_PREFIX = "/docs/static"
# Two documents: the API's (this process) and the gateway's, which the data plane serves
# itself on its own port (`gateway_port`, on the host this page came from; it answers its
# document to any origin). `?doc=gateway` opens the gateway's.
_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Greenroom API</title>
  <link rel="stylesheet" href="{static}/swagger-ui.css">
</head>
<body>
  <div style="font-family: sans-serif; padding: 8px 20px;">
    <label for="document">Document</label>
    <select id="document">
      <option value="api">API (control plane): /openapi.json</option>
      <option value="gateway">Gateway (data plane): :{gateway_port}/openapi.json</option>
    </select>
  </div>
  <div id="swagger-ui"></div>
  <script src="{static}/swagger-ui-bundle.js"></script>
  <script>
    const documents = {{
      api: "/openapi.json",
      gateway: `${{location.protocol}}//${{location.hostname}}:{gateway_port}/openapi.json`,
    }};
    const select = document.getElementById("document");
    function show(name) {{
      select.value = name;
      window.ui = SwaggerUIBundle({{url: documents[name], dom_id: "#swagger-ui",
        deepLinking: true, displayOperationId: true, docExpansion: "list"}});
    }}
    select.addEventListener("change", () => {{
      const url = new URL(location.href);
      url.searchParams.set("doc", select.value);
      history.replaceState(null, "", url);
      show(select.value);
    }});
    const asked = new URLSearchParams(location.search).get("doc");
    show(asked in documents ? asked : "api");
  </script>
</body>
</html>
"""


async def docs(request: web.Request) -> web.Response:
    """The browsable API reference: the API's document and the gateway's."""
    page = _PAGE.format(static=STATIC_PREFIX, gateway_port=request.app[SETTINGS].gateway_port)
    return web.Response(text=page, content_type="text/html")


FILES = StaticFiles(STATIC, {"Cache-Control": "public, max-age=86400"})


async def static(request: web.Request) -> web.Response:
    """Swagger UI's script and style sheet."""
    return FILES.response(request.match_info["name"])


ROUTES = [RouteSpec("GET", "/docs", docs, PUBLIC, summary="Browsable API reference"),
          RouteSpec("GET", STATIC_PREFIX + "/{name:.+}", static, PUBLIC,
                    summary="Swagger UI's files")]


def setup(app: web.Application) -> None:
    register(app, ROUTES)
