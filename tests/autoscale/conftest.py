"""Autoscaling tests call as the administrator, like the integration tests."""

from tests.integration.conftest import anon_http, http

__all__ = ["anon_http", "http"]
