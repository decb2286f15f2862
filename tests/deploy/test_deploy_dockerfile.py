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


def stages(text: str) -> list[tuple[str, str, str]]:
    """(name, parent, body) of every stage, in file order; parent is a stage or an image."""
    out = []
    for chunk in re.split(r"^FROM ", text, flags=re.M)[1:]:
        m = re.match(r"(\S+)\s+AS\s+(\S+)", chunk)
        assert m, chunk.splitlines()[0]
        out.append((m[2], m[1], chunk))
    return out


def final_users(text: str) -> dict[str, str | None]:
    """The USER each stage ends with, inherited from its parent stage when it sets none."""
    users: dict[str, str | None] = {}
    for name, parent, body in stages(text):
        own = re.findall(r"^USER (\S+)", body, flags=re.M)
        users[name] = own[-1] if own else users.get(parent)
    return users


def test_images_run_as_a_numeric_non_root_user() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    users = final_users(text)
    for name in ("api", "dashboard", "worker"):
        assert users[name] == "10001:10001", name
    assert users[stages(text)[-1][0]] == "10001:10001"


def test_user_inheritance_is_followed() -> None:
    text = "FROM python:3 AS a\nUSER 10001:10001\nFROM a AS b\nFROM python:3 AS c\n"
    assert final_users(text) == {"a": "10001:10001", "b": "10001:10001", "c": None}


def _needs(text: str, target: str) -> set[str]:
    """The stages ``target`` needs (FROM and COPY --from), itself included."""
    by_name = {name: (parent, body) for name, parent, body in stages(text)}
    need, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name in need or name not in by_name:
            continue
        need.add(name)
        parent, body = by_name[name]
        todo += [parent, *re.findall(r"--from=(\S+)", body)]
    return need


def _torch_stages(text: str) -> list[str]:
    return [name for name, _, body in stages(text)
            if re.search(r"^(RUN|ARG)\b.*torch", body, flags=re.M | re.I)]


def test_the_api_and_dashboard_never_build_torch_under_either_builder() -> None:
    # BuildKit builds the stages a target needs; the classic builder (DOCKER_BUILDKIT=0)
    # every stage above the target. Neither set may hold a stage that installs torch.
    text = (REPO / "docker" / "Dockerfile").read_text()
    order = [name for name, _, _ in stages(text)]
    torch = _torch_stages(text)
    assert "build" in torch and "build-api" not in torch
    for target in ("api", "dashboard"):
        classic = set(order[: order.index(target) + 1])
        assert not (classic | _needs(text, target)) & set(torch), target
    assert "build" in _needs(text, "worker")


def test_a_torch_stage_above_the_api_is_caught() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    api = text.index("FROM base AS api")
    torch = text.index("FROM build-base AS build\n")
    moved = text[:api] + text[torch:] + "\n" + text[api:torch]
    order = [name for name, _, _ in stages(moved)]
    assert set(order[: order.index("api") + 1]) & set(_torch_stages(moved)) == {"build"}


def test_no_syntax_directive() -> None:
    # `# syntax=` makes BuildKit fetch a frontend image first: no offline build
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, flags=re.M | re.I)
    assert "RUN --mount" not in text  # the classic builder rejects it


def test_pip_settings_are_build_arguments_of_every_build_stage() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    bodies = {name: body for name, _, body in stages(text)}
    installing = [n for n, body in bodies.items()
                  if re.search(r"^RUN .*pip install", body, flags=re.M)]
    assert installing == ["build-api", "build-dashboard", "build"]  # the match found them
    for name in installing:
        for arg in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST"):
            assert re.search(rf"^ARG {arg}$", bodies[name], flags=re.M), (name, arg)
    base = dict((n, b) for n, _, b in stages(text))["build-base"]
    assert re.search(r"^ARG BUILD_CA_CERT$", base, flags=re.M)
    assert "update-ca-certificates" in base and "PIP_CERT=/etc/ssl/certs/" in base
    # images that run never see the build's pip settings or CA
    for name in ("base", "api", "dashboard", "worker"):
        assert not re.search(r"^ARG ", dict((n, b) for n, _, b in stages(text))[name], re.M)


def test_the_worker_build_checks_openvino_and_installs_packaging() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    build = dict((n, b) for n, _, b in stages(text))["build"]
    assert re.search(r'pip install --no-cache-dir \. "packaging', build)
    assert "python /tmp/check_worker.py" in build
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "!docker/check_worker.py" in lines


def test_worker_check_fails_on_missing_dependencies(monkeypatch) -> None:
    import subprocess as sp
    import sys

    sys.path.insert(0, str(REPO / "docker"))
    try:
        import check_worker
    finally:
        sys.path.pop(0)
    out = "torch 2.14.1 requires triton, which is not installed.\n" \
          "openvino 2026.4 requires packaging, which is not installed.\n"
    monkeypatch.setattr(check_worker.subprocess, "run",
                        lambda *a, **k: sp.CompletedProcess(a, 1, out, ""))
    assert check_worker.pip_problems({"triton"}) == [
        "openvino 2026.4 requires packaging, which is not installed."]
    assert check_worker.main(["--allow-missing", "triton"]) == 1


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
