"""`script`: runs a role's script on the node over SSH (paramiko).

The script gets its inputs as one JSON object on stdin and prints its outputs as one JSON object on
stdout; stderr is the run log. Exit status ≠ 0 is an error with the log kept. Connection failures are
retryable (the node may still be booting); authentication failures and script errors are not.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import paramiko

from appliance.annealer.injection import Inputs
from appliance.errors import JigError
from appliance.jigs.base import Jig, NodeRoleContext

log = logging.getLogger(__name__)


def script_body(noderole: NodeRoleContext) -> str:
    if "script" in noderole.jig_data:
        return str(noderole.jig_data["script"])
    if "script_file" in noderole.jig_data:
        path = Path(noderole.jig_data.get("barclamp_dir", ".")) / str(noderole.jig_data["script_file"])
        try:
            return path.read_text()
        except OSError as exc:
            raise JigError(f"role {noderole.role}: cannot read script {path}: {exc}") from exc
    raise JigError(f"role {noderole.role}: jig_data needs 'script' or 'script_file'")


def connect(noderole: NodeRoleContext, timeout: float = 15.0) -> paramiko.SSHClient:
    """An SSH client to the node from its access data; pinned host key when one is known."""
    access = noderole.access
    host = access.get("host")
    if not host:
        raise JigError(f"node {noderole.node_name}: no SSH address (hint.ssh.host) to run {noderole.role}")
    port = int(access.get("port", 22))
    client = paramiko.SSHClient()
    if access.get("host_key"):
        kind, data = str(access["host_key"]).split()[:2]
        key = paramiko.PKey.from_type_string(kind, base64.b64decode(data))
        name = host if port == 22 else f"[{host}]:{port}"
        client.get_host_keys().add(name, kind, key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
    else:
        # A freshly discovered node has no known host key yet; trust on first use and say so.
        log.warning("node %s: accepting its SSH host key unverified", noderole.node_name)
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        client.connect(
            host,
            port=port,
            username=str(access.get("user", "root")),
            key_filename=access.get("key_file"),
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise JigError(
            f"node {noderole.node_name}: SSH host key does not match the known one: {exc}"
        ) from exc
    except paramiko.AuthenticationException as exc:
        client.close()
        raise JigError(f"node {noderole.node_name}: SSH authentication failed: {exc}") from exc
    except (TimeoutError, OSError, paramiko.SSHException) as exc:
        client.close()
        raise JigError(
            f"node {noderole.node_name}: SSH to {host}:{port} failed: {exc}", retryable=True
        ) from exc
    return client


class ScriptJig(Jig):
    name = "script"

    def validate(self, noderole: NodeRoleContext, inputs: Inputs) -> None:
        script_body(noderole)
        if not noderole.access.get("host"):
            raise JigError(f"node {noderole.node_name}: no SSH address (hint.ssh.host)")

    def run(self, noderole: NodeRoleContext, inputs: Inputs) -> dict[str, Any]:
        body = script_body(noderole)
        timeout = float(noderole.jig_data.get("timeout", 3600))
        client = connect(noderole)
        try:
            return self._run(client, noderole, body, inputs, timeout)
        finally:
            client.close()

    def _run(
        self, client: paramiko.SSHClient, noderole: NodeRoleContext, body: str, inputs: Inputs, timeout: float
    ) -> dict[str, Any]:
        path = f"/tmp/kiln-{noderole.id}-{uuid.uuid4().hex[:8]}"
        with client.open_sftp() as sftp:
            with sftp.open(path, "w") as remote:
                remote.write(body)
            sftp.chmod(path, 0o700)
        stdin, stdout, stderr = client.exec_command(f"{path}; rc=$?; rm -f {path}; exit $rc", timeout=timeout)
        stdin.write(json.dumps(inputs.to_dict()) + "\n")  # one line, so `read -r` works in sh
        stdin.channel.shutdown_write()
        try:
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            status = stdout.channel.recv_exit_status()
        except TimeoutError as exc:
            raise JigError(f"role {noderole.role}: script timed out after {timeout:.0f}s") from exc
        runlog = f"$ {noderole.role} (exit {status})\n--- stderr\n{err}--- stdout\n{out}"
        if status != 0:
            raise JigError(f"role {noderole.role}: script exited {status}", log=runlog)
        try:
            outputs = json.loads(out) if out.strip() else {}
        except json.JSONDecodeError as exc:
            raise JigError(f"role {noderole.role}: script stdout is not JSON: {exc}", log=runlog) from exc
        if not isinstance(outputs, dict):
            raise JigError(f"role {noderole.role}: script stdout must be a JSON object", log=runlog)
        outputs["_log"] = runlog
        return outputs
