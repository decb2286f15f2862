"""k8s/: every manifest and every built overlay passes the schemas and the house rules."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from pda.keys import BATCHES_BACKLOG

from .deploy_checks import (
    REPO,
    DeployError,
    check_command,
    check_policies,
    container,
    find,
    kustomize_build,
    load_manifests,
    to_bytes,
    validate_object,
    validate_scaled_object,
)

Objs = list[dict[str, Any]]
BASE_FILES = sorted(
    p for p in (REPO / "k8s" / "base").glob("*.yaml") if p.name != "kustomization.yaml"
)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


# --- schemas -------------------------------------------------------------------------------


def test_the_base_manifests_are_found() -> None:
    # an empty list would skip the test below, not fail it
    assert {"api.yaml", "worker.yaml", "redis.yaml", "config.yaml"} <= {p.name for p in BASE_FILES}


@pytest.mark.parametrize("path", BASE_FILES, ids=lambda p: p.name)
def test_every_base_manifest_is_valid(path: Path) -> None:
    objs = load_manifests(path)
    assert objs
    assert [p for obj in objs for p in validate_object(obj)] == []


@pytest.mark.parametrize("name", ["base", "cpu", "gpu"])
def test_every_built_object_is_valid(built: dict[str, Objs], name: str) -> None:
    assert [p for obj in built[name] for p in validate_object(obj)] == []


def test_a_misspelled_field_is_rejected(k8s_copy: Path) -> None:
    _edit(k8s_copy / "base" / "worker.yaml", "terminationGracePeriodSeconds:", "terminationGrace:")
    objs = kustomize_build(k8s_copy / "overlays" / "cpu")
    problems = [p for obj in objs for p in validate_object(obj)]
    assert len(problems) == 1
    assert problems[0].startswith("Deployment/pda-worker: spec.template.spec:")
    assert "terminationGrace" in problems[0]


def test_a_wrong_type_is_rejected() -> None:
    hpa = find(
        load_manifests(REPO / "k8s/base/api-autoscaling.yaml"), "HorizontalPodAutoscaler", "pda-api"
    )
    hpa["spec"]["minReplicas"] = "two"
    assert validate_object(hpa) == [
        "HorizontalPodAutoscaler/pda-api: spec.minReplicas: 'two' is not of type 'integer', 'null'"
    ]


def test_an_unknown_kustomization_field_fails_the_build(k8s_copy: Path) -> None:
    _edit(k8s_copy / "overlays" / "gpu" / "kustomization.yaml", "patches:", "patchez:")
    with pytest.raises(DeployError, match="unknown field.*patchez"):
        kustomize_build(k8s_copy / "overlays" / "gpu")


def test_a_missing_patch_file_fails_the_build(k8s_copy: Path) -> None:
    (k8s_copy / "overlays" / "gpu" / "worker-gpu.yaml").unlink()
    with pytest.raises(DeployError, match="worker-gpu.yaml"):
        kustomize_build(k8s_copy / "overlays" / "gpu")


# --- KEDA ----------------------------------------------------------------------------------


def _scaled_object() -> dict[str, Any]:
    return find(
        load_manifests(REPO / "k8s/base/worker-scaledobject.yaml"), "ScaledObject", "pda-worker"
    )


def test_scaled_object_is_valid() -> None:
    assert validate_scaled_object(_scaled_object()) == []


@pytest.mark.parametrize(
    ("breakage", "expected"),
    [
        (lambda so: so["spec"].pop("scaleTargetRef"), "'scaleTargetRef' is a required property"),
        (
            lambda so: so["spec"]["triggers"][0]["metadata"].pop("listName"),
            "'listName' is a required property",
        ),
        (
            lambda so: so["spec"]["triggers"][0]["metadata"].update(listLength=2),
            "2 is not of type 'string'",
        ),
        (lambda so: so["spec"].update(maxReplicas=3), "'maxReplicas' was unexpected"),
        (lambda so: so["spec"]["triggers"][0]["metadata"].pop("address"), "is not valid under any"),
        (
            lambda so: so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
                "scaleDown"
            ].update(stabilizationWindow=5),
            "stabilizationWindow",
        ),
    ],
    ids=[
        "no-target",
        "no-listName",
        "number-not-string",
        "unknown-field",
        "no-address",
        "bad-hpa-behavior",
    ],
)
def test_a_broken_scaled_object_is_rejected(breakage: Any, expected: str) -> None:
    so = _scaled_object()
    breakage(so)
    problems = validate_scaled_object(so)
    assert problems and any(expected in p for p in problems), problems


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_keda_watches_the_queue_the_workers_serve(built: dict[str, Objs], name: str) -> None:
    config = find(built[name], "ConfigMap", "pda-config")["data"]
    trigger = find(built[name], "ScaledObject", "pda-worker")["spec"]["triggers"][0]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == f"rq:queue:{config['PDA_QUEUE_NAME']}"
    # every queue a worker serves (worker.runner.queues) wakes workers
    lists = {t["metadata"]["listName"] for t in
             find(built[name], "ScaledObject", "pda-worker")["spec"]["triggers"]}
    q = config["PDA_QUEUE_NAME"]
    assert lists == {f"rq:queue:{q}", f"rq:queue:{q}-chunks", f"rq:queue:{q}-predict",
                     f"rq:queue:{q}-batch", BATCHES_BACKLOG}
    redis = urlparse(config["PDA_REDIS_URL"])
    assert trigger["metadata"]["address"] == f"{redis.hostname}:{redis.port}"
    assert trigger["metadata"]["databaseIndex"] == redis.path.strip("/")


# --- house rules ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_overlay_follows_the_house_rules(built: dict[str, Objs], name: str) -> None:
    assert check_policies(built[name]) == []


def test_house_rules_catch_a_missing_label_and_limits(built: dict[str, Objs]) -> None:
    objs = yaml.safe_load(yaml.safe_dump(built["cpu"]))  # a deep copy
    del find(objs, "Service", "pda-api")["metadata"]["labels"]["app.kubernetes.io/version"]
    del container(objs, "Deployment", "pda-worker")["resources"]["limits"]
    find(objs, "Deployment", "pda-api")["spec"]["replicas"] = 3
    find(objs, "PodDisruptionBudget", "pda-worker")["spec"]["selector"]["matchLabels"][
        "app.kubernetes.io/component"
    ] = "wroker"
    assert check_policies(objs) == [
        "Service/pda-api: missing labels ['app.kubernetes.io/version']",
        "Deployment/pda-worker: container worker needs requests and limits",
        "PodDisruptionBudget/pda-worker: selector matches no pods",
        "Deployment/pda-api: set no replicas, HorizontalPodAutoscaler owns them",
    ]


def test_version_label_and_image_tags_follow_pyproject(built: dict[str, Objs]) -> None:
    from pda.version import __version__

    assert "version" in tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "dynamic"]  # the package's one version: pda.__version__
    version = __version__
    for name in ("cpu", "gpu"):
        for obj in built[name]:
            assert obj["metadata"]["labels"]["app.kubernetes.io/version"] == version
        for dep in ("pda-api", "pda-worker"):
            assert (
                container(built[name], "Deployment", dep)["image"]
                .split(":")[1]
                .startswith(f"{version}-")
            )


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_api_probes_livez_and_readyz(built: dict[str, Objs], name: str) -> None:
    api = container(built[name], "Deployment", "pda-api")
    assert api["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["ports"] == [{"name": "http", "containerPort": 8000}]
    annotations = find(built[name], "Deployment", "pda-api")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8000",
        "prometheus.io/path": "/metrics",
    }
    hpa = find(built[name], "HorizontalPodAutoscaler", "pda-api")
    assert hpa["apiVersion"] == "autoscaling/v2"


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_worker_outlives_a_batch_and_has_an_exec_liveness_probe(
    built: dict[str, Objs], name: str
) -> None:
    pod = find(built[name], "Deployment", "pda-worker")["spec"]["template"]["spec"]
    # A batch takes seconds; the grace period must cover a warm stop with margin.
    assert pod["terminationGracePeriodSeconds"] >= 60
    probe = pod["containers"][0]["livenessProbe"]["exec"]["command"]
    assert probe[:3] == ["python", "-m", "worker.healthcheck"]
    assert check_command(probe) is None


def test_gpu_overlay_puts_workers_on_gpus(built: dict[str, Objs]) -> None:
    pod = find(built["gpu"], "Deployment", "pda-worker")["spec"]["template"]["spec"]
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["image"].endswith("-cuda")
    assert {"name": "PDA_DEVICE", "value": "cuda"} in worker["env"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    # The API stays on CPU nodes and the CPU image.
    api = find(built["gpu"], "Deployment", "pda-api")["spec"]["template"]["spec"]
    assert "nodeSelector" not in api
    assert api["containers"][0]["image"].endswith("-cpu")
    cpu_worker = container(built["cpu"], "Deployment", "pda-worker")
    assert "nvidia.com/gpu" not in cpu_worker["resources"]["limits"]



@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_redis_is_persistent_and_fenced(built: dict[str, Objs], name: str) -> None:
    objs = built[name]
    redis = find(objs, "StatefulSet", "redis")
    service = find(objs, "Service", redis["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    args = redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    # maxmemory makes noeviction apply, well inside the container's memory limit
    limit = redis["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"]
    assert 0 < to_bytes(args[args.index("--maxmemory") + 1]) <= 0.7 * to_bytes(limit)
    policy = find(objs, "NetworkPolicy", "redis")["spec"]
    assert policy["podSelector"]["matchLabels"] == redis["spec"]["selector"]["matchLabels"]
    allowed = policy["ingress"][0]["from"][0]["podSelector"]["matchExpressions"]
    assert {
        "key": "app.kubernetes.io/component",
        "operator": "In",
        "values": ["api", "worker"],
    } in allowed


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_config_and_secret_reach_both_api_and_worker(built: dict[str, Objs], name: str) -> None:
    find(built[name], "Secret", "pda-secrets")
    for dep in ("pda-api", "pda-worker"):
        refs = container(built[name], "Deployment", dep)["envFrom"]
        assert refs == [
            {"configMapRef": {"name": "pda-config"}},
            {"secretRef": {"name": "pda-secrets"}},
        ]


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_container_commands_name_real_code(built: dict[str, Objs], name: str) -> None:
    for dep in ("pda-api", "pda-worker"):
        c = container(built[name], "Deployment", dep)
        assert check_command(c["command"]) is None, c["command"]


# --- rolling updates and probes ------------------------------------------------------------


def _healthchecks() -> dict[str, list[str]]:
    """The worker's liveness command as the Dockerfile, compose and k8s each run it."""
    from .deploy_checks import dockerfile_commands

    docker = [argv for i, argv in dockerfile_commands(REPO / "docker" / "Dockerfile")
              if i == "HEALTHCHECK" and "worker.healthcheck" in argv]
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return {"dockerfile": docker[0],
            "compose": compose["services"]["worker"]["healthcheck"]["test"][1:]}


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_worker_probes_run_the_images_healthcheck(built: dict[str, Objs], name: str) -> None:
    worker = container(built[name], "Deployment", "pda-worker")
    checks = _healthchecks()
    assert checks["dockerfile"] == checks["compose"]
    for probe in ("startupProbe", "livenessProbe"):
        assert worker[probe]["exec"]["command"] == checks["dockerfile"], probe
        # the probe's max age must outlast a few missed beats and the probe period
        argv = worker[probe]["exec"]["command"]
        assert float(argv[argv.index("--max-age") + 1]) >= 3 * 10


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_api_rolls_without_failing_requests(built: dict[str, Objs], name: str) -> None:
    api = find(built[name], "Deployment", "pda-api")
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = api["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) >= 5
    # preStop runs inside the grace period: leave uvicorn time to drain after it
    assert pod["terminationGracePeriodSeconds"] >= int(sleep[1]) + 15
    assert "readinessProbe" in c


def test_cpu_workers_roll_with_a_surge(built: dict[str, Objs]) -> None:
    worker = find(built["cpu"], "Deployment", "pda-worker")
    assert worker["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    pod = worker["spec"]["template"]["spec"]
    assert "lifecycle" not in pod["containers"][0]  # SIGTERM itself starts the warm stop
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grace = int(compose["services"]["worker"]["stop_grace_period"].rstrip("s"))
    assert pod["terminationGracePeriodSeconds"] == grace
