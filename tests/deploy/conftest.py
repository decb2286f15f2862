"""Fixtures for the deployment checks: the overlays, built once per session."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from . import deploy_checks

OVERLAYS = ("cpu", "gpu")


@pytest.fixture(scope="session")
def built() -> dict[str, list[dict[str, Any]]]:
    """``kubectl kustomize`` output of the base and of each overlay."""
    k8s = deploy_checks.REPO / "k8s"
    out = {"base": deploy_checks.kustomize_build(k8s / "base")}
    for name in OVERLAYS:
        out[name] = deploy_checks.kustomize_build(k8s / "overlays" / name)
    return out


@pytest.fixture
def k8s_copy(tmp_path: Path) -> Path:
    """A scratch copy of k8s/ for tests that break a file on purpose."""
    return Path(shutil.copytree(deploy_checks.REPO / "k8s", tmp_path / "k8s"))
