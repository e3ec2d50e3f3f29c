"""Helpers shared by the deployment tests (imported as `deploy_helpers`: pytest puts this folder on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str):
    """Skip outside CI; fail in CI, where `make test` installs every tool first (scripts/ci-deps.sh)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI installs it with scripts/ci-deps.sh)")
    pytest.skip(reason)
