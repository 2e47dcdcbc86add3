"""The HTTP layer both processes share: error shape, parsing, OpenAPI, static files."""
