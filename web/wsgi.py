"""WSGI entry point for gunicorn: `gunicorn web.wsgi:app`. The one module that builds an app on import."""

from __future__ import annotations

from appliance.config import load_settings
from web.app import create_app
from web.observability import install_log_context

_settings = load_settings()
install_log_context(_settings.log_level)
app = create_app(_settings)
