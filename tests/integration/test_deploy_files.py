"""The shipped deploy files: Dockerfile, compose.yaml, Kubernetes manifests, the Helm chart,
and the wheel itself (`make wheel-check`).

Validators are real tools from the `test` extra (hadolint, check-jsonschema, kubernetes-validate).
There is no Docker engine and no helm binary in CI: the image is not built and the chart is not
rendered by Helm; the chart's templates are checked as YAML with their `{{ ... }}` actions
replaced, and against the plain manifests of deploy/kubernetes/ that do validate.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from aiogate import __version__

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "aiogate"
MANIFESTS = ("configmap", "secret", "deployment", "service", "pdb", "servicemonitor")


def _tool(name: str) -> str | None:
    """A console script of the test extra: next to this interpreter, else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


def needs_script(name: str) -> pytest.MarkDecorator:
    """Skip on a developer machine without `name`; in CI (`make test` installs the test extra)
    a missing tool is a failure, never a silent skip."""
    missing = _tool(name) is None and not os.environ.get("CI")
    return pytest.mark.skipif(missing, reason=f"{name} not installed (pip install -e '.[test]')")


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    tool = _tool(argv[0])
    assert tool is not None, f"{argv[0]} is not installed"
    return subprocess.run(
        [tool, *argv[1:]], check=False, capture_output=True, text=True, timeout=300, env=env
    )


def _yaml(path: Path) -> Any:
    return YAML(typ="safe").load(path.read_text())


def _all_yaml(path: Path) -> list[Any]:
    return list(YAML(typ="safe").load_all(path.read_text()))


def _replaced(placeholders: dict[str, str]) -> dict[str, str]:
    """Random values for a Secret's `REPLACE-WITH-...` placeholders, as a user would set."""
    assert all(value.startswith("REPLACE-WITH-") for value in placeholders.values())
    return {name: secrets.token_hex(32) for name in placeholders}


def _check_config(text: str, tmp_path: Path, env: dict[str, str]) -> None:
    """`aiogate check` accepts `text` with exactly `env` added to a clean environment."""
    config = tmp_path / "aiogate.yaml"
    config.write_text(text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIOGATE_", "JWT_"))}
    result = subprocess.run(
        [sys.executable, "-m", "aiogate", "check", "-c", str(config)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
    )
    assert result.returncode == 0, result.stderr


# -- Dockerfile ------------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found = []
    for line in map(str.strip, text.splitlines()):
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


@needs_script("hadolint")
def test_hadolint_clean() -> None:
    result = _run("hadolint", "--no-color", str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_daemon_safely() -> None:
    instructions = _instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2, "multi-stage"
    assert all(args.startswith("python:3.11-slim") for args in froms)
    last = dict(instructions[[w for w, _ in instructions].index("FROM", 1) :])
    user = last["USER"].split(":")[0]
    assert user not in ("root", "0")
    # Exec form: aiogate is PID 1 and gets SIGTERM/SIGHUP; a shell would swallow them.
    assert last["ENTRYPOINT"] == '["aiogate", "run", "-c", "/etc/aiogate/aiogate.yaml"]'
    assert last["STOPSIGNAL"] == "SIGTERM"
    assert "urllib.request" in last["HEALTHCHECK"]
    assert "127.0.0.1:9901/healthz" in last["HEALTHCHECK"]
    runs = " ".join(args for word, args in instructions if word == "RUN")
    assert "-c constraints.txt" in runs
    assert "aiogate check -c /etc/aiogate/aiogate.yaml" in runs


def test_dockerignore_admits_every_copied_file() -> None:
    """The allow-list and the COPY lines must not drift apart (a missing file fails the build
    only on a machine with Docker)."""
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for word, args in _instructions():
        if word != "COPY" or "--from=" in args:
            continue
        sources = [part for part in args.split() if not part.startswith("--")][:-1]
        for source in sources:
            assert (ROOT / source).exists(), source
            assert any(source == a or source.startswith(f"{a}/") for a in allowed), source


def test_example_config_in_the_image_passes_check(tmp_path: Path) -> None:
    """The values the Dockerfile's build-time `aiogate check` uses."""
    text = (ROOT / "src" / "aiogate" / "data" / "aiogate.example.yaml").read_text()
    env = {
        "AIOGATE_UPSTREAM_URL": "http://127.0.0.1:9",
        "JWT_SECRET": "build-time-check-only-not-a-real-secret",
    }
    _check_config(text, tmp_path, {**env, "AIOGATE_ADMIN_LISTEN": "0.0.0.0:9901"})


# -- compose ---------------------------------------------------------------------------------


@needs_script("check-jsonschema")
def test_compose_matches_the_compose_spec() -> None:
    result = _run(
        "check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(ROOT / "compose.yaml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_and_mounts(tmp_path: Path) -> None:
    compose = _yaml(ROOT / "compose.yaml")
    services = compose["services"]
    assert {"gateway", "redis", "etcd", "backend-1", "backend-2", "prometheus", "grafana"} <= set(
        services
    )
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert (ROOT / source).exists(), volume
    prometheus = _yaml(ROOT / "deploy" / "compose" / "prometheus" / "prometheus.yml")
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["gateway:9901"]
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    config = (ROOT / "deploy" / "compose" / "aiogate" / "aiogate.yaml").read_text()
    _check_config(config, tmp_path, {"JWT_SECRET": "compose-" + "0" * 32})


# -- Kubernetes ------------------------------------------------------------------------------


@needs_script("kubernetes-validate")
def test_kubernetes_manifests_validate() -> None:
    files = [str(K8S / f"{name}.yaml") for name in MANIFESTS]
    result = _run("kubernetes-validate", "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    # The ServiceMonitor is a CRD kubernetes-validate has no schema for (a warning, not a pass).
    passed = result.stdout + result.stderr
    for name in MANIFESTS[:-1]:
        assert f"{name}.yaml passed" in passed, passed


def _deployment() -> dict[str, Any]:
    deployment: dict[str, Any] = _yaml(K8S / "deployment.yaml")
    return deployment


def test_deployment_probes_resources_and_reload(tmp_path: Path) -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "admin": 9901}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # bench/RESULTS.md: ~76 MiB RSS per worker; the request and the limit leave room above it.
    requests = container["resources"]["requests"]
    assert requests["memory"] == "128Mi"
    assert container["resources"]["limits"]["memory"] == "256Mi"
    assert "cpu" not in container["resources"]["limits"]
    # A subPath mount would never see the ConfigMap's updates.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/aiogate"
    assert "subPath" not in mount
    configmap = _yaml(K8S / "configmap.yaml")
    config_text = configmap["data"]["aiogate.yaml"]
    config = YAML(typ="safe").load(config_text)
    assert config["reload"]["watch"] is True
    assert config["admin"]["listen"] == "0.0.0.0:9901"
    assert pod["terminationGracePeriodSeconds"] > 30  # server.shutdown_timeout
    # It loads with the Secret's keys (once their placeholders are replaced, which `check`
    # insists on) and the Deployment's env.
    env = {item["name"]: item["value"] for item in container["env"]}
    env.update(_replaced(_yaml(K8S / "secret.yaml")["stringData"]))
    _check_config(config_text, tmp_path, env)


def test_kustomization_lists_every_manifest() -> None:
    resources = _yaml(K8S / "kustomization.yaml")["resources"]
    assert sorted(resources) == sorted(f"{name}.yaml" for name in MANIFESTS)


# -- Helm ------------------------------------------------------------------------------------

_ACTION = re.compile(r"\{\{-?.*?-?\}\}")
_ACTION_ONLY = re.compile(r"^\s*\{\{-?.*-?\}\}\s*$")
_OPENS = re.compile(r"\{\{-?\s*(if|with|range|define)\b")
_ENDS = re.compile(r"\{\{-?\s*end\b")


def _placeholdered(text: str) -> str:
    """A template with action-only lines dropped and inline actions replaced by a word."""
    lines = [line for line in text.splitlines() if not _ACTION_ONLY.match(line)]
    return "\n".join(_ACTION.sub("PLACEHOLDER", line) for line in lines)


@pytest.mark.parametrize(
    "template", sorted(p.name for p in (CHART / "templates").glob("*") if p.is_file())
)
def test_helm_template_is_balanced(template: str) -> None:
    text = (CHART / "templates" / template).read_text()
    assert text.count("{{") == text.count("}}")
    assert len(_OPENS.findall(text)) == len(_ENDS.findall(text))


@pytest.mark.parametrize("name", MANIFESTS)
def test_helm_template_is_yaml_for_the_same_object(name: str) -> None:
    rendered = YAML(typ="safe").load(
        _placeholdered((CHART / "templates" / f"{name}.yaml").read_text())
    )
    plain = _yaml(K8S / f"{name}.yaml")
    assert (rendered["apiVersion"], rendered["kind"]) == (plain["apiVersion"], plain["kind"])
    if name == "deployment":
        (chart_container,) = rendered["spec"]["template"]["spec"]["containers"]
        (plain_container,) = plain["spec"]["template"]["spec"]["containers"]
        for key in ("ports", "livenessProbe", "readinessProbe", "securityContext"):
            assert chart_container[key] == plain_container[key], key


def test_helm_values_config_passes_check(tmp_path: Path) -> None:
    values = _yaml(CHART / "values.yaml")
    chart = _yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert (
        values["resources"]
        == _deployment()["spec"]["template"]["spec"]["containers"][0]["resources"]
    )
    # toYaml of `config:` is what the ConfigMap holds; a YAML dump of it is the same document.
    buffer = io.StringIO()
    YAML(typ="safe").dump(values["config"], buffer)
    secret_values = _replaced(values["secret"]["values"])
    _check_config(buffer.getvalue(), tmp_path, {**values["env"], **secret_values})


# -- the wheel -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_builds_installs_and_carries_its_data(tmp_path: Path) -> None:
    """`make wheel-check`: sdist, wheel from the sdist, a fresh venv without extras, then
    `aiogate --version` and the packaged files read through aiogate.resources."""
    make = shutil.which("make")
    assert make is not None
    result = subprocess.run(
        [make, "--no-print-directory", "wheel-check", f"WHEEL_DIR={tmp_path / 'dist'}"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert f"aiogate {__version__}" in result.stdout
    assert "wheel-check: package data present, tracing extra optional" in result.stdout
    wheels = list((tmp_path / "dist").glob("aiogate-*.whl"))
    sdists = list((tmp_path / "dist").glob("aiogate-*.tar.gz"))
    assert len(wheels) == 1
    assert len(sdists) == 1
