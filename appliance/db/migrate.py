"""Alembic, driven from code: `kiln db upgrade` and every service start call upgrade_schema()."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.db.engine import Database
from appliance.models import Barclamp, Bootenv, Deployment

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
    """The `system` deployment, the built-in bootenvs and the core barclamp exist from the start."""
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
        _load_core_barclamp(session)


def _load_core_barclamp(session: Session) -> None:
    """Load the shipped core barclamp when it is absent or this Kiln ships another version of it, so
    discovered nodes get their discovery roles without an operator running `kiln barclamp load`."""
    from appliance.annealer import barclamps

    shipped = barclamps.read_dir(barclamps.CORE_DIR, jig_names())
    loaded = session.scalar(select(Barclamp.version).where(Barclamp.name == shipped[0].name))
    if loaded != shipped[0].version:
        barclamps.load_core(session)


def jig_names() -> list[str]:
    from appliance.jigs import REGISTRY

    return list(REGISTRY)
