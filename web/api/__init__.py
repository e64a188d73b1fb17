"""REST API v2, mounted at /api/v2.

Each module below is a Flask Blueprint named `bp` whose routes are declared with
`web.api.endpoint.endpoint` (validation + access + OpenAPI in one place). To add an API module:

1. write `web/api/<name>.py` with `bp = Blueprint("<name>", __name__)` and `@endpoint(...)` routes
   (rules relative to /api/v2, e.g. "/deployments/<int:deployment_id>");
2. add one line `"web.api.<name>",` to MODULES below.

Errors: raise appliance.errors (NotFound, Conflict, InvalidInput...); web/api/errors.py turns them into
`{"error", "field"}` answers. Changes: `with write_session() as s:` and an Event through
appliance.events.record(..., actor=actor()). The OpenAPI document picks new routes up by itself.
"""

from __future__ import annotations

import importlib

from flask import Blueprint

MODULES = [
    "web.api.openapi",
    "web.api.session",
    "web.api.nodes",
    "web.api.networks",
    "web.api.bootenvs",
    "web.api.users",
    "web.api.events",
]


def create_blueprint() -> Blueprint:
    """A fresh /api/v2 blueprint holding every module's routes (one per app: blueprints nest once)."""
    api = Blueprint("api", __name__, url_prefix="/api/v2")
    for name in MODULES:
        api.register_blueprint(importlib.import_module(name).bp)
    return api
