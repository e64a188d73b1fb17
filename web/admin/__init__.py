"""Admin pages under /admin/. Filled by the web-admin work; `/` sends browsers here."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("admin", __name__, url_prefix="/admin")
