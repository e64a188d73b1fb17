"""Deployments: bind roles to nodes, resolve parents, commit, propose, and re-anneal on change.

Node-roles in a proposed deployment appear `proposed`; commit moves them to `todo` (every parent
active) or `blocked`. A committed deployment (the `system` one always is) commits new bindings at once.
Parents come from `requires`: the same node (in this deployment, else in `system`), or any node of the
deployment for `cluster` roles. Everything here is set-based so binding 10,000 nodes is a handful of
statements, not 80,000 ORM round trips.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Table, and_, delete, exists, insert, select, text, update
from sqlalchemy.orm import Session, aliased

from appliance.annealer import states
from appliance.errors import Conflict, InvalidInput, NotFound
from appliance.events import record
from appliance.models import Deployment, DeploymentRole, Node, NodeRole, NodeRoleEdge, Role

nr_t = cast(Table, NodeRole.__table__)
edge_t = cast(Table, NodeRoleEdge.__table__)


def get_deployment(session: Session, key: str | int) -> Deployment:
    query = select(Deployment)
    if isinstance(key, int) or str(key).isdigit():
        query = query.where(Deployment.id == int(key))
    else:
        query = query.where(Deployment.name == key)
    found = session.scalar(query)
    if found is None:
        raise NotFound(f"deployment '{key}' not found")
    return found


def system_deployment(session: Session) -> Deployment:
    found = session.scalar(select(Deployment).where(Deployment.system.is_(True)))
    if found is None:
        raise NotFound("the system deployment is missing: run `kiln db upgrade`")
    return found


def roles_by_name(session: Session) -> dict[str, Role]:
    return {role.name: role for role in session.scalars(select(Role))}


def _role(roles: Mapping[str, Role], name: str) -> Role:
    if name not in roles:
        raise InvalidInput("role", f"unknown role '{name}'")
    return roles[name]


def _providers(roles: Mapping[str, Role], name: str) -> list[Role]:
    """The roles that satisfy a requirement on `name`: itself and any role that `provides` it."""
    found = [roles[name]] if name in roles else []
    found += [r for r in roles.values() if name in (r.provides or []) and r.name != name]
    return found


def create(session: Session, name: str, *, description: str = "", actor: str = "system") -> Deployment:
    if session.scalar(select(Deployment.id).where(Deployment.name == name)) is not None:
        raise Conflict(f"deployment '{name}' already exists", field="name")
    deployment = Deployment(name=name, description=description, state="proposed")
    session.add(deployment)
    session.flush()
    record(session, "deployment.create", subject_type="deployment", subject_id=deployment.id, actor=actor)
    return deployment


def add_role(
    session: Session,
    deployment: Deployment,
    role_name: str,
    *,
    data: Mapping[str, Any] | None = None,
    actor: str = "system",
) -> DeploymentRole:
    """Bind a role into a deployment with deployment-wide data (applied at the next commit)."""
    role = _role(roles_by_name(session), role_name)
    binding = _deployment_role(session, deployment.id, role.id)
    if data is not None:
        unknown = sorted(set(data) - set(role.inputs or {}))
        if unknown:
            raise InvalidInput("data", f"role {role.name} declares no input '{unknown[0]}'")
        binding.proposed_data = dict(data)
        if deployment.state == "committed":
            _apply_deployment_data(session, deployment, [binding], actor=actor)
    record(
        session,
        "deployment.add_role",
        subject_type="deployment",
        subject_id=deployment.id,
        actor=actor,
        data={"role": role.name},
    )
    return binding


def _deployment_role(session: Session, deployment_id: int, role_id: int) -> DeploymentRole:
    binding = session.scalar(
        select(DeploymentRole).where(
            DeploymentRole.deployment_id == deployment_id, DeploymentRole.role_id == role_id
        )
    )
    if binding is None:
        binding = DeploymentRole(
            deployment_id=deployment_id, role_id=role_id, proposed_data={}, committed_data={}
        )
        session.add(binding)
        session.flush()
    return binding


def _closure(roles: Mapping[str, Role], names: Iterable[str]) -> list[Role]:
    """The requested roles plus every role they require on the same node, lowest cohort first."""
    wanted: dict[str, Role] = {}
    stack = [_role(roles, n) for n in names]
    while stack:
        role = stack.pop()
        if role.name in wanted:
            continue
        wanted[role.name] = role
        for req in role.requires or []:
            providers = _providers(roles, req)
            if not providers:
                raise InvalidInput("role", f"role {role.name} requires unknown role '{req}'")
            if not any(p.cluster for p in providers) and not any(p.name in wanted for p in providers):
                stack.append(providers[0])
    return sorted(wanted.values(), key=lambda r: (r.cohort, r.name))


def add_nodes(
    session: Session,
    deployment: Deployment,
    node_ids: Sequence[int],
    role_names: Sequence[str],
    *,
    actor: str = "system",
) -> list[int]:
    """Bind roles (and the roles they require, implicitly) to nodes; return the new node-role ids."""
    if not node_ids:
        return []
    roles = roles_by_name(session)
    requested = {_role(roles, n).name for n in role_names}
    bound = _closure(roles, requested)
    system = system_deployment(session)
    found = set(session.scalars(select(Node.id).where(Node.id.in_(node_ids))))
    missing = sorted(set(node_ids) - found)
    if missing:
        raise NotFound(f"node {missing[0]} not found")
    _check_cluster_requirements(session, deployment, bound, roles)
    _check_conflicts(session, bound, node_ids, roles)
    existing = set(
        session.execute(
            select(NodeRole.node_id, NodeRole.role_id).where(
                NodeRole.node_id.in_(node_ids), NodeRole.deployment_id.in_({deployment.id, system.id})
            )
        )
    )
    mine = {
        (n, r)
        for n, r, d in session.execute(
            select(NodeRole.node_id, NodeRole.role_id, NodeRole.deployment_id).where(
                NodeRole.node_id.in_(node_ids), NodeRole.deployment_id == deployment.id
            )
        )
    }
    rows: list[dict[str, Any]] = []
    for role in bound:
        _deployment_role(session, deployment.id, role.id)
        # a pulled-in role already on the node (here or in `system`) is reused, not bound again
        have = mine if role.name in requested else existing
        rows += [
            {
                "node_id": n,
                "role_id": role.id,
                "deployment_id": deployment.id,
                "state": "proposed",
                "cohort": role.cohort,
                "user_data": {},
                "sys_data": {},
                "wall": {},
                "runlog": "",
            }
            for n in node_ids
            if (n, role.id) not in have
        ]
    new_ids: list[int] = []
    if rows:
        new_ids = list(session.scalars(insert(nr_t).returning(nr_t.c.id), rows))
        # fresh rows have no statistics: without them PostgreSQL joined node-roles to their parents with
        # a nested loop (measured: minutes for 10,000 nodes); with them, a hash join (a second)
        _refresh_statistics(session, len(rows))
    if not deployment.system:
        session.execute(update(Node).where(Node.id.in_(node_ids)).values(deployment_id=deployment.id))
    record(
        session,
        "deployment.add_nodes",
        subject_type="deployment",
        subject_id=deployment.id,
        actor=actor,
        data={"nodes": len(node_ids), "roles": sorted(r.name for r in bound), "node_roles": len(new_ids)},
    )
    gained = resolve_parents(session, deployment, roles)
    if deployment.state == "committed":
        _commit_node_roles(session, deployment.id, actor=actor)
        reanneal(session, sorted(set(gained) - set(new_ids)), actor=actor, reason="new parent")
    return new_ids


def _check_conflicts(
    session: Session, bound: Sequence[Role], node_ids: Sequence[int], roles: Mapping[str, Role]
) -> None:
    """Two roles that may not share a node (either one's `conflicts` names the other) are refused."""
    against: dict[str, set[str]] = {}
    for role in roles.values():
        for other in role.conflicts or []:
            against.setdefault(role.name, set()).add(other)
            against.setdefault(other, set()).add(role.name)
    names = {r.name for r in bound}
    for role in bound:
        clash = sorted(against.get(role.name, set()) & names)
        if clash:
            raise Conflict(
                f"roles {role.name} and {clash[0]} conflict: they may not share a node", field="roles"
            )
    wanted = {other for r in bound for other in against.get(r.name, set()) if other in roles}
    if not wanted:
        return
    found = session.execute(
        select(Node.name, Role.name)
        .join(NodeRole, NodeRole.node_id == Node.id)
        .join(Role, Role.id == NodeRole.role_id)
        .where(Node.id.in_(node_ids), Role.name.in_(wanted))
        .limit(1)
    ).first()
    if found is not None:
        node, existing = found
        name = next(r.name for r in bound if existing in against.get(r.name, set()))
        raise Conflict(f"role {name} conflicts with role {existing} already on node {node}", field="roles")


def _check_cluster_requirements(
    session: Session, deployment: Deployment, bound: Sequence[Role], roles: Mapping[str, Role]
) -> None:
    names = {r.name for r in bound}
    for role in bound:
        for req in role.requires or []:
            providers = [p for p in _providers(roles, req) if p.cluster]
            if not providers or any(p.name in names for p in providers):
                continue
            present = session.scalar(
                select(NodeRole.id)
                .where(
                    NodeRole.deployment_id == deployment.id, NodeRole.role_id.in_([p.id for p in providers])
                )
                .limit(1)
            )
            if present is None:
                raise Conflict(
                    f"role {role.name} requires cluster role {req}: bind {req} to a node of "
                    f"deployment {deployment.name} first",
                    field="roles",
                )


def resolve_parents(
    session: Session, deployment: Deployment, roles: Mapping[str, Role] | None = None
) -> list[int]:
    """Insert the missing parent edges of the deployment's node-roles; return children that gained one."""
    roles = roles if roles is not None else roles_by_name(session)
    by_id = {r.id: r for r in roles.values()}
    system = system_deployment(session)
    role_ids = set(
        session.scalars(select(NodeRole.role_id).where(NodeRole.deployment_id == deployment.id).distinct())
    )
    gained: list[int] = []
    child, parent = aliased(NodeRole), aliased(NodeRole)
    for role_id in sorted(role_ids):
        for req in by_id[role_id].requires or []:
            providers = _providers(roles, req)
            cluster = any(p.cluster for p in providers)
            provider_ids = [p.id for p in providers]
            scopes = [deployment.id] if cluster or deployment.system else [deployment.id, system.id]
            for scope in scopes:
                on = [parent.role_id.in_(provider_ids), parent.deployment_id == scope]
                if not cluster:
                    on.append(parent.node_id == child.node_id)
                conditions = [
                    child.deployment_id == deployment.id,
                    child.role_id == role_id,
                    ~exists().where(edge_t.c.parent_id == parent.id, edge_t.c.child_id == child.id),
                ]
                if scope != deployment.id:
                    # fall back to `system` only where this deployment has no such role on the node
                    local = aliased(NodeRole)
                    conditions.append(
                        ~exists().where(
                            local.node_id == child.node_id,
                            local.role_id.in_(provider_ids),
                            local.deployment_id == deployment.id,
                        )
                    )
                query = select(parent.id, child.id).join(parent, and_(*on)).where(*conditions)
                stmt = (
                    insert(edge_t).from_select(["parent_id", "child_id"], query).returning(edge_t.c.child_id)
                )
                gained += list(session.scalars(stmt))
    return sorted(set(gained))


def _commit_node_roles(session: Session, deployment_id: int, *, actor: str) -> None:
    mine = nr_t.c.deployment_id == deployment_id
    moved = states.transition(
        session,
        states.PROPOSED,
        states.TODO,
        where=and_(mine, ~states.not_ready()),
        actor=actor,
        reason="commit",
    )
    moved += states.transition(
        session, states.PROPOSED, states.BLOCKED, where=mine, actor=actor, reason="commit"
    )
    _refresh_statistics(session, len(moved))


def _refresh_statistics(session: Session, changed: int) -> None:
    """After a bulk change PostgreSQL plans with stale statistics until autovacuum catches up (a minute):
    refresh them so the annealer's first claims after a big commit do not pick nested loops."""
    if changed >= 1000 and session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE node_roles"))


def commit(session: Session, deployment: Deployment, *, actor: str = "system") -> None:
    """proposed -> committed: node-roles start (todo or blocked), changed deployment data re-anneals."""
    deployment.state = "committed"
    deployment.version += 1
    bindings = list(
        session.scalars(select(DeploymentRole).where(DeploymentRole.deployment_id == deployment.id))
    )
    _apply_deployment_data(session, deployment, bindings, actor=actor)
    _commit_node_roles(session, deployment.id, actor=actor)
    record(session, "deployment.commit", subject_type="deployment", subject_id=deployment.id, actor=actor)


def _apply_deployment_data(
    session: Session, deployment: Deployment, bindings: Sequence[DeploymentRole], *, actor: str
) -> None:
    changed = [b.role_id for b in bindings if (b.proposed_data or {}) != (b.committed_data or {})]
    for binding in bindings:
        binding.committed_data = dict(binding.proposed_data or {})
    session.flush()
    if changed:
        ids = session.scalars(
            select(NodeRole.id).where(NodeRole.deployment_id == deployment.id, NodeRole.role_id.in_(changed))
        ).all()
        reanneal(session, list(ids), actor=actor, reason="deployment data changed")


def propose(session: Session, deployment: Deployment, *, actor: str = "system") -> None:
    """committed -> proposed: edits allowed, nothing new starts; running work finishes."""
    if deployment.system:
        raise Conflict("the system deployment is always committed", field="deployment")
    deployment.state = "proposed"
    deployment.version += 1
    record(session, "deployment.propose", subject_type="deployment", subject_id=deployment.id, actor=actor)


def remove_node_roles(session: Session, ids: Sequence[int], *, actor: str = "system") -> None:
    """Unbind node-roles; their children lose a parent and re-anneal (emergent services shrink)."""
    if not ids:
        return
    children = set(session.scalars(select(edge_t.c.child_id).where(edge_t.c.parent_id.in_(ids))))
    session.execute(delete(edge_t).where(edge_t.c.parent_id.in_(ids) | edge_t.c.child_id.in_(ids)))
    session.execute(delete(nr_t).where(nr_t.c.id.in_(ids)))
    for nr_id in ids:
        record(session, "noderole.delete", subject_type="node_role", subject_id=nr_id, actor=actor)
    reanneal(session, sorted(children - set(ids)), actor=actor, reason="parent removed")


def remove_node(session: Session, deployment: Deployment, node_id: int, *, actor: str = "system") -> None:
    ids = session.scalars(
        select(NodeRole.id).where(NodeRole.deployment_id == deployment.id, NodeRole.node_id == node_id)
    ).all()
    remove_node_roles(session, list(ids), actor=actor)


def descendants(session: Session, ids: Sequence[int]) -> list[int]:
    if not ids:
        return []
    seed = (
        select(edge_t.c.child_id.label("id"))
        .where(edge_t.c.parent_id.in_(ids))
        .cte("descendants", recursive=True)
    )
    walk = seed.union(select(edge_t.c.child_id).join(seed, edge_t.c.parent_id == seed.c.id))
    return sorted(set(session.scalars(select(walk.c.id))) - set(ids))


def reanneal(session: Session, ids: Sequence[int], *, actor: str = "system", reason: str = "") -> None:
    """An input of these node-roles changed: they go back to todo (or blocked), their descendants to blocked."""
    if not ids:
        return
    below = descendants(session, ids)
    # destructive roles (OpenCrowbar: non-idempotent) run once: once active they are never re-run
    keep = set(
        session.scalars(
            select(NodeRole.id)
            .join(Role, Role.id == NodeRole.role_id)
            .where(
                NodeRole.id.in_([*ids, *below]), Role.destructive.is_(True), NodeRole.state == states.ACTIVE
            )
        )
    )
    ids, below = [i for i in ids if i not in keep], [i for i in below if i not in keep]
    for from_state in (states.ACTIVE, states.ERROR, states.TRANSITION, states.TODO):
        states.transition(
            session,
            from_state,
            states.BLOCKED,
            ids=below,
            actor=actor,
            reason=reason or "parent re-annealing",
        )
    ready = ~states.not_ready()
    for from_state in (states.ACTIVE, states.ERROR, states.TRANSITION, states.BLOCKED):
        states.transition(
            session,
            from_state,
            states.TODO,
            ids=list(ids),
            where=ready,
            actor=actor,
            reason=reason,
            values={"attempts": 0, "retry_at": None},
        )
    for from_state in (states.ACTIVE, states.ERROR, states.TRANSITION, states.TODO):
        states.transition(
            session,
            from_state,
            states.BLOCKED,
            ids=list(ids),
            where=states.not_ready(),
            actor=actor,
            reason=reason,
        )


def set_user_data(
    session: Session, node_role_id: int, data: Mapping[str, Any], *, actor: str = "system"
) -> None:
    node_role = session.get(NodeRole, node_role_id)
    if node_role is None:
        raise NotFound(f"node-role {node_role_id} not found")
    role = session.get(Role, node_role.role_id)
    assert role is not None
    unknown = sorted(set(data) - set(role.inputs or {}))
    if unknown:
        raise InvalidInput("data", f"role {role.name} declares no input '{unknown[0]}'")
    if dict(data) == (node_role.user_data or {}):
        return
    session.execute(update(nr_t).where(nr_t.c.id == node_role_id).values(user_data=dict(data)))
    record(session, "noderole.user_data", subject_type="node_role", subject_id=node_role_id, actor=actor)
    reanneal(session, [node_role_id], actor=actor, reason="user data changed")


def set_discovery(
    session: Session, node_id: int, data: Mapping[str, Any], *, actor: str = "system"
) -> list[int]:
    """New discovery data for a node: node-roles whose declared inputs changed re-anneal."""
    node = session.get(Node, node_id)
    if node is None:
        raise NotFound(f"node {node_id} not found")
    old = node.discovery or {}
    changed = {k for k in set(old) | set(data) if old.get(k) != data.get(k)}
    node.discovery = dict(data)
    session.flush()
    record(
        session,
        "node.discovery",
        subject_type="node",
        subject_id=node_id,
        actor=actor,
        data={"changed": sorted(changed)},
    )
    affected = [
        nr_id
        for nr_id, inputs in session.execute(
            select(NodeRole.id, Role.inputs)
            .join(Role, Role.id == NodeRole.role_id)
            .where(NodeRole.node_id == node_id)
        )
        if changed & set(inputs or {})
    ]
    reanneal(session, affected, actor=actor, reason="discovery data changed")
    return affected


def retry(session: Session, node_role_id: int, *, actor: str = "system") -> str:
    """error -> todo (or blocked when a parent is not active); returns the new state."""
    state = session.scalar(select(NodeRole.state).where(NodeRole.id == node_role_id))
    if state is None:
        raise NotFound(f"node-role {node_role_id} not found")
    if state != states.ERROR:
        raise Conflict(f"node-role {node_role_id} is {state}, only an error can be retried", field="state")
    values = {"attempts": 0, "retry_at": None}
    moved = states.transition(
        session,
        states.ERROR,
        states.TODO,
        ids=[node_role_id],
        where=~states.not_ready(),
        values=values,
        actor=actor,
        reason="retry",
    )
    if moved:
        return states.TODO
    states.transition_one(session, node_role_id, states.BLOCKED, values=values, actor=actor, reason="retry")
    return states.BLOCKED


def join_system(session: Session, node_id: int, *, actor: str = "system") -> list[int]:
    """A discovered node joins `system` with every role flagged `discovery`."""
    names = list(session.scalars(select(Role.name).where(Role.discovery.is_(True))))
    return add_nodes(session, system_deployment(session), [node_id], names, actor=actor)
