"""The live services tests may use (Postgres, Redis, RabbitMQ): probe, skip or fail.

A test that needs a service calls :func:`require`. When the service does not answer it is
skipped with the reason, unless ``CICDLLM_REQUIRE_SERVICES=1`` (set by ``.ci/run``), where a
missing service fails the test instead.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

import pytest

PG_ADMIN_URL = os.environ.get("CICDLLM_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
RABBITMQ_URL = os.environ.get("CICDLLM_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
_PORTS = {"postgres": 5432, "redis": 6379, "rabbitmq": 5672}


@cache
def answers(service: str) -> bool:
    """True when the service's port on 127.0.0.1 accepts a connection."""
    try:
        with socket.create_connection(("127.0.0.1", _PORTS[service]), timeout=1.0):
            return True
    except OSError:
        return False


def require(service: str) -> None:
    """Skip (or, with CICDLLM_REQUIRE_SERVICES=1, fail) when ``service`` does not answer."""
    if answers(service):
        return
    reason = f"{service} does not answer on 127.0.0.1:{_PORTS[service]}"
    if os.environ.get("CICDLLM_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (CICDLLM_REQUIRE_SERVICES=1)")
    pytest.skip(f"{reason}; start it to run this test")


def with_database(admin_url: str, name: str) -> str:
    """``admin_url`` pointing at database ``name``."""
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@contextmanager
def fresh_database(prefix: str = "cicdllm_test") -> Iterator[str]:
    """Create a database for this test run, yield its URL, drop it afterwards."""
    import psycopg

    require("postgres")
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(PG_ADMIN_URL, name)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_url(database_url: str, schema: str) -> str:
    """A URL whose connections use ``schema`` (created here) as their search path."""
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as con:
        con.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
    return f"{database_url}?options=-csearch_path%3D{schema}"
