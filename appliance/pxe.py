"""Bootenvs and their iPXE scripts: what a booting node is told to load.

A bootenv is described by a YAML file under pxe/bootenvs (shipped) and may be overridden field by field
by its Bootenv row (operator-made bootenvs exist only as rows). Its template (pxe/templates/*.j2) is
rendered with the node's context into the iPXE script /boot/ipxe answers with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml

from appliance.errors import ConfigError, NotFound
from appliance.models import Bootenv

PXE_DIR = Path(__file__).resolve().parents[1] / "pxe"
DEFAULT_TEMPLATES = {"discovery": "discovery.ipxe.j2", "local": "local.ipxe.j2"}


@dataclass(frozen=True)
class BootenvSpec:
    name: str
    kind: str
    template: str
    kernel: str | None = None
    initrd: str | None = None
    kernel_args: str = ""
    data: dict[str, Any] = field(default_factory=dict)


class PxeLibrary:
    """The shipped bootenv files and templates of one pxe/ directory, read once."""

    def __init__(self, directory: Path = PXE_DIR) -> None:
        self.directory = directory
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(directory / "templates")),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
        )
        self.shipped: dict[str, dict[str, Any]] = {}
        for path in sorted((directory / "bootenvs").glob("*.yaml")):
            data = yaml.safe_load(path.read_text()) or {}
            if not isinstance(data, dict) or "name" not in data:
                raise ConfigError(f"{path}: a bootenv needs at least a name", field=str(path))
            self.shipped[str(data["name"])] = data

    def spec(self, name: str, row: Bootenv | None) -> BootenvSpec:
        """The bootenv `name`: its row's fields where set, else the shipped file's."""
        base = dict(self.shipped.get(name, {}))
        if row is None and not base:
            raise NotFound(f"bootenv '{name}' not found", field="bootenv")
        if row is not None:
            for key in ("kind", "template", "kernel", "initrd"):
                value = getattr(row, key)
                if value:
                    base[key] = value
            if row.kernel_args:
                base["kernel_args"] = row.kernel_args
            base["data"] = {**base.get("data", {}), **(row.data or {})}
        kind = str(base.get("kind", "installer"))
        template = base.get("template") or DEFAULT_TEMPLATES.get(kind) or f"{name}.ipxe.j2"
        return BootenvSpec(
            name=name,
            kind=kind,
            template=str(template),
            kernel=base.get("kernel"),
            initrd=base.get("initrd"),
            kernel_args=str(base.get("kernel_args") or ""),
            data=dict(base.get("data") or {}),
        )

    def render(self, template: str, **context: Any) -> str:
        try:
            return self.env.get_template(template).render(**context)
        except jinja2.TemplateNotFound as exc:
            raise NotFound(f"iPXE template '{template}' not found in {self.directory}/templates") from exc
