"""docker/Dockerfile: hadolint-clean, non-root, and its commands name real code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .deploy_checks import REPO, DeployError, check_command, dockerfile_commands, hadolint

DOCKERFILES = sorted((REPO / "docker").glob("*Dockerfile*"))


def test_there_is_a_dockerfile() -> None:
    assert [p.name for p in DOCKERFILES] == ["Dockerfile"]


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    run = hadolint(path)
    assert (run.returncode, run.stdout) == (0, "")


def test_hadolint_rejects_a_broken_dockerfile(tmp_path: Path) -> None:
    broken = tmp_path / "Dockerfile"
    broken.write_text(
        "FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN cd /src\n"
    )
    run = hadolint(broken)
    assert run.returncode == 1
    for rule in ("DL3007", "DL3008", "DL3009", "DL3015", "DL3003"):
        assert rule in run.stdout


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_every_command_names_real_code(path: Path) -> None:
    commands = dockerfile_commands(path)
    assert {i for i, _ in commands} == {"CMD", "HEALTHCHECK"}
    assert [(i, argv, check_command(argv)) for i, argv in commands] == [
        (i, argv, None) for i, argv in commands
    ]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["pda-server"], "pda-server: not a console script"),
        (["pda", "serv"], "pda serv: not a pda subcommand"),
        (["pda", "serve", "--hots", "0.0.0.0"], "never mentions the option(s) ['--hots']"),
        (["python", "-m", "worker.healthcheckk"], "python -m worker.healthcheckk: no such module"),
        (["python", "-c", "import urllib.request; urlopen("], "python -c:"),
        (["python", "worker/healthcheck.py"], "use -m MODULE or -c CODE"),
    ],
)
def test_a_command_that_names_no_code_is_rejected(argv: list[str], expected: str) -> None:
    assert expected in (check_command(argv) or "")


def test_shell_form_commands_are_rejected(tmp_path: Path) -> None:
    # Shell form runs under /bin/sh as PID 1, which does not pass SIGTERM on: no warm stop.
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python:3.11.13-slim-bookworm\nCMD pda worker\n")
    with pytest.raises(DeployError, match="CMD not in exec"):
        dockerfile_commands(dockerfile)


def test_images_run_as_a_numeric_non_root_user() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users[-1] == "10001:10001"
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    for stage in stages:
        if " AS build" in stage.splitlines()[0]:
            continue
        stage_users = re.findall(r"^USER (\S+)", stage, flags=re.M)
        inherits = stage.startswith("runtime ")
        assert (stage_users and stage_users[-1] == "10001:10001") or (
            inherits and not stage_users
        ), stage.splitlines()[0]


def test_base_images_are_pinned() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    (base,) = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base)


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "worker", "service", "*.py"):
        assert needed not in patterns
    for excluded in (".git", "tests", "k8s"):
        assert excluded in patterns
