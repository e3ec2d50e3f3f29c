"""Property-based run of schemathesis over the live OpenAPI schema: no input gives a 5xx, and every response
matches its documented schema. Bounded (few examples per operation, fixed seed) to stay well under a minute."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from serve_helpers import settings

from fedtune.serve.server import BackgroundServer


def _schemathesis() -> str | None:
    local = Path(sys.executable).parent / "schemathesis"
    return str(local) if local.exists() else shutil.which("schemathesis")


@pytest.mark.skipif(_schemathesis() is None, reason="schemathesis is not installed (pip install -e '.[dev]')")
def test_no_server_error_on_any_generated_input(sites_bundle, sentiment_bundle, tmp_path):
    with BackgroundServer(settings([sites_bundle, sentiment_bundle], warmup=False), log_level="error") as srv:
        cmd = [_schemathesis(), "run", srv.url + "/openapi.json",
               "--checks", "not_a_server_error,response_schema_conformance",
               "--max-examples", "10", "--seed", "1", "--workers", "1", "--suppress-health-check", "all",
               "--request-timeout", "30", "--no-color", "--report-dir", str(tmp_path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "passed" in proc.stdout
