#!/bin/sh
# Inputs as JSON on stdin; outputs as JSON on stdout (the script jig's contract).
set -eu
python3 -c '
import json, sys
inputs = json.load(sys.stdin)
lines = ["# written by Kiln (role ntp-server)"]
lines += ["pool %s iburst" % u for u in inputs.get("ntp_upstreams") or []]
lines += ["allow all", "local stratum 10"]
open("/etc/chrony/conf.d/kiln.conf", "w").write("\n".join(lines) + "\n")
print(json.dumps({"ntp_server": inputs["admin_address"]}))
'
systemctl restart chrony >/dev/null 2>&1 || true
