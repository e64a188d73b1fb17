"""The `bmc` jig's operations for the core barclamp's `bmc-discover` and `bmc-configure` roles.

The annealer process calls `register_bmc_operations(db, settings)` once at start; the jig then runs
`discover` / `configure` (named by the roles' `jig_data.operation`). No database transaction is held
while a BMC or the node's agent is being waited on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from appliance import agent_tasks
from appliance.bmc.base import BMCTarget
from appliance.bmc.configure import (
    KILN_USER,
    BmcPlan,
    apply_bmc_plan,
    new_password,
    plan_bmc_address,
    security_findings,
    store_bmc_credentials,
)
from appliance.bmc.credentials import target_for_node
from appliance.bmc.probe import DriverCache, make_driver, resolve
from appliance.config import Settings
from appliance.db import Database
from appliance.errors import BMCError, JigError, KilnError
from appliance.jigs.base import NodeRoleContext
from appliance.models import AgentTask, Node

log = logging.getLogger(__name__)

INBAND_TIMEOUT = 600.0


def _node(db: Database, node_id: int) -> Node:
    with db.read_session() as session:
        node = session.get(Node, node_id)
        if node is None:
            raise JigError(f"node {node_id} is gone")
        return node


def _jig_error(exc: KilnError) -> JigError:
    return JigError(exc.message, retryable=exc.retryable)


def discover(
    db: Database, settings: Settings, ctx: NodeRoleContext, inputs: Mapping[str, Any]
) -> dict[str, Any]:
    """bmc_present/bmc_driver from what Kiln can see: a BMC reachable out of band with stored
    credentials (probed: Redfish first), else the in-band facts the discovery image reported."""
    node = _node(db, ctx.node_id)
    if node.bmc_address and node.bmc_username and node.bmc_password_enc is not None:
        try:
            return {"bmc_present": True, "bmc_driver": resolve(target_for_node(node, settings)).driver}
        except BMCError as exc:
            log.info("bmc-discover %s: out-of-band probe failed: %s", node.name, exc.message)
    inband = (node.inventory or {}).get("bmc") or {}
    if inband.get("present"):
        return {"bmc_present": True, "bmc_driver": "ipmi"}  # /dev/ipmi0 in the discovery image
    return {"bmc_present": False, "bmc_driver": ""}


def _wait_for_task(db: Database, task_id: int, timeout: float) -> AgentTask:
    deadline = time.monotonic() + timeout
    while True:
        with db.read_session() as session:
            task = session.get(AgentTask, task_id)
            if task is None:
                raise JigError(f"agent task {task_id} vanished")
            if task.state in ("ok", "error"):
                return task
        if time.monotonic() > deadline:
            raise JigError(
                f"the node's agent did not finish BMC task {task_id} in {timeout:.0f}s", retryable=True
            )
        time.sleep(1.0)  # polling the database for the agent's report, with a deadline


def _inband_script(plan: BmcPlan, username: str, password: str, channel: int = 1, uid: int = 2) -> str:
    """ipmitool on the node's /dev/ipmi0: static address, then the Kiln user in slot `uid` (the first
    non-anonymous slot, usually the factory admin, which Kiln takes over). Sent as a script task, so
    the exact sequence, its `set -e` and the password scrubbing afterwards live here; the agent's own
    `bmc` task kind once ran `set -e` in the agent's shell and ended the agent (fixed in the agent
    since), which is what the e2e test first hit.
    """
    gateway = f"ipmitool lan set {channel} defgw ipaddr {plan.gateway}\n" if plan.gateway else ""
    return (
        "set -e\n"
        f"ipmitool lan set {channel} ipsrc static\n"
        f"ipmitool lan set {channel} ipaddr {plan.address}\n"
        f"ipmitool lan set {channel} netmask {plan.netmask}\n"
        f"{gateway}"
        f"ipmitool user set name {uid} {username}\n"
        f"ipmitool user set password {uid} '{password}'\n"
        f"ipmitool channel setaccess {channel} {uid} link=on ipmi=on callin=on privilege=4\n"
        f"ipmitool user enable {uid}\n"
        f"ipmitool lan set {channel} access on\n"
        f"ipmitool lan print {channel}\n"
    )


def _forget_task_password(db: Database, task_id: int, password: str) -> None:
    # the agent needed the password in clear; once it has reported, the row must not keep it
    with db.session() as session:
        task = session.get(AgentTask, task_id)
        if task is not None:
            payload = dict(task.payload or {})
            payload["script"] = str(payload.get("script", "")).replace(password, "***")
            task.payload = payload


def configure(
    db: Database,
    settings: Settings,
    ctx: NodeRoleContext,
    inputs: Mapping[str, Any],
    *,
    inband_timeout: float = INBAND_TIMEOUT,
) -> dict[str, Any]:
    """Address from the bmc network, a `kiln` user with a random password, a verified out-of-band
    login, credentials stored encrypted. Out of band when Kiln can already log in to the BMC, else
    in band through the discovery agent (ipmitool on /dev/ipmi0)."""
    network = str(inputs.get("bmc_network") or "bmc")
    username = str(inputs.get("bmc_username") or KILN_USER)
    try:
        with db.session() as session:
            node = session.get(Node, ctx.node_id)
            if node is None:
                raise JigError(f"node {ctx.node_id} is gone")
            plan = plan_bmc_address(session, node, network, actor=f"noderole:{ctx.id}")
        node = _node(db, ctx.node_id)
        if node.bmc_address and node.bmc_username and node.bmc_password_enc is not None:
            cache = DriverCache()
            try:
                driver = cache.get(target_for_node(node, settings))
                target = apply_bmc_plan(driver, plan, username=username)
            finally:
                cache.close()
        elif ((node.inventory or {}).get("bmc") or {}).get("present"):
            target = configure_inband(
                db, ctx.node_id, plan, username, timeout=inband_timeout, node_role_id=ctx.id
            )
        else:
            raise JigError(
                f"node {node.name}: no BMC reachable out of band and discovery found none in band; "
                "set its BMC address and credentials (kiln bmc set) or check the BMC is enabled"
            )
        findings = security_findings(target)
        with db.session() as session:
            node = session.get(Node, ctx.node_id)
            if node is None:
                raise JigError(f"node {ctx.node_id} is gone")
            store_bmc_credentials(
                session, settings, node, target, findings=findings, actor=f"noderole:{ctx.id}"
            )
    except JigError:
        raise
    except KilnError as exc:
        raise _jig_error(exc) from exc
    return {"bmc_address": plan.address}


def configure_inband(
    db: Database,
    node_id: int,
    plan: BmcPlan,
    username: str = KILN_USER,
    *,
    timeout: float = INBAND_TIMEOUT,
    node_role_id: int | None = None,
) -> BMCTarget:
    """Have the node's discovery agent set the BMC's address and the Kiln user through /dev/ipmi0
    (for a BMC Kiln cannot reach yet), then prove it with an out-of-band login. Returns the target."""
    actor = f"noderole:{node_role_id}" if node_role_id else "system"
    password = new_password()
    with db.session() as session:
        task = agent_tasks.queue(
            session,
            node_id,
            "script",
            {"script": _inband_script(plan, username, password)},
            node_role_id=node_role_id,
            timeout_s=int(timeout),
            actor=actor,
        )
        task_id = task.id
    try:
        done = _wait_for_task(db, task_id, timeout)
    finally:
        _forget_task_password(db, task_id, password)
    if done.state != "ok":
        raise JigError(f"in-band BMC configuration failed (exit {done.exit_code})", log=done.output)
    target = BMCTarget.parse(plan.address, username, password, driver="ipmi")
    check = make_driver(target)  # the proof: an out-of-band login with what the agent set
    try:
        check.validate()
    finally:
        check.close()
    return target


def register_bmc_operations(db: Database, settings: Settings) -> None:
    """Bind `discover` and `configure` to this process's database and settings on the `bmc` jig."""
    from appliance.jigs import REGISTRY
    from appliance.jigs.bmc import OperationJig

    jig = REGISTRY["bmc"]
    assert isinstance(jig, OperationJig)
    jig.register("discover", lambda ctx, inputs: discover(db, settings, ctx, inputs))
    jig.register("configure", lambda ctx, inputs: configure(db, settings, ctx, inputs))
