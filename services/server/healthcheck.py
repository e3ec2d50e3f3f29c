#!/opt/venv/bin/python
"""Healthy when the NVFlare server accepts TCP connections on its FL and admin ports (stdlib only)."""
import os
import socket
import sys

for port in (os.environ.get("FEDTUNE_FL_PORT", "8002"), os.environ.get("FEDTUNE_ADMIN_PORT", "8003")):
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=2).close()
    except OSError as exc:
        sys.exit(f"port {port}: {exc}")
