"""The Dockerfile runs the commands the tests exercise (no Docker engine here): its CMD parses
with the real CLI, its HEALTHCHECK hits a route the app has, it installs the slim set only
with the same torch requirement as pyproject.toml, as a non-root user with /models mounted.
The HEALTHCHECK command itself runs against a live server in test_serve_process.py."""

from __future__ import annotations

import re
import tomllib

from support import REPO
from support.docker import dockerfile_instructions, exec_form

from service.cli import build_parser


def instruction(name: str) -> list[str]:
    return [arguments for keyword, arguments in dockerfile_instructions() if keyword == name]


def test_the_image_command_is_lab2prod_serve_and_parses_with_the_real_cli():
    (cmd,) = instruction("CMD")
    command = exec_form(cmd)
    assert command[:2] == ["lab2prod", "serve"]
    args = build_parser(only="serve").parse_args(command[1:])
    assert args.handler.__module__ == "service.commands.serve"
    assert args.host == "0.0.0.0"


def test_the_healthcheck_calls_a_route_the_app_serves():
    from service.api.app import create_app

    (healthcheck,) = instruction("HEALTHCHECK")
    command = exec_form(healthcheck)
    assert command[:2] == ["python", "-c"], "no curl in a slim image: a python one-liner"
    (path,) = re.findall(r"https?://127\.0\.0\.1:%s(/[\w-]+)", command[2])
    assert path == "/health" and path in create_app().openapi()["paths"]


def test_the_image_installs_the_slim_set_with_the_projects_torch_requirement():
    runs = " ".join(instruction("RUN"))
    assert re.search(r"pip install \.(\s|$)", runs), "the package itself: pip install ."
    assert "[lab" not in runs and "jupyter" not in runs and "[dev" not in runs
    (torch_spec,) = [a for a in instruction("ARG") if a.startswith("TORCH_SPEC=")]
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    torch_requirement = next(
        dep for dep in pyproject["project"]["dependencies"] if dep.startswith("torch")
    )
    assert torch_spec.split("=", 1)[1].strip('"') == torch_requirement
    (index,) = [a for a in instruction("ARG") if a.startswith("TORCH_INDEX_URL=")]
    assert index.endswith("/whl/cpu"), "CPU wheels by default"
    assert any(a.startswith("BASE_IMAGE=python:3.11-slim") for a in instruction("ARG"))


def test_the_image_runs_as_a_non_root_user_with_the_registry_as_a_volume():
    (user,) = instruction("USER")
    assert user not in ("root", "0")
    assert any("/models" in volume for volume in instruction("VOLUME"))
    assert any("REGISTRY_URL=/models" in env for env in instruction("ENV"))


def test_the_build_context_leaves_out_the_lab_and_local_state():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", ".git", "runs", "models", "notebooks", "tests"} <= ignored
