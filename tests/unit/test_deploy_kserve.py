"""The KServe overlay: the API as an InferenceService whose custom predictor is the serving image
speaking the Open Inference Protocol; checked offline against what KServe documents and what the
app really does (its CLI, its settings, the port it binds, the routes it serves)."""

from __future__ import annotations

from typing import Any

import pytest
from support.deploy import IMAGE_TARGETS, image_env, kustomize, serve_options, setting_names
from support.docker import dockerfile_stage


@pytest.fixture(scope="module")
def render() -> dict[tuple[str, str], dict[str, Any]]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in kustomize("kserve")}


def predictor(render: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    return render[("InferenceService", "mnist-cnn")]["spec"]["predictor"]


def test_the_inference_service_replaces_the_api_and_keeps_the_workers_and_retrains(render):
    kinds = {kind for kind, _ in render}
    assert "InferenceService" in kinds
    assert ("Deployment", "lab2prod-api") not in render
    assert not kinds & {"Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert {("Deployment", "lab2prod-worker"), ("CronJob", "lab2prod-retrain"),
            ("ScaledObject", "lab2prod-worker")} <= set(render)
    isvc = render[("InferenceService", "mnist-cnn")]
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["metadata"]["namespace"] == "lab2prod"


def test_its_names_resolve_to_the_generated_configmap_secret_and_volume(render):
    (container,) = predictor(render)["containers"]
    (source,) = container["envFrom"]
    assert ("ConfigMap", source["configMapRef"]["name"]) in render  # with its hash suffix
    for entry in container["env"]:
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["key"] in render[("Secret", ref["name"])]["stringData"]
    (volume,) = predictor(render)["volumes"]
    assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in render


def test_the_predictor_serves_the_v2_protocol_on_the_port_kserve_sends_to(render, monkeypatch):
    from service.api.app import create_app

    (container,) = predictor(render)["containers"]
    assert container["name"] == "kserve-container"
    config = render[("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])]["data"]
    env = {**image_env(IMAGE_TARGETS["lab2prod"]), **config,
           **{e["name"]: e.get("value", "set-from-a-secret") for e in container["env"]}}
    assert set(env) <= setting_names()
    env["REDIS_URL"] = "redis://redis:6379/0"
    options = serve_options(container["command"], env, monkeypatch)
    (port,) = container["ports"]
    assert options["host"] == "0.0.0.0" and options["port"] == port["containerPort"] == 8080
    paths = create_app().openapi()["paths"]
    for probe, path in (("readinessProbe", "/v2/health/ready"), ("livenessProbe",
                                                                 "/v2/health/live")):
        assert container[probe]["httpGet"] == {"path": path, "port": 8080}
        assert path in paths
    assert "/v2/models/{model}/infer" in paths
    assert render[("InferenceService", "mnist-cnn")]["metadata"]["name"] == config["MODEL_NAME"]


def test_the_predictor_runs_as_the_images_non_root_user(render):
    spec = predictor(render)
    (container,) = spec["containers"]
    image_user = dockerfile_stage("serve").arguments("USER")[0]
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == image_user
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["volumeMounts"] == [{"name": "registry", "mountPath": "/data",
                                          "readOnly": True}]
