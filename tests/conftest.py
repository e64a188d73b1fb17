"""Shared fixtures: a database on SQLite and on a throwaway PostgreSQL, a settings object."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.db import Database, create_database
from tests.pgserver import PostgresServer

_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'kiln.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"kiln_{os.getpid()}_{next(_counter)}")


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = create_database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = create_database(f"sqlite:///{tmp_path / 'kiln.db'}")
    yield database
    database.dispose()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("KILN_CONFIG", str(tmp_path / "absent.toml"))
    return Settings(
        state_dir=tmp_path / "state",
        database_url=f"sqlite:///{tmp_path / 'kiln.db'}",
        secret_key="test-secret-key-not-for-production",
        tftp_root=tmp_path / "tftp",
    )
