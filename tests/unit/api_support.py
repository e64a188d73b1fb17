"""Fixtures for the API tests: an app on the `db` fixture (SQLite and PostgreSQL) and one token per role.

Test modules import `api_fixture` / `sqlite_api_fixture`; the fixtures are named `api` / `sqlite_api`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from appliance import auth
from appliance.config import Settings
from appliance.db import Database
from appliance.models import Event, User
from web.app import create_app

PASSWORD = "correct horse battery"


@dataclass
class Api:
    app: Flask
    db: Database
    client: FlaskClient
    tokens: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, role: str | None = "admin", **kwargs: Any) -> Any:
        headers = dict(kwargs.pop("headers", {}))
        if role is not None:
            headers["Authorization"] = f"Bearer {self.tokens[role]}"
        return self.client.open(f"/api/v2{path}", method=method, headers=headers, **kwargs)

    def get(self, path: str, role: str | None = "admin", **kwargs: Any) -> Any:
        return self.call("GET", path, role, **kwargs)

    def post(self, path: str, json: Any, role: str | None = "admin", **kwargs: Any) -> Any:
        return self.call("POST", path, role, json=json, **kwargs)

    def patch(self, path: str, json: Any, role: str | None = "admin", **kwargs: Any) -> Any:
        return self.call("PATCH", path, role, json=json, **kwargs)

    def put(self, path: str, json: Any, role: str | None = "admin", **kwargs: Any) -> Any:
        return self.call("PUT", path, role, json=json, **kwargs)

    def delete(self, path: str, role: str | None = "admin", **kwargs: Any) -> Any:
        return self.call("DELETE", path, role, **kwargs)

    def events(self, action: str) -> list[Event]:
        with self.db.read_session() as s:
            return list(s.scalars(select(Event).where(Event.action == action).order_by(Event.id)))


def make_api(settings: Settings, db: Database) -> Api:
    app = create_app(settings, db, TESTING=True)
    api = Api(app=app, db=db, client=app.test_client())
    with db.session() as s:
        for role in ("admin", "operator", "readonly"):
            # one argon2 hash for the whole run: hashing three per test was a third of the API tests' time
            user = User(username=role, role=role, password_hash=_password_hash())
            s.add(user)
            s.flush()
            api.tokens[role] = auth.issue_token(s, user, "test")[1]
    return api


@functools.cache
def _password_hash() -> str:
    return auth.hash_password(PASSWORD)


@pytest.fixture(name="api")
def api_fixture(settings: Settings, db: Database) -> Iterator[Api]:
    yield make_api(settings, db)


@pytest.fixture(name="sqlite_api")
def sqlite_api_fixture(settings: Settings, sqlite_db: Database) -> Iterator[Api]:
    yield make_api(settings, sqlite_db)
