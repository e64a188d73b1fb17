"""`kiln webhook add|list|set|delete|deliveries|redeliver`: event sinks and what was sent to them."""

from __future__ import annotations

import sys

import click

from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.errors import InvalidInput
from appliance.models import Delivery
from appliance.webhooks import sinks


@main.group("webhook")
def webhook_group() -> None:
    """Event sinks: HTTP(S) endpoints that receive matching events, signed (X-Kiln-Signature)."""


def _read_secret() -> str:
    secret = sys.stdin.readline().rstrip("\r\n")
    if not secret:
        raise InvalidInput("secret", "nothing on standard input")
    return secret


@webhook_group.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--filter", "filter_", default="*", show_default=True, help="Action globs, comma-separated.")
@click.option("--secret-stdin", is_flag=True, help="Read the signing secret from standard input.")
@click.option("--disabled", is_flag=True, help="Register it without sending anything yet.")
@pass_cli
def webhook_add(
    cli: CliContext, name: str, url: str, filter_: str, secret_stdin: bool, disabled: bool
) -> None:
    """Send the events from now on whose action matches --filter (e.g. 'noderole.*,node.create') to URL.

    Without --secret-stdin a secret is generated and printed once: give it to the receiver, which checks
    X-Kiln-Signature (sha256=HMAC-SHA256 of the body) with it. Kiln never shows it again.
    """
    secret = _read_secret() if secret_stdin else sinks.generate_secret()
    with cli.db.session() as session:
        sink = sinks.create_sink(
            session,
            cli.settings,
            name=name,
            url=url,
            secret=secret,
            filter=filter_,
            enabled=not disabled,
            actor="cli",
        )
    click.echo(f"event sink {sink.name} ({sink.id}) → {sink.url} for '{sink.filter}'")
    if not secret_stdin:
        click.echo(f"secret (shown once): {secret}")


@webhook_group.command("list")
@json_option
@pass_cli
def webhook_list(cli: CliContext, as_json: bool) -> None:
    """Every sink with its deliveries by status."""
    with cli.db.read_session() as session:
        found = sinks.list_sinks(session)
        counts = sinks.delivery_counts(session)
        rows = [
            {
                "id": s.id,
                "name": s.name,
                "url": s.url,
                "filter": s.filter,
                "enabled": s.enabled,
                "pending": counts.get(s.id, {}).get("pending", 0),
                "delivered": counts.get(s.id, {}).get("delivered", 0),
                "failed": counts.get(s.id, {}).get("failed", 0),
            }
            for s in found
        ]
    output(rows, ["id", "name", "url", "filter", "enabled", "pending", "delivered", "failed"], as_json)


@webhook_group.command("set")
@click.argument("sink_ref", metavar="SINK")
@click.option("--url", default=None)
@click.option("--filter", "filter_", default=None, help="Action globs, comma-separated.")
@click.option("--secret-stdin", is_flag=True, help="Read a new signing secret from standard input.")
@click.option("--enable/--disable", "enabled", default=None, help="Re-enabling skips events of the pause.")
@pass_cli
def webhook_set(
    cli: CliContext,
    sink_ref: str,
    url: str | None,
    filter_: str | None,
    secret_stdin: bool,
    enabled: bool | None,
) -> None:
    """Change a sink's URL, filter, secret or whether it is enabled."""
    secret = _read_secret() if secret_stdin else None
    with cli.db.session() as session:
        sink = sinks.get_sink(session, sink_ref, for_update=True)
        sinks.update_sink(
            session, cli.settings, sink, url=url, filter=filter_, secret=secret, enabled=enabled, actor="cli"
        )
        state = "enabled" if sink.enabled else "disabled"
        click.echo(f"event sink {sink.name} → {sink.url} for '{sink.filter}', {state}")


@webhook_group.command("delete")
@click.argument("sink_ref", metavar="SINK")
@pass_cli
def webhook_delete(cli: CliContext, sink_ref: str) -> None:
    """Delete a sink and its delivery records."""
    with cli.db.session() as session:
        sink = sinks.get_sink(session, sink_ref, for_update=True)
        sinks.delete_sink(session, sink, actor="cli")
    click.echo(f"event sink {sink_ref} deleted")


@webhook_group.command("deliveries")
@click.argument("sink_ref", metavar="SINK")
@click.option("--status", type=click.Choice(sinks.DELIVERY_STATES), default=None)
@click.option("--limit", default=50, show_default=True, help="The newest N.")
@json_option
@pass_cli
def webhook_deliveries(cli: CliContext, sink_ref: str, status: str | None, limit: int, as_json: bool) -> None:
    """A sink's newest deliveries: status, attempts, the last answer or error."""
    with cli.db.read_session() as session:
        sink = sinks.get_sink(session, sink_ref)
        query = sinks.deliveries_query(sink.id, status).order_by(Delivery.id.desc()).limit(limit)
        found = list(session.scalars(query))
        actions = sinks.event_actions(session, [d.event_id for d in found])
        rows = [sinks.delivery_row(d, actions.get(d.event_id)) for d in found]
    if not as_json:
        for row in rows:
            row["last_status_code"] = row["last_status_code"] or ""
            row["last_error"] = row["last_error"] or ""
            row["next_attempt_at"] = row["next_attempt_at"] or ""
    columns = ["id", "event_id", "action", "status", "attempts", "last_status_code", "last_error"]
    output(rows, [*columns, "next_attempt_at"], as_json)


@webhook_group.command("redeliver")
@click.argument("delivery_ids", metavar="DELIVERY...", nargs=-1, type=int, required=True)
@pass_cli
def webhook_redeliver(cli: CliContext, delivery_ids: tuple[int, ...]) -> None:
    """Send deliveries again (pending, with a fresh set of attempts)."""
    with cli.db.session() as session:
        for delivery_id in delivery_ids:
            sinks.redeliver(session, delivery_id, actor="cli")
    click.echo(f"{len(delivery_ids)} deliveries queued again")
