"""The `kiln` command group and what every subcommand shares: settings, database, output."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click

from appliance.config import Settings, load_settings
from appliance.db import Database, create_database
from appliance.errors import ConfigError, KilnError


@dataclass
class CliContext:
    settings: Settings
    _db: Database | None = field(default=None)

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = create_database(self.settings.effective_database_url)
        return self._db


def setup_logging(level: str) -> None:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.basicConfig(
        level=level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class KilnGroup(click.Group):
    """Turns Kiln's errors into one clear line and an exit code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            click.echo(f"kiln: {exc.message}", err=True)
            ctx.exit(2)
        except KilnError as exc:
            click.echo(f"kiln: {exc.message}", err=True)
            ctx.exit(1)


@click.group(cls=KilnGroup)
@click.option("--database-url", envvar="KILN_DATABASE_URL", default=None, help="Override the database URL.")
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Kiln: the admin node for a rack of bare-metal machines."""
    overrides: dict[str, Any] = {}
    if database_url:
        overrides["database_url"] = database_url
    settings = load_settings(**overrides)
    setup_logging(settings.log_level)
    ctx.obj = CliContext(settings=settings)


pass_cli = click.make_pass_decorator(CliContext)


def json_option(func: Any) -> Any:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")(func)


def output(rows: Sequence[dict[str, Any]] | dict[str, Any], columns: Sequence[str], as_json: bool) -> None:
    """A table for people, JSON for scripts."""
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    items = [rows] if isinstance(rows, dict) else list(rows)
    if not items:
        click.echo("(none)")
        return
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in items)) for c in columns}
    click.echo("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for r in items:
        click.echo("  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns))
