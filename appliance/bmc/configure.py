"""Give a node's BMC its address on the `bmc` network, a `kiln` user with a random password, check
that Kiln can log in with them out of band, and keep the credentials encrypted (DESIGN §6).

`configure_bmc()` does it all in the caller's session. The steps are also separate functions
(`plan_bmc_address`, `apply_bmc_plan`, `store_bmc_credentials`) so a long-running caller (the
annealer's jig) can hold no database transaction while it waits on a BMC.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import events, ipam
from appliance.bmc.base import BMCDriver, BMCTarget
from appliance.bmc.credentials import set_node_bmc
from appliance.bmc.probe import make_driver
from appliance.config import Settings
from appliance.errors import BMCError, NotFound
from appliance.models import Allocation, Network, Node, Range

log = logging.getLogger(__name__)

KILN_USER = "kiln"
# 16 characters: the longest password an IPMI 1.5 session accepts (2.0 allows 20)
PASSWORD_CHARS = 16


@dataclass(frozen=True)
class BmcPlan:
    """Where the BMC goes: its address on the bmc network, the mask and gateway of that network."""

    network: str
    address: str
    netmask: str
    gateway: str | None


def _bmc_range(session: Session, network_name: str) -> tuple[Network, Range]:
    network = session.scalar(select(Network).where(Network.name == network_name))
    if network is None:
        raise NotFound(
            f"no network '{network_name}' for BMC addresses: create it with a range of kind 'bmc'",
            field="bmc_network",
        )
    rng = session.scalar(
        select(Range).where(Range.network_id == network.id, Range.kind == "bmc").order_by(Range.first_int)
    )
    if rng is None:
        raise NotFound(
            f"network '{network_name}' has no range of kind 'bmc' to take BMC addresses from",
            field="bmc_network",
        )
    return network, rng


def plan_bmc_address(
    session: Session, node: Node, network_name: str = "bmc", *, actor: str = "system"
) -> BmcPlan:
    """The node's BMC address on `network_name`: the one it already holds there, else a new allocation
    from the network's `bmc` range (so running this twice keeps the same address)."""
    network, rng = _bmc_range(session, network_name)
    held = session.scalar(
        select(Allocation).where(
            Allocation.node_id == node.id, Allocation.network_id == network.id, Allocation.purpose == "bmc"
        )
    )
    if held is None:
        held = ipam.allocate(session, rng.id, node_id=node.id, hostname=f"{node.name}-bmc", actor=actor)
    net = ipaddress.ip_network(network.cidr)
    return BmcPlan(
        network=network.name, address=held.address, netmask=str(net.netmask), gateway=network.gateway
    )


def new_password() -> str:
    return secrets.token_urlsafe(PASSWORD_CHARS)[:PASSWORD_CHARS]


def apply_bmc_plan(
    driver: BMCDriver,
    plan: BmcPlan,
    *,
    username: str = KILN_USER,
    password: str | None = None,
    reachable_at: str | None = None,
) -> BMCTarget:
    """Set the BMC's static address and the Kiln user through `driver`, then log in as that user at the
    new address. Returns the verified target; raises BMCError when the new login fails.

    `reachable_at` is where Kiln reaches the BMC afterwards when that is not the new address itself
    (a BMC behind a port forward, or the lab's loopback simulators); by default it is the new address
    on the driver's port.
    """
    password = password or new_password()
    driver.set_user(username, password, privilege="administrator")
    driver.set_lan(source="static", address=plan.address, netmask=plan.netmask, gateway=plan.gateway)
    address = reachable_at or (f"{plan.address}:{driver.target.port}" if driver.target.port else plan.address)
    after = BMCTarget.parse(address, username, password, driver=driver.name, timeout=driver.target.timeout)
    if driver.name == "redfish":
        after = replace(after, scheme=driver.target.scheme, system_id=driver.target.system_id)
    check = make_driver(after)
    try:
        check.validate()
    except BMCError as exc:
        raise BMCError(
            f"BMC of {driver.target.describe()} was given {plan.address} and user '{username}', but "
            f"logging in as '{username}' at {after.describe()} failed: {exc.message}"
        ) from exc
    finally:
        check.close()
    log.info("bmc %s: configured at %s with user %s", driver.target.describe(), after.describe(), username)
    return after


def security_findings(target: BMCTarget) -> tuple[str, ...]:
    """What is weak about the BMC's transport (cipher suite 0, plain HTTP...); () when it cannot say."""
    check = make_driver(target)
    try:
        return check.security().findings
    except BMCError as exc:
        log.info("bmc %s: security check failed: %s", target.describe(), exc.message)
        return ()
    finally:
        check.close()


def store_bmc_credentials(
    session: Session,
    settings: Settings,
    node: Node,
    target: BMCTarget,
    *,
    findings: tuple[str, ...] = (),
    actor: str = "system",
) -> None:
    """Credentials encrypted on the node; a weak BMC is reported as a `node.bmc.weak` Event."""
    if target.driver == "redfish":
        address = target.base_url
        if target.system_id:
            address = f"{address}/redfish/v1/Systems/{target.system_id}"
    elif target.port:
        address = f"[{target.host}]:{target.port}" if ":" in target.host else f"{target.host}:{target.port}"
    else:
        address = target.host
    set_node_bmc(
        session,
        settings,
        node,
        address=address,
        username=target.username,
        password=target.password,
        driver=target.driver,
        actor=actor,
    )
    if findings:
        log.warning("bmc of %s is weak: %s", node.name, "; ".join(findings))
        events.record(
            session,
            "node.bmc.weak",
            subject_type="node",
            subject_id=node.id,
            actor=actor,
            message=f"BMC of {node.name}: " + "; ".join(findings),
            data={"findings": list(findings)},
        )


def configure_bmc(
    session: Session,
    node: Node,
    settings: Settings,
    driver: BMCDriver,
    *,
    network: str = "bmc",
    username: str = KILN_USER,
    reachable_at: str | None = None,
    actor: str = "system",
) -> dict[str, str]:
    """Allocate, set, create the user, verify the login, store the credentials encrypted.

    Returns the role's outputs (no password). Holds the caller's transaction while it talks to the
    BMC; callers that must not (the annealer) use the three steps with their own sessions.
    """
    plan = plan_bmc_address(session, node, network, actor=actor)
    target = apply_bmc_plan(driver, plan, username=username, reachable_at=reachable_at)
    findings = security_findings(target)
    store_bmc_credentials(session, settings, node, target, findings=findings, actor=actor)
    return {"bmc_address": plan.address, "bmc_username": username, "bmc_driver": driver.name}
