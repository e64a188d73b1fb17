"""Every model of DESIGN §3, importable from one place."""

from appliance.models.agent import AGENT_TASK_KINDS, AGENT_TASK_STATES, AgentTask
from appliance.models.annealer import (
    AnnealerHeartbeat,
    Attribute,
    Barclamp,
    Deployment,
    DeploymentRole,
    HookCursor,
    NodeRole,
    NodeRoleEdge,
    Role,
    Run,
)
from appliance.models.audit import USER_ROLES, Delivery, Event, EventSink, Token, User
from appliance.models.base import Base, utcnow
from appliance.models.ipam import RANGE_KINDS, Allocation, Lease, Network, Range, Reservation, Router
from appliance.models.nodes import Bootenv, BootFetch, BootToken, Node, NodeMac

__all__ = [
    "AGENT_TASK_KINDS",
    "AGENT_TASK_STATES",
    "RANGE_KINDS",
    "USER_ROLES",
    "AgentTask",
    "Allocation",
    "AnnealerHeartbeat",
    "Attribute",
    "Barclamp",
    "Base",
    "BootFetch",
    "BootToken",
    "Bootenv",
    "Delivery",
    "Deployment",
    "DeploymentRole",
    "Event",
    "EventSink",
    "HookCursor",
    "Lease",
    "Network",
    "Node",
    "NodeMac",
    "NodeRole",
    "NodeRoleEdge",
    "Range",
    "Reservation",
    "Role",
    "Router",
    "Run",
    "Token",
    "User",
    "utcnow",
]
