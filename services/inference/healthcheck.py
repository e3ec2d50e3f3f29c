#!/opt/venv/bin/python
"""Healthy when the service answers 200 on /v2/health/ready (every bundle loaded and warmed up)."""
import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('FEDTUNE_PORT', '8000')}/v2/health/ready"
try:
    with urllib.request.urlopen(url, timeout=2) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception as exc:  # connection refused, 503 while loading
    sys.exit(f"{url}: {exc}")
