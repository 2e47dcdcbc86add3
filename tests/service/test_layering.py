"""Only the handler and middleware layer chooses HTTP statuses.

Below the handlers, code raises the domain errors of schemas/errors.py; the error
middleware (edge/errors.py) maps them to a status and the JSON error body. This
test reads every module's imports and attribute uses (no import of the code) and fails on
`ApiError` or one of aiohttp's `web.HTTP...` exceptions outside that layer.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("db", "schemas", "edge", "service", "gateway", "launch", "worker", "model_server",
            "greenroom_client", "bench")
# The handler and middleware layer: the API's surfaces, the HTTP layer the API and the
# gateway share (edge/'s error middleware, body parsing, static files), the console's route
# handlers, the gateway's handler modules and the replica's app.
HANDLER_LAYER = ("service/api/", "edge/errors.py", "edge/parsing.py", "edge/static_files.py",
                 "service/console/routes.py",
                 "service/console/pages.py", "service/metrics.py", "gateway/app.py",
                 "gateway/feedback.py", "model_server/app.py")
HTTP_ERROR_MODULE = "edge.errors"
AIOHTTP_WEB = ("aiohttp.web", "aiohttp.web_exceptions")


def _is_http_exception(name: str) -> bool:
    return name.startswith("HTTP") and name[4:5].isupper()


def _import_uses(node: ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Import):
        return [f"line {node.lineno}: imports {alias.name}" for alias in node.names
                if alias.name in (HTTP_ERROR_MODULE, "aiohttp.web_exceptions")]
    names = [alias.name for alias in node.names]
    found = []
    if node.module == HTTP_ERROR_MODULE and "ApiError" in names:
        found.append(f"line {node.lineno}: imports ApiError")
    if node.module == "edge" and "errors" in names:
        found.append(f"line {node.lineno}: imports edge.errors")
    if node.module in AIOHTTP_WEB and any(map(_is_http_exception, names)):
        found.append(f"line {node.lineno}: imports an aiohttp HTTP exception")
    return found


def _attribute_uses(node: ast.Attribute) -> list[str]:
    if not _is_http_exception(node.attr):
        return []
    if isinstance(node.value, ast.Name) and node.value.id == "web":
        return [f"line {node.lineno}: uses web.{node.attr}"]
    if isinstance(node.value, ast.Attribute) and node.value.attr == "web":
        return [f"line {node.lineno}: uses aiohttp.web.{node.attr}"]
    return []


def http_error_uses(source: str) -> list[str]:
    """What in `source` names the HTTP error type or an aiohttp web HTTP exception."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom | ast.Import):
            found += _import_uses(node)
        elif isinstance(node, ast.Attribute):
            found += _attribute_uses(node)
    return found


def _below_handlers() -> list[Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return sorted(p for p in files
                  if not p.relative_to(ROOT).as_posix().startswith(HANDLER_LAYER))


def test_no_module_below_the_handlers_chooses_an_http_status() -> None:
    offenders = {str(p.relative_to(ROOT)): uses for p in _below_handlers()
                 if (uses := http_error_uses(p.read_text()))}
    assert offenders == {}, "raise a domain error (schemas/errors.py) instead"


def test_the_layer_check_covers_the_domain_gateway_launch_and_worker_modules() -> None:
    checked = {p.relative_to(ROOT).as_posix() for p in _below_handlers()}
    assert {"service/domain/task_requests.py", "edge/guard.py", "gateway/routing.py",
            "launch/cli.py", "worker/rollout.py"} <= checked
    assert "edge/errors.py" not in checked


@pytest.mark.parametrize("source", [
    "from edge.errors import ApiError\n",
    "from edge.errors import as_api_error, ApiError\n",
    "import edge.errors\n",
    "from edge import errors\n",
    "from aiohttp import web\nraise web.HTTPNotFound()\n",
    "import aiohttp\nraise aiohttp.web.HTTPConflict()\n",
    "from aiohttp.web import HTTPForbidden\n",
    "from aiohttp.web_exceptions import HTTPException\n",
])
def test_the_check_sees_each_way_of_naming_an_http_error(source: str) -> None:
    assert http_error_uses(source)


def test_the_check_leaves_domain_errors_and_plain_aiohttp_alone() -> None:
    assert http_error_uses("from schemas.errors import NotFound\nfrom aiohttp import web\n"
                           "x: web.Request\nraise NotFound('m')\n") == []


def test_the_benchmarks_import_nothing_from_the_tests() -> None:
    importers = []
    for path in sorted((ROOT / "bench").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(name == "tests" or name.startswith("tests.") for name in names):
                importers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert importers == [], "move what bench needs into a package (launch/backing.py)"
