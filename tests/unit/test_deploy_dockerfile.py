"""The Dockerfile builds what the deploy files run (no Docker engine here): hadolint finds
nothing; the serving target (the default) runs `lab2prod serve`, its HEALTHCHECK hits a route
the app has, it installs the slim set with pyproject.toml's torch requirement; the lab target
adds the lab extra, the notebooks and the release policy; both run as the same non-root user
with the registry as a volume and get SIGTERM themselves; the build context holds what each
target copies and no local state. The HEALTHCHECK command itself runs against a live server in
tests/e2e/test_serve_process.py."""

from __future__ import annotations

import re
import subprocess
import tomllib

from support import REPO
from support.deploy import hadolint, image_env, lab2prod_args, settings_from
from support.docker import (
    dockerfile_stage,
    dockerfile_stages,
    exec_form,
    global_args,
    in_build_context,
)

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCAL_STATE = [
    ".git/HEAD", ".venv/bin/python", ".env", "runs/20261201-x/run.json",
    "models/mnist-cnn/aliases.json", "data/train-images-idx3-ubyte.gz",
    "notebooks/runs/try/train.ipynb", "notebooks/.ipynb_checkpoints/train-checkpoint.ipynb",
    "src/service/__pycache__/cli.cpython-311.pyc", "src/lab2prod.egg-info/PKG-INFO",
    "tests/conftest.py", ".pytest_cache/README.md",
]


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                            check=True)
    return listed.stdout.split()


def test_hadolint_finds_nothing_to_fix():
    linted = subprocess.run([hadolint(), "--no-color", str(REPO / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert linted.returncode == 0 and not linted.stdout.strip(), linted.stdout + linted.stderr


def test_the_default_target_is_the_slim_serving_image_and_the_lab_is_a_target_too():
    names = [stage.name for stage in dockerfile_stages()]
    assert names[-1] == "serve", "`docker build .` builds the last stage: the serving image"
    assert "lab" in names


def test_the_serving_image_runs_lab2prod_serve_on_the_containers_interfaces():
    serve = dockerfile_stage("serve")
    args = lab2prod_args(serve.command())
    assert args.handler.__module__ == "service.commands.serve"
    settings = settings_from(image_env("serve"))
    assert (args.host or settings.host) == "0.0.0.0"
    assert serve.arguments("EXPOSE") == [str(args.port or settings.port)]


def test_the_lab_image_runs_jupyterlab_with_options_it_knows():
    from jupyterlab.labapp import LabApp

    command = dockerfile_stage("lab").command()
    assert command[:2] == ["jupyter", "lab"]
    app = LabApp()
    app.parse_command_line(command[2:])
    assert not [key for key in app.config if not key[0].isupper()], "an option LabApp ignores"
    assert app.config.ServerApp.ip == "0.0.0.0" and app.config.ServerApp.port == 8888
    assert "8888" in dockerfile_stage("lab").arguments("EXPOSE")


def test_the_healthcheck_calls_a_route_the_app_serves():
    from service.api.app import create_app

    (healthcheck,) = dockerfile_stage("serve").arguments("HEALTHCHECK")
    command = exec_form(healthcheck)
    assert command[:2] == ["python", "-c"], "no curl in a slim image: a python one-liner"
    (path,) = re.findall(r"https?://127\.0\.0\.1:%s(/[\w-]+)", command[2])
    assert path == "/health" and path in create_app().openapi()["paths"]


def test_the_serving_image_installs_the_slim_set_with_the_projects_torch_requirement():
    build = dockerfile_stage("build")
    runs = " ".join(build.arguments("RUN"))
    assert re.search(r"pip install \.(\s|$)", runs), "the package itself: pip install ."
    assert "[lab" not in runs and "jupyter" not in runs and "[dev" not in runs
    torch_requirement = next(
        dep for dep in PYPROJECT["project"]["dependencies"] if dep.startswith("torch")
    )
    args = global_args()
    assert args["TORCH_SPEC"] == torch_requirement
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu"), "CPU wheels by default"
    assert args["BASE_IMAGE"] == "python:3.11-slim"
    assert "${TORCH_INDEX_URL}" in runs and "${TORCH_SPEC}" in runs
    serve = dockerfile_stage("serve")
    assert serve.arguments("COPY") == ["--from=build /opt/lab2prod /opt/lab2prod"], \
        "the serving image takes the slim virtualenv and nothing else"


def test_the_lab_image_adds_the_lab_extra_pinned_as_pyproject_pins_it():
    lab_extra = PYPROJECT["project"]["optional-dependencies"]["lab"]
    pins = {dep for dep in lab_extra if dep.startswith(("torch==", "torchvision=="))}
    assert set(global_args()["LAB_TORCH_SPEC"].split()) == pins
    runs = " ".join(dockerfile_stage("lab-build").arguments("RUN"))
    assert '".[lab]"' in runs and "${LAB_TORCH_SPEC}" in runs and "ipykernel install" in runs
    assert dockerfile_stage("lab-build").base == "build", "the serving set plus the lab extra"
    copies = dockerfile_stage("lab").arguments("COPY")
    assert "--from=lab-build /opt/lab2prod /opt/lab2prod" in copies
    assert any("release-policy.yaml" in copy for copy in copies)
    assert any("notebooks/" in copy for copy in copies)


def test_both_images_run_as_the_same_non_root_user_with_the_registry_as_a_volume():
    users = set()
    for target in ("serve", "lab"):
        stage = dockerfile_stage(target)
        (user,) = stage.arguments("USER")
        uid = user.split(":")[0]
        assert uid.isdigit() and uid != "0", "numeric and not root (runAsNonRoot can check it)"
        assert f"--uid {uid}" in " ".join(stage.arguments("RUN"))
        users.add(user)
        assert any("/models" in volume for volume in stage.arguments("VOLUME"))
        assert stage.env()["REGISTRY_URL"] == "/models"
    assert len(users) == 1, "one uid: the lab writes the registry volume the servers read"


def test_both_images_give_sigterm_to_the_process_itself():
    for target in ("serve", "lab"):
        stage = dockerfile_stage(target)
        (cmd,) = stage.arguments("CMD")
        assert cmd.startswith("["), "exec form: no shell in between to swallow the signal"
        assert not stage.arguments("ENTRYPOINT")
        assert stage.arguments("STOPSIGNAL") == ["SIGTERM"]


def test_the_build_context_holds_what_each_target_copies():
    tracked = tracked_files()
    for target in ("build", "lab"):
        for copy in dockerfile_stage(target).arguments("COPY"):
            words = [word for word in copy.split() if not word.startswith("--")]
            if copy.startswith("--from"):
                continue
            for source in words[:-1]:
                pattern = re.compile("^" + re.escape(source).replace(r"\*", "[^/]*")
                                     + ("" if source.endswith("/") else "$"))
                needed = [path for path in tracked if pattern.match(path)]
                assert needed, f"COPY {source}: no tracked file"
                left_out = [path for path in needed if not in_build_context(path)]
                assert not left_out, f".dockerignore leaves out what COPY {source} needs"


def test_the_build_context_leaves_out_local_state():
    sent = [path for path in LOCAL_STATE if in_build_context(path)]
    assert not sent, f".dockerignore sends local state into the build: {sent}"
