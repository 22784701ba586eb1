"""deploy/k8s as a cluster would get it, checked offline: both overlays render with kubectl's
kustomize; the core kinds pass kubernetes-validate's strict schemas (oldest supported release
and newest); KEDA's kinds carry the fields KEDA documents and point at what the render holds;
every environment name is a Settings field; probes, ports and the queue are the ones the real
commands use; the retrain CronJob runs `lab2prod release` into the registry the servers read."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest
from support.deploy import (
    IMAGE_TARGETS,
    image_env,
    kustomize,
    lab2prod_args,
    serve_options,
    setting_names,
    settings_from,
    worker_settings,
)
from support.docker import dockerfile_stage

OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes these manifests are written for (CronJob timeZone, Job
# podFailurePolicy with onExitCodes alone) and the newest kubernetes-validate ships.
KUBERNETES_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
KEDA_KINDS = {"ScaledObject", "TriggerAuthentication"}
# KEDA 2.x: ScaledObject spec fields, trigger fields, and the rabbitmq scaler's parameters
# (keda.sh/docs/2.x/concepts/scaling-deployments, .../scalers/rabbitmq-queue).
SCALED_OBJECT_FIELDS = {"scaleTargetRef", "pollingInterval", "cooldownPeriod",
                        "initialCooldownPeriod", "idleReplicaCount", "minReplicaCount",
                        "maxReplicaCount", "fallback", "advanced", "triggers"}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType",
                  "useCachedMetrics"}
RABBITMQ_PARAMETERS = {"host", "protocol", "mode", "value", "activationValue", "queueName",
                       "vhostName", "hostFromEnv", "usernameFromEnv", "passwordFromEnv",
                       "unsafeSsl", "useRegex", "excludeUnacknowledged", "pageSize",
                       "operation", "timeout"}


@pytest.fixture(scope="module", params=OVERLAYS)
def render(request: pytest.FixtureRequest) -> dict[tuple[str, str], dict[str, Any]]:
    """The overlay's resources by (kind, name)."""
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in kustomize(request.param)}


def one(render: dict[tuple[str, str], dict[str, Any]], kind: str, prefix: str = "") -> Any:
    (found,) = [doc for (k, name), doc in render.items() if k == kind and name.startswith(prefix)]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def container(render: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> Any:
    (only,) = pod_spec(render[(kind, name)])["containers"]
    return only


def secret_value(render: dict[tuple[str, str], dict[str, Any]], name: str, key: str) -> str:
    """A Secret's value as a real one would read: the placeholder's shape, marker replaced."""
    from service.settings import PLACEHOLDER

    return render[("Secret", name)]["stringData"][key].replace(PLACEHOLDER, "stand-in")


def env_of(render: dict[tuple[str, str], dict[str, Any]], spec: dict[str, Any]) -> dict[str, str]:
    """A container's environment as its process gets it: its image's ENV, then envFrom
    (ConfigMap or Secret in the render), then env."""
    env = dict(image_env(IMAGE_TARGETS[spec["image"].split(":")[0]]))
    for source in spec.get("envFrom", []):
        if "configMapRef" in source:
            env.update(render[("ConfigMap", source["configMapRef"]["name"])]["data"])
        else:
            name = source["secretRef"]["name"]
            env.update({key: secret_value(render, name, key)
                        for key in render[("Secret", name)]["stringData"]})
    for entry in spec.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        secret = render.get(("Secret", ref["name"]))
        if secret and ref["key"] in secret["stringData"]:
            env[entry["name"]] = secret_value(render, ref["name"], ref["key"])
        else:
            assert ref.get("optional"), f"{entry['name']}: no {ref} in the render"
    return env


def test_both_overlays_render_every_resource(render: dict[tuple[str, str], dict[str, Any]]):
    assert {kind for kind, _ in render} == {
        "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob", "ScaledObject",
        "TriggerAuthentication"}
    assert {doc["metadata"].get("namespace") for doc in render.values()} == {"lab2prod"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_the_core_kinds_pass_kubernetes_validate_strictly(
    render: dict[tuple[str, str], dict[str, Any]], version: str
):
    for (kind, name), doc in render.items():
        if kind in KEDA_KINDS:
            continue  # no schema ships for CRDs: checked field by field below
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{kind}/{name} against Kubernetes {version}: {path}: {error.message}")


def test_every_environment_name_is_a_settings_field(
    render: dict[tuple[str, str], dict[str, Any]],
):
    names = setting_names()
    assert set(one(render, "ConfigMap", "lab2prod-settings")["data"]) <= names
    assert set(render[("Secret", "lab2prod-secrets")]["stringData"]) <= names
    for kind, name in (("Deployment", "lab2prod-api"), ("Deployment", "lab2prod-worker"),
                       ("CronJob", "lab2prod-retrain")):
        spec = container(render, kind, name)
        assert {entry["name"] for entry in spec.get("env", [])} <= names, name
        settings_from(env_of(render, spec))  # and every value is one Settings accepts


def test_the_api_probes_routes_the_app_serves_on_the_port_it_listens_on(
    render: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
):
    from service.api.app import create_app

    paths = create_app().openapi()["paths"]
    api = container(render, "Deployment", "lab2prod-api")
    options = serve_options(api["command"], env_of(render, api), monkeypatch)
    ports = {port["name"]: port["containerPort"] for port in api["ports"]}
    assert options["host"] == "0.0.0.0" and ports == {"http": options["port"]}
    probes = {kind: api[kind]["httpGet"] for kind in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for kind, probe in probes.items():
        assert probe["path"] in paths, kind
        assert ports.get(probe["port"], probe["port"]) == options["port"], kind
        assert 1 <= api[kind]["timeoutSeconds"] < api[kind]["periodSeconds"], kind
    startup = api["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120, "time to load a model"
    service = render[("Service", "lab2prod-api")]
    (port,) = service["spec"]["ports"]
    assert ports.get(port["targetPort"], port["targetPort"]) == options["port"]
    labels = render[("Deployment", "lab2prod-api")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    annotations = render[("Deployment", "lab2prod-api")]["spec"]["template"]["metadata"][
        "annotations"]
    assert int(annotations["prometheus.io/port"]) == options["port"]
    assert annotations["prometheus.io/path"] in paths


def test_the_api_leaves_the_endpoints_then_drains_within_its_grace_period(
    render: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
):
    api = container(render, "Deployment", "lab2prod-api")
    env = env_of(render, api)
    options = serve_options(api["command"], env, monkeypatch)
    # SIGTERM comes at once and the server drains itself (/ready 503, Connection: close), still
    # serving while the endpoints update: a preStop sleep would only add to the wait
    assert "preStop" not in api.get("lifecycle", {})
    drain_grace_s = settings_from(env).drain_grace_s
    assert drain_grace_s >= 5, "time for the endpoints to update"
    grace = pod_spec(render[("Deployment", "lab2prod-api")])["terminationGracePeriodSeconds"]
    assert grace > drain_grace_s + options["timeout_graceful_shutdown"]


def test_the_api_scales_on_cpu_and_keeps_one_pod_through_disruptions(
    render: dict[tuple[str, str], dict[str, Any]],
):
    deployment = render[("Deployment", "lab2prod-api")]
    assert "replicas" not in deployment["spec"], "the HPA owns replicas"
    hpa = render[("HorizontalPodAutoscaler", "lab2prod-api")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "lab2prod-api"}
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and 1 < hpa["minReplicas"] < hpa["maxReplicas"]
    assert "cpu" in container(render, "Deployment", "lab2prod-api")["resources"]["requests"], \
        "utilization is measured against the request"
    pdb = render[("PodDisruptionBudget", "lab2prod-api")]["spec"]
    assert pdb["minAvailable"] >= 1 and pdb["minAvailable"] < hpa["minReplicas"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()


def test_keda_scales_the_worker_deployment_on_the_queue_the_workers_consume(
    render: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
):
    scaled = render[("ScaledObject", "lab2prod-worker")]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_FIELDS
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert ("Deployment", target["name"]) in render
    assert "replicas" not in render[("Deployment", target["name"])]["spec"], "KEDA owns replicas"
    assert 0 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER_FIELDS and trigger["type"] == "rabbitmq"
    metadata = trigger["metadata"]
    assert set(metadata) <= RABBITMQ_PARAMETERS
    assert all(isinstance(value, str) for value in metadata.values()), "KEDA metadata: strings"
    assert metadata["mode"] == "QueueLength" and float(metadata["value"]) > 0
    assert metadata.get("protocol", "auto") in ("auto", "amqp", "http")
    assert "host" not in metadata, "the broker's credentials come from a TriggerAuthentication"
    worker = container(render, "Deployment", target["name"])
    consumed = worker_settings(worker["command"], env_of(render, worker), monkeypatch)
    assert metadata["queueName"] == consumed.queue_name
    assert metadata["queueName"] == one(render, "ConfigMap", "lab2prod-settings")["data"][
        "QUEUE_NAME"]
    auth = render[("TriggerAuthentication", trigger["authenticationRef"]["name"])]
    assert trigger["authenticationRef"].get("kind", "TriggerAuthentication") == \
        "TriggerAuthentication"
    (host,) = [ref for ref in auth["spec"]["secretTargetRef"] if ref["parameter"] == "host"]
    (amqp,) = [entry for entry in worker["env"] if entry["name"] == "AMQP_URL"]
    assert {"name": host["name"], "key": host["key"]} == amqp["valueFrom"]["secretKeyRef"], \
        "KEDA watches the broker the workers consume from"
    assert host["key"] in render[("Secret", host["name"])]["stringData"]


def test_the_worker_is_probed_on_the_metrics_port_it_serves(
    render: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
):
    worker = container(render, "Deployment", "lab2prod-worker")
    settings = worker_settings(worker["command"], env_of(render, worker), monkeypatch)
    ports = {port["name"]: port["containerPort"] for port in worker["ports"]}
    assert settings.host == "0.0.0.0" and ports == {"metrics": settings.worker_metrics_port}
    for kind in ("startupProbe", "livenessProbe"):
        probe = worker[kind]["httpGet"]
        assert probe["path"] == "/metrics"
        assert ports.get(probe["port"], probe["port"]) == settings.worker_metrics_port
    annotations = render[("Deployment", "lab2prod-worker")]["spec"]["template"]["metadata"][
        "annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.worker_metrics_port


def test_cpu_workers_scale_to_zero_and_gpu_workers_take_one_gpu_each(
    render: dict[tuple[str, str], dict[str, Any]], monkeypatch: pytest.MonkeyPatch
):
    worker = container(render, "Deployment", "lab2prod-worker")
    settings = worker_settings(worker["command"], env_of(render, worker), monkeypatch)
    api = env_of(render, container(render, "Deployment", "lab2prod-api"))
    assert settings_from(api).device == "auto", "the API stays on CPU nodes"
    scaled = render[("ScaledObject", "lab2prod-worker")]["spec"]
    if worker["image"].endswith(":gpu"):
        assert settings.device == "cuda"
        for kind in ("requests", "limits"):
            assert worker["resources"][kind]["nvidia.com/gpu"] == 1, kind
        tolerations = pod_spec(render[("Deployment", "lab2prod-worker")])["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in \
            tolerations
    else:
        assert settings.device == "auto" and "nvidia.com/gpu" not in str(worker["resources"])
        assert scaled["minReplicaCount"] == 0


def test_the_retrain_cronjob_releases_into_the_registry_the_servers_read(
    render: dict[tuple[str, str], dict[str, Any]],
):
    cronjob = render[("CronJob", "lab2prod-retrain")]
    release = container(render, "CronJob", "lab2prod-retrain")
    args = lab2prod_args(release["command"] + release.get("args", []))
    assert args.handler.__module__ == "service.commands.release"
    assert IMAGE_TARGETS[release["image"].split(":")[0]] == "lab", "papermill is in the lab image"
    lab = dockerfile_stage("lab")
    assert any("notebooks/" in copy for copy in lab.arguments("COPY"))
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    refusals = [rule for rule in job["podFailurePolicy"]["rules"] if rule["action"] == "FailJob"]
    assert refusals[0]["onExitCodes"]["values"] == [1, 2], "a refused release is not retried"
    assert refusals[0]["onExitCodes"]["containerName"] == release["name"]

    workloads = {"api": ("Deployment", "lab2prod-api"), "worker": ("Deployment", "lab2prod-worker"),
                 "release": ("CronJob", "lab2prod-retrain")}
    claims = set()
    for role, key in workloads.items():
        spec = container(render, *key)
        settings = settings_from(env_of(render, spec))
        volumes = {volume["name"]: volume for volume in pod_spec(render[key])["volumes"]}
        (mount,) = [m for m in spec["volumeMounts"]
                    if settings.registry_url.startswith(m["mountPath"].rstrip("/") + "/")]
        claims.add(volumes[mount["name"]]["persistentVolumeClaim"]["claimName"])
        assert mount.get("readOnly", False) is (role != "release"), role
        registry_url = settings.registry_url
        if role == "release":
            assert str(settings.runs_dir).startswith(mount["mountPath"]), "runs are kept"
    (claim,) = claims
    assert render[("PersistentVolumeClaim", claim)]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert registry_url == one(render, "ConfigMap", "lab2prod-settings")["data"]["REGISTRY_URL"]


def test_pods_run_as_the_images_non_root_user(render: dict[tuple[str, str], dict[str, Any]]):
    for key in (("Deployment", "lab2prod-api"), ("Deployment", "lab2prod-worker"),
                ("CronJob", "lab2prod-retrain")):
        pod = pod_spec(render[key])
        (spec,) = pod["containers"]
        image_user = dockerfile_stage(IMAGE_TARGETS[spec["image"].split(":")[0]]).arguments(
            "USER")[0]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert f"{security['runAsUser']}:{security['runAsGroup']}" == image_user, key
        assert spec["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["automountServiceAccountToken"] is False


def test_the_placeholder_secret_is_marked_and_its_admin_token_refused(
    render: dict[tuple[str, str], dict[str, Any]],
):
    from pydantic import ValidationError

    from service.settings import PLACEHOLDER, Settings

    secret = render[("Secret", "lab2prod-secrets")]["stringData"]
    assert all(PLACEHOLDER in value for value in secret.values())
    with pytest.raises(ValidationError, match=PLACEHOLDER):
        Settings(_env_file=None, admin_token=secret["ADMIN_TOKEN"])
