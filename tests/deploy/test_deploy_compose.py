"""docker-compose.yml: valid against the Compose Specification, and a working stack."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from .deploy_checks import REPO, check_command, to_bytes, validate_compose

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_file_is_valid() -> None:
    assert validate_compose(COMPOSE) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # The first occurrence is in the x-worker anchor, which both workers merge.
        ("condition: service_healthy", "condition: service_heathy", "services.worker.depends_on"),
        ("stop_grace_period: 120s", "stop_grace: 120s", "stop_grace"),
        ("capabilities: [gpu]", "capabilities: gpu", "services.worker-gpu.deploy"),
        (
            '    healthcheck:\n      test: ["CMD", "redis-cli", "ping"]\n      interval: 5s\n'
            "      timeout: 3s\n      start_period: 5s\n      retries: 10\n",
            "",
            "waits for redis to be healthy, it has no check",
        ),
    ],
    ids=["bad-condition", "unknown-key", "wrong-type", "no-healthcheck"],
)
def test_a_broken_compose_file_is_rejected(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    text = COMPOSE.read_text()
    assert old in text
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(text.replace(old, new, 1))
    problems = validate_compose(broken)
    assert any(expected in p for p in problems), problems


def test_default_stack_is_redis_api_and_a_cpu_worker(compose: dict[str, Any]) -> None:
    default = sorted(n for n, s in compose["services"].items() if "profiles" not in s)
    assert default == ["api", "redis", "worker"]
    assert compose["services"]["api"]["ports"] == ["127.0.0.1:${API_PORT:-8000}:8000"]
    assert compose["services"]["worker"]["environment"]["PDA_DEVICE"] == "cpu"
    for name in ("api", "worker"):
        assert compose["services"][name]["depends_on"] == {
            "redis": {"condition": "service_healthy"}
        }


def test_redis_keeps_an_append_only_file_on_a_volume(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert redis["volumes"] == ["redis-data:/data"]
    assert "redis-data" in compose["volumes"]


def test_gpu_profile_reserves_an_nvidia_gpu(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    ]
    assert gpu["environment"]["PDA_DEVICE"] == "cuda"
    assert gpu["build"]["args"]["TORCH_INDEX_URL"] == "https://pypi.org/simple"


def test_monitoring_profile_scrapes_the_api(compose: dict[str, Any]) -> None:
    monitoring = sorted(
        n for n, s in compose["services"].items() if s.get("profiles") == ["monitoring"]
    )
    assert monitoring == ["prometheus", "rq-dashboard"]
    prometheus = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["api:8000"]}]


def test_workers_stop_warm_with_a_grace_period(compose: dict[str, Any]) -> None:
    for name in ("worker", "worker-gpu"):
        service = compose["services"][name]
        assert service["stop_signal"] == "SIGTERM"
        # A batch takes seconds: a minute of margin at least.
        assert int(service["stop_grace_period"].rstrip("s")) >= 60


def test_commands_and_health_checks_name_real_code(compose: dict[str, Any]) -> None:
    checked = {}
    for name, service in compose["services"].items():
        if not service.get("image", "").startswith("pda-"):
            continue
        for argv in (service.get("command"), service.get("healthcheck", {}).get("test")):
            if argv is not None:
                assert check_command(argv) is None, (name, argv)
                checked[name] = checked.get(name, 0) + 1
    # every image of ours had something checked (no match would pass this test vacuously)
    assert checked == {"api": 1, "worker": 1, "worker-gpu": 1, "rq-dashboard": 1}


def test_redis_maxmemory_applies_well_inside_its_memory_limit(compose: dict[str, Any]) -> None:
    # without maxmemory, noeviction never applies: Redis grows until the OOM killer comes
    redis = compose["services"]["redis"]
    cmd = redis["command"]
    maxmemory = to_bytes(cmd[cmd.index("--maxmemory") + 1])
    assert 0 < maxmemory <= 0.7 * to_bytes(redis["mem_limit"])


def test_every_service_restarts_unless_stopped(compose: dict[str, Any]) -> None:
    # the dashboard once crashed at start and, with no policy, stayed exited
    assert len(compose["services"]) == 6
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name


def test_builds_pass_pip_settings_through(compose: dict[str, Any]) -> None:
    built = sorted(n for n, s in compose["services"].items() if "build" in s)
    assert built == ["api", "rq-dashboard", "worker", "worker-gpu"]
    for name, service in compose["services"].items():
        if "build" not in service:
            continue
        args = service["build"]["args"]
        for arg in ("PYTHON_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST",
                    "BUILD_CA_CERT"):
            assert arg in args, (name, arg)
        # a bare key is taken from the environment, or not passed at all
        assert args["PIP_INDEX_URL"] is None
    assert compose["services"]["worker"]["build"]["args"]["TORCH_INDEX_URL"] is None
    assert compose["services"]["worker-gpu"]["build"]["args"]["WORKER_DEVICE"] == "cuda"


def test_the_dashboard_is_built_on_the_light_base() -> None:
    text = (REPO / "docker" / "Dockerfile").read_text()
    assert "FROM build-api AS build-dashboard" in text
    assert "FROM base AS dashboard" in text
