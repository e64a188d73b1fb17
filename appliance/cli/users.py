"""`kiln user`: accounts and API tokens."""

from __future__ import annotations

import secrets

import click
from sqlalchemy import select

from appliance import auth
from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.errors import NotFound
from appliance.models import User


@main.group("user")
def user_group() -> None:
    """Users and API tokens."""


@user_group.command("add")
@click.argument("username")
@click.option("--admin", "role", flag_value="admin", help="Give the admin role.")
@click.option("--operator", "role", flag_value="operator", help="Give the operator role.")
@click.option("--readonly", "role", flag_value="readonly", default=True, help="Read-only (default).")
@click.option("--password", default=None, help="Password; a random one is printed when omitted.")
@click.option("--token/--no-token", default=False, help="Also issue an API token and print it.")
@pass_cli
def user_add(cli: CliContext, username: str, role: str, password: str | None, token: bool) -> None:
    """Create a user."""
    generated = password is None
    password = password or secrets.token_urlsafe(12)
    with cli.db.session() as session:
        user = auth.create_user(session, username, password, role, actor="cli")
        clear = auth.issue_token(session, user, "cli")[1] if token else None
    click.echo(f"user {username} ({role}) created")
    if generated:
        click.echo(f"password: {password}")
    if clear:
        click.echo(f"token: {clear}")


@user_group.command("token")
@click.argument("username")
@click.option("--name", default="cli")
@pass_cli
def user_token(cli: CliContext, username: str, name: str) -> None:
    """Issue an API token for a user (printed once)."""
    with cli.db.session() as session:
        user = session.scalar(select(User).where(User.username == username))
        if user is None:
            raise NotFound(f"user '{username}' not found")
        click.echo(auth.issue_token(session, user, name)[1])


@user_group.command("list")
@json_option
@pass_cli
def user_list(cli: CliContext, as_json: bool) -> None:
    """List users."""
    with cli.db.read_session() as session:
        rows = [
            {"id": u.id, "username": u.username, "role": u.role, "disabled": u.disabled}
            for u in session.scalars(select(User).order_by(User.id))
        ]
    output(rows, ["id", "username", "role", "disabled"], as_json)
