"""`kiln node power ...` (many nodes at once, with a progress bar) and `kiln bmc ...` (one node's BMC)."""

from __future__ import annotations

import sys
from typing import Any

import click

from appliance.bmc.base import BOOT_DEVICES, POWER_ACTIONS
from appliance.bmc.credentials import set_node_bmc, target_for_node
from appliance.bmc.power import DEFAULT_TIMEOUT, DEFAULT_WORKERS, PowerResult, power_nodes, resolve_nodes
from appliance.bmc.probe import DriverCache
from appliance.cli.base import CliContext, json_option, main, output, pass_cli
from appliance.cli.nodes import _find, node_group


@node_group.command("power")
@click.argument("action", type=click.Choice(["status", *POWER_ACTIONS]))
@click.argument("node_refs", metavar="NODE...", nargs=-1, required=True)
@click.option("--workers", default=DEFAULT_WORKERS, show_default=True, help="BMCs talked to at once.")
@click.option(
    "--timeout", default=DEFAULT_TIMEOUT, show_default=True, help="Seconds per BMC, retries included."
)
@json_option
@pass_cli
def node_power(
    cli: CliContext, action: str, node_refs: tuple[str, ...], workers: int, timeout: float, as_json: bool
) -> None:
    """Power NODE... on, off, soft (ACPI off), cycle, reset, netboot (PXE next, then cycle), or status.

    Nodes are handled in parallel; one dead BMC delays only its own node. Exits 1 if any failed.
    """
    ids = resolve_nodes(cli.db, list(node_refs))
    show_bar = not as_json and sys.stderr.isatty() and len(ids) > 1
    with click.progressbar(
        length=len(ids), label=f"power {action}", file=sys.stderr, hidden=not show_bar
    ) as bar:

        def advance(_: PowerResult) -> None:
            bar.update(1)

        results = power_nodes(
            cli.db, cli.settings, ids, action, workers=workers, timeout=timeout, actor="cli", progress=advance
        )
    rows = [r.as_dict() for r in results]
    if as_json:
        output(rows, [], True)
    else:
        for row in rows:
            row["result"] = "ok" if row["ok"] else "FAILED"
            row["state"] = row["state"] or ""
            row["error"] = row["error"] or ""
        output(rows, ["name", "action", "result", "state", "seconds", "error"], False)
    if not all(r.ok for r in results):
        sys.exit(1)


@main.group("bmc")
def bmc_group() -> None:
    """A node's BMC: address and credentials, boot device, inventory, security."""


@bmc_group.command("set")
@click.argument("node_ref", metavar="NODE")
@click.option("--address", default=None, help="host, host:port or a Redfish URL.")
@click.option("--username", default=None)
@click.option("--driver", type=click.Choice(["ipmi", "redfish", "auto"]), default=None)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--ask-password", is_flag=True, help="Prompt for the password (not echoed).")
@pass_cli
def bmc_set(
    cli: CliContext,
    node_ref: str,
    address: str | None,
    username: str | None,
    driver: str | None,
    password_stdin: bool,
    ask_password: bool,
) -> None:
    """Set NODE's BMC address, driver and credentials (the password is stored encrypted)."""
    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif ask_password:
        password = click.prompt("BMC password", hide_input=True, confirmation_prompt=True)
    with cli.db.session() as session:
        node = _find(session, node_ref)
        set_node_bmc(
            session,
            cli.settings,
            node,
            address=address,
            username=username,
            password=password,
            driver="" if driver == "auto" else driver,
            actor="cli",
        )
        click.echo(f"BMC of {node.name} set")


def _driver_for(cli: CliContext, node_ref: str, cache: DriverCache) -> Any:
    with cli.db.read_session() as session:
        node = _find(session, node_ref)
        target = target_for_node(node, cli.settings)
    return cache.get(target)


@bmc_group.command("show")
@click.argument("node_ref", metavar="NODE")
@click.option("--probe/--no-probe", default=False, help="Also log in: driver, power, boot device, LAN.")
@json_option
@pass_cli
def bmc_show(cli: CliContext, node_ref: str, probe: bool, as_json: bool) -> None:
    """What Kiln knows about NODE's BMC (never the password)."""
    with cli.db.read_session() as session:
        node = _find(session, node_ref)
        row: dict[str, Any] = {
            "name": node.name,
            "address": node.bmc_address,
            "driver": node.bmc_driver or "auto",
            "username": node.bmc_username,
            "password": "set" if node.bmc_password_enc else "not set",
            "power_state": node.power_state,
            "power_checked_at": node.power_checked_at,
        }
    if probe:
        cache = DriverCache()
        try:
            driver = _driver_for(cli, node_ref, cache)
            row["driver"] = driver.name
            row["power_state"] = driver.power_state()
            boot = driver.get_boot_device()
            row["boot_device"] = boot.device or "none"
        finally:
            cache.close()
    output(row, list(row), as_json)


@bmc_group.command("boot")
@click.argument("node_ref", metavar="NODE")
@click.argument("device", type=click.Choice(BOOT_DEVICES))
@click.option("--persistent", is_flag=True, help="Every boot, not only the next one.")
@click.option("--mode", type=click.Choice(["bios", "uefi"]), default=None)
@pass_cli
def bmc_boot(cli: CliContext, node_ref: str, device: str, persistent: bool, mode: str | None) -> None:
    """Set NODE's boot device (next boot only unless --persistent)."""
    cache = DriverCache()
    try:
        _driver_for(cli, node_ref, cache).set_boot_device(device, persistent=persistent, mode=mode)
    finally:
        cache.close()
    click.echo(f"{node_ref}: boot {device}" + (" (persistent)" if persistent else " (next boot)"))


@bmc_group.command("inventory")
@click.argument("node_ref", metavar="NODE")
@json_option
@pass_cli
def bmc_inventory(cli: CliContext, node_ref: str, as_json: bool) -> None:
    """FRU / system information and sensors as the BMC reports them."""
    cache = DriverCache()
    try:
        inventory = _driver_for(cli, node_ref, cache).inventory().as_dict()
    finally:
        cache.close()
    if as_json:
        output(inventory, [], True)
        return
    summary = {k: inventory[k] for k in ("manufacturer", "product", "serial", "firmware", "guid")}
    summary["sensors"] = len(inventory["sensors"])
    output(summary, list(summary), False)


@bmc_group.command("security")
@click.argument("node_ref", metavar="NODE")
@pass_cli
def bmc_security(cli: CliContext, node_ref: str) -> None:
    """Report weak BMC transport settings (cipher suite 0, plain HTTP, old TLS). Exits 1 if weak."""
    cache = DriverCache()
    try:
        report = _driver_for(cli, node_ref, cache).security()
    finally:
        cache.close()
    if not report.weak:
        click.echo(f"{node_ref}: no weakness found")
        return
    for finding in report.findings:
        click.echo(f"{node_ref}: WEAK: {finding}")
    sys.exit(1)
