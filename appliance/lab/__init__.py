"""Lab mode: Kiln in its own network namespace, with a bridge that is the lab's only wire.

`kiln lab` (appliance/cli/lab.py) puts these together: LabNetwork (namespace, bridge, veth to the
host), TcpForwarder (the host's 127.0.0.1:<port> to the web inside the namespace) and LabNodes (QEMU
machines that netboot on the bridge).
"""
