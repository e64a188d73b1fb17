"""Jigs by name: the one registry the barclamp loader and the annealer look jigs up in."""

from __future__ import annotations

from appliance.errors import NotFound
from appliance.jigs.ansible import AnsibleJig
from appliance.jigs.base import Jig, NodeRoleContext
from appliance.jigs.bmc import BmcJig
from appliance.jigs.noop import NoopJig, TestJig
from appliance.jigs.provisioner import ProvisionerJig
from appliance.jigs.script import ScriptJig

REGISTRY: dict[str, Jig] = {
    jig.name: jig for jig in (NoopJig(), TestJig(), ScriptJig(), AnsibleJig(), BmcJig(), ProvisionerJig())
}


def get_jig(name: str) -> Jig:
    try:
        return REGISTRY[name]
    except KeyError:
        raise NotFound(f"jig '{name}' is not registered") from None


__all__ = ["REGISTRY", "Jig", "NodeRoleContext", "get_jig"]
