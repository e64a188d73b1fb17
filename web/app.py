"""The Flask app factory. gunicorn serves `web.app:create_app()` (or `web.wsgi:app`).

No import-time side effects: settings and the database are read when the factory is called.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Flask, redirect
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.wrappers.response import Response as WerkzeugResponse

from appliance.config import Settings, load_settings
from appliance.db import Database, create_database
from web import admin, boot, observability
from web.api import create_blueprint
from web.api.errors import register_error_handlers
from web.context import KilnWeb
from web.throttle import LoginThrottle


def create_app(settings: Settings | None = None, db: Database | None = None, **config: Any) -> Flask:
    """Build the web app; `config` overrides Flask settings (tests pass TESTING=True)."""
    settings = settings or load_settings()
    db = db or create_database(settings.effective_database_url)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.effective_secret_key(),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        PERMANENT_SESSION_LIFETIME=dt.timedelta(hours=12),
        MAX_CONTENT_LENGTH=16 * 1024 * 1024,
    )
    app.config.update(config)
    if settings.web_trusted_proxies:
        # behind nginx/haproxy every request comes from the proxy: the login throttle, the logs and the
        # discovery endpoint need the client's own address, taken from the headers the proxies append
        hops = settings.web_trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]
    metrics = observability.init_app(app, settings.web_metrics_token.get_secret_value())
    app.extensions["kiln"] = KilnWeb(settings=settings, db=db, metrics=metrics, throttle=LoginThrottle())
    register_error_handlers(app)
    app.register_blueprint(create_blueprint())
    app.register_blueprint(boot.bp)
    app.register_blueprint(admin.bp)

    @app.get("/")
    def root() -> WerkzeugResponse:
        return redirect("/admin/")

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
