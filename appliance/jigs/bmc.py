"""`bmc`: out-of-band work through a node's BMC driver (DESIGN §6).

The interface lives here; the BMC issue registers the operations (`discover`, `configure`, `power`...)
that roles name in `jig_data.operation`. An operation that nobody registered is a clear, non-retryable
error rather than a silent success.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appliance.annealer.injection import Inputs
from appliance.errors import JigError
from appliance.jigs.base import Jig, NodeRoleContext, require_jig_data

Operation = Callable[[NodeRoleContext, Inputs], dict[str, Any]]


class OperationJig(Jig):
    """A jig whose work is one of a set of named operations registered by another part of Kiln."""

    operations: dict[str, Operation]

    def register(self, name: str, operation: Operation) -> None:
        self.operations[name] = operation

    def validate(self, noderole: NodeRoleContext, inputs: Inputs) -> None:
        operation = require_jig_data(noderole, "operation")
        if operation not in self.operations:
            raise JigError(f"{self.name} jig: no operation '{operation}' registered (role {noderole.role})")

    def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
        self.validate(noderole, inputs)
        return self.operations[noderole.jig_data["operation"]](noderole, inputs)


class BmcJig(OperationJig):
    name = "bmc"

    def __init__(self) -> None:
        self.operations = {}
