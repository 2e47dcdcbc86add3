"""The web console at /ui (issue 17): static pages, the JSON routes they need, live changes."""

from aiohttp import web

from edge.routes import register
from service.console import changes, pages, routes, traffic


def setup(app: web.Application) -> None:
    """Routes, pages and the change feed of the console."""
    app[traffic.RATES] = traffic.Rates()
    app.cleanup_ctx.append(changes.feed_context)
    app.on_shutdown.append(changes.end_streams)
    register(app, routes.ROUTES + pages.ROUTES)
