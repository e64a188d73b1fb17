"""gunicorn settings for the kiln-web unit (installed as /etc/kiln/gunicorn.conf.py).

The bind address comes from kiln.toml (`[web] bind`), so the appliance has one configuration. One
worker process with threads: Prometheus counters live in that process, so /metrics is whole without
prometheus_client's multiprocess mode, and SQLite sees one writer process for the web.
"""

from appliance.config import load_settings

_settings = load_settings()

bind = [_settings.web_bind]
workers = 1
worker_class = "gthread"
threads = 16
# iPXE and installers fetch kernels and images through /boot: allow slow links
timeout = 120
graceful_timeout = 20
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level.lower()
proc_name = "kiln-web"
