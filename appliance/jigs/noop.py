"""`noop`: does nothing but publish the outputs its declaration computes. Milestones and tests use it."""

from __future__ import annotations

import time
from typing import Any

from appliance.annealer.injection import Inputs
from appliance.errors import JigError
from appliance.jigs.base import Jig, NodeRoleContext, declared_outputs


class NoopJig(Jig):
    name = "noop"
    inline = True

    def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
        return declared_outputs(noderole, inputs)


class TestJig(Jig):
    """OpenCrowbar's `test` jig: sleeps `jig_data.sleep` seconds and fails when `jig_data.fail` is set."""

    name = "test"

    def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
        time.sleep(float(noderole.jig_data.get("sleep", 0)))
        fail = noderole.jig_data.get("fail")
        if fail:
            raise JigError(
                f"test jig told to fail: {fail}",
                retryable=fail == "retryable",
                log=f"role {noderole.role} on {noderole.node_name}: failing as asked",
            )
        return declared_outputs(noderole, inputs)
