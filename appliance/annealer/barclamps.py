"""Barclamps: YAML packages of roles, validated at load time with file, line and reason.

A barclamp is a directory holding `barclamp.yaml` (`barclamp: {name, version, description}` and
optionally `roles:`) and any number of other `*.yaml` files with a `roles:` list. Roles reference each
other by name through `requires`; an unknown name or a dependency cycle refuses the whole load, so a
bad barclamp never reaches the database half-written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.errors import KilnError
from appliance.events import record
from appliance.models import Barclamp, Role

log = logging.getLogger(__name__)

CORE_DIR = Path(__file__).resolve().parent.parent / "barclamps" / "core"

FLAGS = ("discovery", "implicit", "milestone", "cluster", "destructive", "concurrent")
ROLE_KEYS = frozenset(
    {"name", "description", "jig", "requires", "conflicts", "provides", "inputs", "outputs"}
    | {"templates", "jig_data", "hooks", *FLAGS}
)
HOOKS_KEY = "kiln_hooks"  # where a role's hook targets live in jig_data, for annealers in other processes
INPUT_KEYS = frozenset({"schema", "default", "from", "aggregate", "description"})
OUTPUT_KEYS = frozenset({"schema", "default", "from", "description"})
SCHEMA_TYPES: Mapping[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list,),
    "object": (dict,),
}
ROLE_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class BarclampError(KilnError):
    """A barclamp file is refused: the message is `file:line: reason`."""

    status = 400

    def __init__(self, file: str | Path, line: int, reason: str) -> None:
        super().__init__(f"{file}:{line}: {reason}", field=f"{file}:{line}")
        self.file = str(file)
        self.line = line
        self.reason = reason


class _Map(dict[str, Any]):
    """A YAML mapping that remembers the line of itself and of each key."""

    line: int = 0
    key_lines: dict[str, int]


class _Seq(list[Any]):
    line: int = 0
    item_lines: list[int]


@dataclass(frozen=True)
class RoleSpec:
    name: str
    barclamp: str
    file: str
    line: int
    description: str = ""
    jig: str = "noop"
    requires: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    inputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    templates: Mapping[str, Any] = field(default_factory=dict)
    jig_data: Mapping[str, Any] = field(default_factory=dict)
    flags: Mapping[str, bool] = field(default_factory=dict)
    require_lines: tuple[int, ...] = ()
    hooks: Mapping[str, str] = field(default_factory=dict)


@dataclass
class BarclampSpec:
    name: str
    version: str
    description: str
    source: str
    roles: list[RoleSpec] = field(default_factory=list)


def _to_python(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        mapping = _Map()
        mapping.line = node.start_mark.line + 1
        mapping.key_lines = {}
        for key_node, value_node in node.value:
            key = _to_python(loader, key_node)
            if not isinstance(key, str):
                raise BarclampError(loader.name, key_node.start_mark.line + 1, "keys must be strings")
            if key in mapping:
                raise BarclampError(loader.name, key_node.start_mark.line + 1, f"duplicate key '{key}'")
            mapping[key] = _to_python(loader, value_node)
            mapping.key_lines[key] = key_node.start_mark.line + 1
        return mapping
    if isinstance(node, yaml.SequenceNode):
        seq = _Seq(_to_python(loader, item) for item in node.value)
        seq.line = node.start_mark.line + 1
        seq.item_lines = [item.start_mark.line + 1 for item in node.value]
        return seq
    return loader.construct_object(node, deep=True)


def parse_file(path: Path) -> Any:
    """The file's YAML with line numbers kept; a syntax error becomes a BarclampError at its line."""
    text = path.read_text()
    loader = yaml.SafeLoader(text)
    loader.name = str(path)
    try:
        node = loader.get_single_node()
        return None if node is None else _to_python(loader, node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise BarclampError(path, line, f"not valid YAML: {exc.problem or exc}") from exc
    finally:
        loader.dispose()


def _line(mapping: Any, key: str | None = None) -> int:
    if isinstance(mapping, _Map):
        if key is not None and key in mapping.key_lines:
            return mapping.key_lines[key]
        return mapping.line
    return getattr(mapping, "line", 1)


def _names(path: Path, role: _Map, key: str) -> tuple[tuple[str, ...], tuple[int, ...]]:
    value = role.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BarclampError(path, _line(role, key), f"'{key}' must be a list of role names")
    lines = tuple(value.item_lines) if isinstance(value, _Seq) else (_line(role, key),) * len(value)
    return tuple(value), lines


def _check_value(path: Path, line: int, what: str, schema: Mapping[str, Any], value: Any) -> None:
    kind = schema.get("type")
    if kind is None or value is None:
        return
    types = SCHEMA_TYPES[kind]
    if not isinstance(value, types) or (kind in ("integer", "number") and isinstance(value, bool)):
        raise BarclampError(path, line, f"{what}: default {value!r} is not of type {kind}")


def _attr_specs(path: Path, role: _Map, key: str, allowed: frozenset[str]) -> dict[str, dict[str, Any]]:
    raw = role.get(key) or {}
    if not isinstance(raw, dict):
        raise BarclampError(path, _line(role, key), f"'{key}' must be a mapping of attribute name to spec")
    specs: dict[str, dict[str, Any]] = {}
    for name, spec in raw.items():
        line = _line(raw, name)
        spec = spec if spec is not None else {}
        if not isinstance(spec, dict):
            raise BarclampError(path, line, f"{key}.{name} must be a mapping")
        unknown = sorted(set(spec) - allowed)
        if unknown:
            raise BarclampError(path, _line(spec, unknown[0]), f"{key}.{name}: unknown key '{unknown[0]}'")
        schema = spec.get("schema") or {}
        if not isinstance(schema, dict) or schema.get("type", "string") not in SCHEMA_TYPES:
            raise BarclampError(
                path,
                _line(spec, "schema"),
                f"{key}.{name}: schema type must be one of {sorted(SCHEMA_TYPES)}",
            )
        if spec.get("aggregate") not in (None, "list"):
            raise BarclampError(path, _line(spec, "aggregate"), f"{key}.{name}: aggregate must be 'list'")
        _check_value(path, _line(spec, "default"), f"{key}.{name}", schema, spec.get("default"))
        specs[str(name)] = {k: _plain(v) for k, v in spec.items()}
    return specs


def _plain(value: Any) -> Any:
    """Strip the line-number subclasses so the value can go to JSON columns."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _role(path: Path, barclamp: str, raw: Any, jigs: Iterable[str]) -> RoleSpec:
    if not isinstance(raw, _Map):
        raise BarclampError(path, _line(raw), "each role must be a mapping")
    unknown = sorted(set(raw) - ROLE_KEYS)
    if unknown:
        raise BarclampError(path, _line(raw, unknown[0]), f"unknown role key '{unknown[0]}'")
    name = raw.get("name")
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise BarclampError(path, _line(raw, "name"), "role 'name' must match [a-z0-9][a-z0-9_-]*")
    jig = raw.get("jig", "noop")
    if jig not in set(jigs):
        raise BarclampError(path, _line(raw, "jig"), f"role {name}: unknown jig '{jig}'")
    for flag in FLAGS:
        if not isinstance(raw.get(flag, False), bool):
            raise BarclampError(path, _line(raw, flag), f"role {name}: '{flag}' must be true or false")
    for key in ("templates", "jig_data"):
        if not isinstance(raw.get(key) or {}, dict):
            raise BarclampError(path, _line(raw, key), f"role {name}: '{key}' must be a mapping")
    hook_targets = _hooks(path, name, raw)
    requires, require_lines = _names(path, raw, "requires")
    if name in requires:
        raise BarclampError(path, _line(raw, "requires"), f"role {name} requires itself")
    return RoleSpec(
        name=name,
        barclamp=barclamp,
        file=str(path),
        line=raw.line,
        description=str(raw.get("description", "")),
        jig=jig,
        requires=requires,
        require_lines=require_lines,
        conflicts=_names(path, raw, "conflicts")[0],
        provides=_names(path, raw, "provides")[0],
        inputs=_attr_specs(path, raw, "inputs", INPUT_KEYS),
        outputs=_attr_specs(path, raw, "outputs", OUTPUT_KEYS),
        templates=_plain(raw.get("templates") or {}),
        jig_data=_plain(raw.get("jig_data") or {}),
        flags={flag: bool(raw.get(flag, False)) for flag in FLAGS},
        hooks=hook_targets,
    )


def _hooks(path: Path, name: str, raw: _Map) -> dict[str, str]:
    """`hooks: {on_active: "pkg.mod:func"}`: each event known and each target importable, or refused."""
    from appliance.annealer.hooks import EVENTS, resolve

    value = raw.get("hooks") or {}
    if not isinstance(value, dict):
        raise BarclampError(path, _line(raw, "hooks"), f"role {name}: 'hooks' must be a mapping")
    for event, target in value.items():
        line = _line(value, event)
        if event not in EVENTS:
            raise BarclampError(path, line, f"role {name}: unknown hook '{event}' (one of {sorted(EVENTS)})")
        if not isinstance(target, str):
            raise BarclampError(path, line, f"role {name}: hook {event} must be 'package.module:function'")
        try:
            resolve(target)
        except ValueError as exc:
            raise BarclampError(path, line, f"role {name}: hook {event}: {exc}") from exc
    return {str(k): str(v) for k, v in value.items()}


def _roles_of(path: Path, data: Any, barclamp: str, jigs: Iterable[str]) -> list[RoleSpec]:
    roles = data.get("roles") or []
    if not isinstance(roles, list):
        raise BarclampError(path, _line(data, "roles"), "'roles' must be a list")
    return [_role(path, barclamp, raw, jigs) for raw in roles]


def read_barclamp(directory: Path, jigs: Iterable[str]) -> BarclampSpec:
    """Parse one barclamp directory (no cross-role checks: see validate_graph)."""
    jig_names = list(jigs)
    head_path = directory / "barclamp.yaml"
    if not head_path.is_file():
        raise BarclampError(head_path, 1, "missing barclamp.yaml")
    head = parse_file(head_path)
    if not isinstance(head, _Map) or not isinstance(head.get("barclamp"), _Map):
        raise BarclampError(head_path, _line(head), "needs a 'barclamp:' mapping with name and version")
    meta = head["barclamp"]
    name = meta.get("name")
    if not isinstance(name, str) or not ROLE_NAME.match(name):
        raise BarclampError(head_path, _line(meta, "name"), "barclamp 'name' must match [a-z0-9][a-z0-9_-]*")
    spec = BarclampSpec(
        name=name,
        version=str(meta.get("version", "0")),
        description=str(meta.get("description", "")),
        source=str(directory),
    )
    spec.roles.extend(_roles_of(head_path, head, name, jig_names))
    for path in sorted(directory.glob("*.yaml")):
        if path.name == "barclamp.yaml":
            continue
        data = parse_file(path)
        if data is None:
            continue
        if not isinstance(data, _Map):
            raise BarclampError(path, _line(data), "a role file must be a mapping with 'roles:'")
        extra = sorted(set(data) - {"roles"})
        if extra:
            raise BarclampError(path, _line(data, extra[0]), f"unknown top-level key '{extra[0]}'")
        spec.roles.extend(_roles_of(path, data, name, jig_names))
    return spec


def read_dir(directory: Path, jigs: Iterable[str]) -> list[BarclampSpec]:
    """A barclamp directory, or a directory whose subdirectories are barclamps."""
    directory = Path(directory)
    if (directory / "barclamp.yaml").is_file():
        return [read_barclamp(directory, jigs)]
    found = [
        read_barclamp(sub, jigs) for sub in sorted(directory.iterdir()) if (sub / "barclamp.yaml").is_file()
    ]
    if not found:
        raise BarclampError(directory, 0, "no barclamp.yaml here or in any subdirectory")
    return found


def validate_graph(
    specs: Iterable[BarclampSpec], existing: Mapping[str, tuple[tuple[str, ...], int]] | None = None
) -> dict[str, int]:
    """Refuse duplicate names, unknown requires and cycles; return every new role's cohort.

    `existing` maps role names already in the database to (requires, cohort); new specs replace them.
    """
    roles: dict[str, RoleSpec] = {}
    for bc in specs:
        for role in bc.roles:
            if role.name in roles:
                first = roles[role.name]
                raise BarclampError(
                    role.file, role.line, f"role {role.name} already defined at {first.file}:{first.line}"
                )
            roles[role.name] = role
    old = {k: v for k, v in (existing or {}).items() if k not in roles}
    providers: dict[str, str] = {}
    for role in roles.values():
        for provided in role.provides:
            providers.setdefault(provided, role.name)
    known = set(roles) | set(old)
    for role in roles.values():
        for req, line in zip(role.requires, role.require_lines, strict=True):
            if req not in known and req not in providers:
                raise BarclampError(role.file, line, f"role {role.name} requires unknown role '{req}'")

    def requires_of(name: str) -> tuple[str, ...]:
        reqs = roles[name].requires if name in roles else old[name][0] if name in old else ()
        return tuple(r if r in known else providers[r] for r in reqs)

    cohorts: dict[str, int] = {}
    visiting: list[str] = []

    def visit(name: str) -> int:
        if name in cohorts:
            return cohorts[name]
        if name in visiting:
            spec = roles.get(visiting[-1])
            cycle = " -> ".join([*visiting[visiting.index(name) :], name])
            if spec is None:  # the cycle closes through a role already in the database
                spec = next(roles[n] for n in visiting if n in roles)
            line = spec.require_lines[spec.requires.index(name)] if name in spec.requires else spec.line
            raise BarclampError(spec.file, line, "dependency cycle: " + cycle)
        visiting.append(name)
        cohort = 1 + max((visit(req) for req in requires_of(name)), default=-1)
        visiting.pop()
        cohorts[name] = cohort
        return cohort

    for name in roles:
        visit(name)
    return {name: cohorts[name] for name in roles}


def load(session: Session, directory: Path, *, actor: str = "system") -> list[BarclampSpec]:
    """Validate every barclamp under `directory` and write its roles; nothing is written on error."""
    from appliance.jigs import REGISTRY

    specs = read_dir(directory, REGISTRY)
    existing = {role.name: (tuple(role.requires), role.cohort) for role in session.scalars(select(Role))}
    cohorts = validate_graph(specs, existing)
    for bc in specs:
        barclamp = session.scalar(select(Barclamp).where(Barclamp.name == bc.name))
        if barclamp is None:
            barclamp = Barclamp(name=bc.name)
            session.add(barclamp)
        barclamp.version, barclamp.description, barclamp.source = bc.version, bc.description, bc.source
        session.flush()
        for spec in bc.roles:
            _store_role(session, spec, barclamp.id, cohorts[spec.name])
        record(
            session,
            "barclamp.load",
            subject_type="barclamp",
            subject_id=barclamp.id,
            actor=actor,
            message=f"{bc.name} {bc.version}: {len(bc.roles)} roles",
            data={"roles": [r.name for r in bc.roles], "source": bc.source},
        )
        log.info("barclamp %s %s loaded: %d roles", bc.name, bc.version, len(bc.roles))
    return specs


def _store_role(session: Session, spec: RoleSpec, barclamp_id: int, cohort: int) -> None:
    role = session.scalar(select(Role).where(Role.name == spec.name))
    if role is None:
        role = Role(name=spec.name)
        session.add(role)
    role.barclamp_id = barclamp_id
    role.description = spec.description
    role.jig = spec.jig
    role.requires = list(spec.requires)
    role.conflicts = list(spec.conflicts)
    role.provides = list(spec.provides)
    role.inputs = dict(spec.inputs)
    role.outputs = dict(spec.outputs)
    role.templates = dict(spec.templates)
    role.jig_data = {**spec.jig_data, "barclamp_dir": str(Path(spec.file).parent)}
    if spec.hooks:
        role.jig_data[HOOKS_KEY] = dict(spec.hooks)
    for flag, value in spec.flags.items():
        setattr(role, flag, value)
    role.cohort = cohort


def load_core(session: Session) -> list[BarclampSpec]:
    """The core barclamp shipped with Kiln (kiln-discovered ... ready)."""
    return load(session, CORE_DIR)
