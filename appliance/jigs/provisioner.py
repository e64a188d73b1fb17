"""`provisioner`: Kiln's own work for a node (bootenv, DHCP reservation, DNS, answer files).

The interface lives here; the boot issue registers the operations its roles name in
`jig_data.operation` (for example `os-install` sets the bootenv and power-cycles through the BMC).
"""

from __future__ import annotations

from appliance.jigs.bmc import OperationJig


class ProvisionerJig(OperationJig):
    name = "provisioner"

    def __init__(self) -> None:
        self.operations = {}
