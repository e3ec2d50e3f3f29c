#!/opt/venv/bin/python
"""Healthy while this container holds an ESTABLISHED TCP connection to the server's FL port, i.e. the
NVFlare client is connected (stdlib only: reads /proc/net/tcp and tcp6)."""
import os
import sys

port = format(int(os.environ.get("FEDTUNE_FL_PORT", "8002")), "04X")
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        fields = row.split()
        if fields[2].endswith(":" + port) and fields[3] == "01":   # remote address, state ESTABLISHED
            sys.exit(0)
sys.exit(f"no connection to the server's port {int(port, 16)}")
