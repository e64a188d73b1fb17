"""`ansible`: runs a role's playbook against the node with ansible-runner.

Inputs go in as extra vars; outputs come back from `set_stats` (per host or global) in the play's
stats event. An unreachable host is retryable; a failed task is not.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from appliance.annealer.injection import Inputs
from appliance.errors import JigError
from appliance.jigs.base import Jig, NodeRoleContext, require_jig_data


def ansible_playbook() -> str:
    """ansible-playbook from this Python's environment (a venv's bin is often not on PATH), else PATH."""
    beside = Path(sys.executable).with_name("ansible-playbook")
    found = str(beside) if beside.exists() else shutil.which("ansible-playbook")
    if not found:
        raise JigError("ansible-playbook not found: install ansible-core")
    return found


def playbook_path(noderole: NodeRoleContext) -> Path:
    path = Path(str(require_jig_data(noderole, "playbook")))
    if not path.is_absolute():
        path = Path(noderole.jig_data.get("barclamp_dir", ".")) / path
    if not path.is_file():
        raise JigError(f"role {noderole.role}: playbook {path} not found")
    return path


class AnsibleJig(Jig):
    name = "ansible"

    def validate(self, noderole: NodeRoleContext, inputs: Inputs) -> None:
        playbook_path(noderole)
        if not noderole.access.get("host"):
            raise JigError(f"node {noderole.node_name}: no SSH address (hint.ssh.host)")

    def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
        import ansible_runner  # heavy import: only annealers that run playbooks pay for it

        self.validate(noderole, inputs)
        access = noderole.access
        host_vars: dict[str, Any] = {
            "ansible_host": access["host"],
            "ansible_port": int(access.get("port", 22)),
            "ansible_user": str(access.get("user", "root")),
            "ansible_python_interpreter": str(access.get("python", "/usr/bin/python3")),
        }
        if access.get("key_file"):
            host_vars["ansible_ssh_private_key_file"] = str(access["key_file"])
        envvars = {
            "ANSIBLE_HOST_KEY_CHECKING": "False",
            "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{Path(ansible_playbook()).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        }
        with tempfile.TemporaryDirectory(prefix="kiln-ansible-") as private:
            if access.get("host_key"):
                known = Path(private) / "known_hosts"
                port = int(access.get("port", 22))
                name = access["host"] if port == 22 else f"[{access['host']}]:{port}"
                known.write_text(f"{name} {access['host_key']}\n")
                envvars["ANSIBLE_HOST_KEY_CHECKING"] = "True"
                envvars["ANSIBLE_SSH_ARGS"] = f"-o UserKnownHostsFile={known} -o ControlMaster=no"
            runner = ansible_runner.run(
                private_data_dir=private,
                playbook=str(playbook_path(noderole)),
                inventory={"all": {"hosts": {noderole.node_name: host_vars}}},
                extravars=inputs.to_dict(),
                envvars=envvars,
                quiet=True,
                timeout=int(noderole.jig_data.get("timeout", 3600)),
            )
            runlog = runner.stdout.read() if runner.stdout else ""
            stats = next((e for e in runner.events if e.get("event") == "playbook_on_stats"), None)
        data = (stats or {}).get("event_data", {})
        if runner.rc != 0 or runner.status != "successful":
            unreachable = bool(data.get("dark"))
            raise JigError(
                f"role {noderole.role}: playbook {runner.status} (rc {runner.rc})",
                retryable=unreachable,
                log=runlog,
            )
        artifact = data.get("artifact_data") or {}
        outputs: dict[str, Any] = {k: v for k, v in artifact.items() if k != noderole.node_name}
        per_host = artifact.get(noderole.node_name)
        if isinstance(per_host, dict):
            outputs.update(per_host)
        outputs["_log"] = runlog
        return outputs
