"""`kiln db`: schema migrations."""

from __future__ import annotations

import click

from appliance.cli.base import CliContext, main, pass_cli
from appliance.db import Database
from appliance.db.migrate import current_revision, upgrade_schema


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@pass_cli
def db_upgrade(cli: CliContext, revision: str) -> None:
    """Apply migrations (services also do this at start)."""
    db = Database(cli.settings.effective_database_url)
    upgrade_schema(db, revision)
    click.echo(f"database at revision {current_revision(db)}")


@db_group.command("revision")
@pass_cli
def db_revision(cli: CliContext) -> None:
    """Print the schema revision."""
    click.echo(current_revision(Database(cli.settings.effective_database_url)) or "(empty)")
