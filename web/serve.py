"""The `web` service entry point (`kiln serve`, kiln-web): the WSGI app in-process until `stop` is set.

werkzeug's threaded server rather than gunicorn here: `kiln serve` runs every service in one process,
and gunicorn's arbiter wants to own signals and fork workers. The kiln-web unit may run gunicorn on
`web.wsgi:app` instead; both serve the same app.
"""

from __future__ import annotations

import logging
import threading

from werkzeug.serving import make_server

from appliance.config import Settings
from appliance.db import Database
from appliance.errors import ConfigError
from web.app import create_app
from web.observability import install_log_context

log = logging.getLogger(__name__)


def parse_bind(bind: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or a bare host (then `default_port`)."""
    host, port = bind, default_port
    if bind.startswith("["):
        host, _, rest = bind[1:].partition("]")
        if rest.startswith(":"):
            port = _port(rest[1:], bind)
    elif bind.count(":") == 1:
        host, text = bind.split(":")
        port = _port(text, bind)
    return host or "0.0.0.0", port


def _port(text: str, bind: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ConfigError(f"bad configuration for 'web_bind': '{bind}' has no valid port", field="web_bind")
    return int(text)


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    install_log_context(settings.log_level)
    host, port = parse_bind(settings.web_bind, settings.web_port)
    server = make_server(host, port, create_app(settings, db), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="kiln-web", daemon=True)
    thread.start()
    log.info("web listening on http://%s:%d", host, server.port)
    try:
        stop.wait()
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
        log.info("web stopped")
