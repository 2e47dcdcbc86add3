"""The HTTP edge both of Greenroom's HTTP processes stand on: the API (service/) and the
gateway (gateway/). What a request meets before and after its handler: who is calling and
what they may do (auth/), the route table and the guard in front of each handler
(route_spec.py, routes.py, guard.py), the one error body and its middleware (errors.py),
body parsing and JSON answers, the OpenAPI document, the shared metrics pieces and the
application keys both processes hold (keys.py). It imports db/ and schemas/, never
service/ or gateway/ (import-linter's contracts in pyproject.toml)."""
