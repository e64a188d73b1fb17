"""What the web app keeps per process: settings, database, metrics, login throttle.

Stored in `app.extensions["kiln"]` by the factory; request code reaches it through `kiln()`.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

from appliance.config import Settings
from appliance.db import Database
from web.observability import WebMetrics
from web.throttle import LoginThrottle


@dataclass
class KilnWeb:
    settings: Settings
    db: Database
    metrics: WebMetrics
    throttle: LoginThrottle


def kiln() -> KilnWeb:
    state: KilnWeb = current_app.extensions["kiln"]
    return state
