"""The services the tests run on: configured ones when the variables are set, embedded otherwise."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import redis

from dispatcher import config, services
from dispatcher.services import Services


def test_the_database_answers_and_the_embedded_path_is_taken_when_unset(
    found_services: Services,
) -> None:
    with psycopg.connect(found_services.database_url) as conn:
        row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    assert row[0] >= 150000
    assert found_services.embedded_database == ("PAYDISPATCH_DATABASE_URL" not in os.environ)


def test_the_broker_answers_and_the_embedded_path_is_taken_when_unset(
    found_services: Services,
) -> None:
    client = redis.Redis.from_url(found_services.broker_url)
    try:
        assert client.ping()
    finally:
        client.close()
    assert found_services.embedded_broker == ("PAYDISPATCH_BROKER_URL" not in os.environ)


def test_embedded_services_are_reused_across_runs(found_services: Services) -> None:
    # Given services already found once, when they are looked up again (a second run),
    # then the same servers come back instead of new ones.
    environ = dict(os.environ)
    environ.setdefault(
        "PAYDISPATCH_HOME", str(Path(__file__).resolve().parents[2] / ".paydispatch")
    )
    environ.pop("PAYDISPATCH_CONFIG", None)
    again = services.ensure(config.load(environ))
    assert again == found_services


def test_redact_hides_passwords() -> None:
    assert (
        services.redact("postgresql://app:s3cret@db:5432/pay") == "postgresql://app:***@db:5432/pay"
    )
    assert services.redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
