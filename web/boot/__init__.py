"""Node-facing boot endpoints (/boot/...): iPXE scripts, kernels, answer files. Filled by the boot work."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("boot", __name__, url_prefix="/boot")
