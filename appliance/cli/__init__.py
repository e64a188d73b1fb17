"""The `kiln` command line. Each module below adds its commands to `main`."""

from __future__ import annotations

from appliance.cli import (  # noqa: F401  (registers commands)
    anneal,
    annealer,
    db,
    dhcp,
    lab,
    networks,
    node_ops,
    nodes,
    power,
    serve,
    status,
    users,
    webhooks,
)
from appliance.cli.base import main

__all__ = ["annealer_main", "main"]


def annealer_main() -> None:
    """Entry point of `kiln-annealer` (the unit runs `kiln annealer run`)."""
    main(["annealer", "run"])
