#!/bin/sh
set -eu
python3 -c '
import json, sys
inputs = json.load(sys.stdin)
servers = inputs.get("dns_servers") or []
lines = ["# written by Kiln (role dns-client)"]
if inputs.get("dns_domain"):
    lines.append("search %s" % inputs["dns_domain"])
lines += ["nameserver %s" % s for s in servers]
if servers:
    open("/etc/resolv.conf", "w").write("\n".join(lines) + "\n")
print(json.dumps({"dns_servers": servers}))
'
