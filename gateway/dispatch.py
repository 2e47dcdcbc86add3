"""One look-up for the data plane's `/serve/{name}/...` routes, ahead of aiohttp's router.

aiohttp resolves a path like `/serve/x/embed` by trying every resource under `/serve` in
turn, a regular expression each (feedback, `/serve/{name}`, `/serve/{name}/`, then each
TEI route): three to fourteen matches a request, about a tenth of the gateway's own CPU
per request (bench/gateway_split.py). `ServeIndex` is registered first under `/serve` and
finds the route of a `(method, rest of the path)` in a dict. It only answers hits: any
other request (feedback, a wrong method, a name aiohttp would unquote) falls through to the
ordinary resources, which stay registered as they were (route table, 405 and `Allow`,
metrics' canonical paths), so what a request resolves to is unchanged.
"""

from collections.abc import Iterator

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractResource, UrlMappingMatchInfo, _InfoDict
from yarl import URL

PREFIX = "/serve/"
TEMPLATE = "/serve/{name}"


class ServeIndex(AbstractResource):
    """The data plane's `/serve/{name}{rest}` routes by method and `rest`; holds no route of
    its own (iterating it yields none)."""

    def __init__(self) -> None:
        super().__init__()
        self._routes: dict[tuple[str, str], web.AbstractRoute] = {}

    def add(self, method: str, path: str, route: web.AbstractRoute) -> None:
        """Index `route`, registered for `method` on `path` (a `/serve/{name}...` template)."""
        assert path.startswith(TEMPLATE), path
        self._routes[method, path[len(TEMPLATE):]] = route

    @property
    def canonical(self) -> str:
        return TEMPLATE  # indexed by the router under "/serve", ahead of the others

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        path = request.rel_url.path_safe
        if path.startswith(PREFIX):
            name, slash, rest = path[len(PREFIX):].partition("/")
            route = self._routes.get((request.method, slash + rest))
            # aiohttp's pattern for {name}: one or more characters, none of "{}/"; a "%" is
            # left to it (it unquotes "%2F" and "%25" in a match).
            if route is not None and name and not ("%" in name or "{" in name or "}" in name):
                return UrlMappingMatchInfo({"name": name}, route), set()
        return None, set()

    def url_for(self, **kwargs: str) -> URL:
        return URL.build(path=PREFIX + kwargs["name"], encoded=False)

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the gateway's routes are not a sub-application's")

    def get_info(self) -> _InfoDict:
        return {"formatter": TEMPLATE + "{rest}"}

    def raw_match(self, path: str) -> bool:
        return False  # never merged with a resource added later

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[web.AbstractRoute]:
        return iter(())
