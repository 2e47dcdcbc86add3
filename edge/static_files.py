"""Static files shipped as package data (the console, the API reference), served through the
route table: read once at start-up into a fixed map, so a request path can name nothing else."""

import mimetypes
from collections.abc import Mapping
from pathlib import Path

from aiohttp import web

_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html",
          ".svg": "image/svg+xml"}


class StaticFiles:
    """Every file under `root`, by its path relative to it, with the headers to send."""

    def __init__(self, root: Path, headers: Mapping[str, str] | None = None) -> None:
        self.headers = dict(headers or {})
        self.files: dict[str, tuple[bytes, str]] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file():
                kind = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
                self.files[path.relative_to(root).as_posix()] = (
                    path.read_bytes(), kind or "application/octet-stream")

    def response(self, name: str) -> web.Response:
        """The file called `name`, or 404."""
        found = self.files.get(name)
        if found is None:
            raise web.HTTPNotFound()
        body, kind = found
        charset = "utf-8" if kind.startswith("text/") or kind.endswith("+xml") else None
        return web.Response(body=body, content_type=kind, charset=charset, headers=self.headers)
