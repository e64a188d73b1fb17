"""The jig interface: how a node-role's work is done (DESIGN §4). Small on purpose, like Ironic's drivers.

A jig is chosen per role (never per node), gets exactly the role's declared inputs and returns its
outputs, which the annealer writes to the node-role's `wall`. A failure is a `JigError`; whether the
annealer may retry it is a property of the error, not of the jig.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from appliance.annealer.injection import Inputs
from appliance.errors import JigError


@dataclass(frozen=True)
class NodeRoleContext:
    """What a jig may know about the node-role it runs, besides its inputs."""

    id: int
    node_id: int
    node_name: str
    role: str
    deployment_id: int
    # role-level jig configuration from the barclamp (script body, playbook path...)
    jig_data: Mapping[str, Any] = field(default_factory=dict)
    # declared outputs of the role: {name: {"from": input, "default": ...}}
    outputs: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # how to reach the node out of band of the agent: node.hint["ssh"] = {host, port, user, key_file}
    access: Mapping[str, Any] = field(default_factory=dict)


class Jig(abc.ABC):
    """One way of doing a node-role's work."""

    name: ClassVar[str]
    # Runs in the annealer's own thread: no I/O, microseconds. Everything else goes to the worker pool.
    inline: ClassVar[bool] = False

    def validate(self, noderole: NodeRoleContext, inputs: Inputs) -> None:  # noqa: B027
        """Fail early (JigError) when the inputs or the role's jig_data cannot work."""

    @abc.abstractmethod
    def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
        """Do the work; return the outputs. Raise JigError on failure (with its log)."""


def declared_outputs(noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
    """Outputs computed from the declaration alone: `from: <input>` copies an input, else the default.

    A jig returns its log, if any, under the reserved key `_log`; the annealer moves it to the run log.
    """
    outputs: dict[str, Any] = {}
    for name, spec in noderole.outputs.items():
        value = inputs[spec["from"]] if "from" in spec else spec.get("default")
        if value is not None:  # nothing to publish: children keep their own lower layers
            outputs[name] = value
    return outputs


def require_jig_data(noderole: NodeRoleContext, key: str) -> Any:
    try:
        return noderole.jig_data[key]
    except KeyError:
        raise JigError(f"role {noderole.role}: jig_data.{key} is not set in its barclamp") from None
