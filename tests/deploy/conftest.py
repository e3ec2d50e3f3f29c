"""Deployment tests: the Kubernetes manifests (rendered with kubectl's kustomize, validated offline) and the
compose stack on a real Docker engine. A missing tool skips a test with its reason, except in CI (CI=true),
where `make test` installs every tool first (scripts/ci-deps.sh), so a missing one is a failure."""

from __future__ import annotations

import os
import shutil

import pytest

from deploy_helpers import unavailable

KUBECTL_FALLBACK = "/opt/fedtune-tools/venv/bin/kubectl"     # where scripts/ci-deps.sh puts one


@pytest.fixture(scope="session")
def kubectl() -> str:
    path = shutil.which("kubectl") or (KUBECTL_FALLBACK if os.access(KUBECTL_FALLBACK, os.X_OK) else None)
    if not path:
        unavailable("kubectl not found: needed to render k8s/ with its built-in kustomize")
    return path
