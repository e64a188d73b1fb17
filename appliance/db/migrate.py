"""Alembic, driven from code: `kiln db upgrade` and every service start call upgrade_schema()."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select

from appliance.db.engine import Database
from appliance.models import Bootenv, Deployment

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(db: Database) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", db.url.replace("%", "%%"))
    cfg.attributes["engine"] = db.engine
    return cfg


def upgrade_schema(db: Database, revision: str = "head") -> None:
    """Apply migrations up to `revision` and make sure the rows every appliance needs exist."""
    command.upgrade(alembic_config(db), revision)
    seed(db)


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with db.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def seed(db: Database) -> None:
    """The `system` deployment and the built-in bootenvs exist from the start (DESIGN §3)."""
    with db.session() as session:
        if session.scalar(select(Deployment).where(Deployment.name == "system")) is None:
            session.add(
                Deployment(
                    name="system",
                    system=True,
                    state="committed",
                    description="Every discovered node joins this deployment",
                )
            )
        for name, kind, description in (
            ("discovery", "discovery", "Kiln's discovery image: inventory, then wait for work"),
            ("local", "local", "Boot from the local disk"),
        ):
            if session.scalar(select(Bootenv).where(Bootenv.name == name)) is None:
                session.add(Bootenv(name=name, kind=kind, description=description))
