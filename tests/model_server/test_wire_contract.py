"""What the model server restates of the control plane's wire contract, kept equal.

The model server imports no other package of Greenroom (import-linter's contract in
pyproject.toml), so the replica-secret header and TEI's error types are written in
model_server/ and in schemas/: these tests fail the moment the two disagree.
"""

from uuid import uuid4

import pytest

from model_server import config as replica_config
from model_server import errors as replica_errors
from model_server import lanes as replica_lanes
from schemas import errors, lanes, replica_auth


def test_the_replica_reads_its_secret_from_the_header_the_gateways_send() -> None:
    assert replica_config.GATEWAY_SECRET_HEADER == replica_auth.HEADER


def test_the_worker_sets_the_variable_the_replica_reads_its_secret_from(
        monkeypatch: pytest.MonkeyPatch) -> None:
    secret = replica_auth.generation_secret("k" * 40, uuid4(), 3)
    monkeypatch.setenv(replica_auth.ENV, secret)
    settings = replica_config.Settings()
    assert settings.gateway_secret is not None
    assert settings.gateway_secret.get_secret_value() == secret


def test_the_replica_and_the_gateway_name_each_status_s_tei_error_type_alike() -> None:
    statuses = range(400, 600)
    assert ([replica_errors.tei_error_type(s) for s in statuses]
            == [errors.tei_error_type(s) for s in statuses])


def test_the_replica_reads_lanes_and_deadlines_from_the_headers_the_gateway_sends() -> None:
    assert replica_lanes.PRIORITY_HEADER == lanes.PRIORITY_HEADER
    assert replica_lanes.TIMEOUT_HEADER == lanes.TIMEOUT_HEADER
    assert replica_lanes.TOKENS_HEADER == lanes.TOKENS_HEADER
    assert replica_lanes.LANES == lanes.LANES
    assert replica_lanes.MAX_TIMEOUT_S == lanes.MAX_TIMEOUT_S
