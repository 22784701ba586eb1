"""README stays true: every command, make target, setting and endpoint it names exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from service.api.app import create_app
from service.api.openapi import websocket_routes
from service.cli import SUBCOMMANDS, build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_the_ci_script_runs_the_test_command_readme_gives():
    assert "make test" in README
    assert re.search(r"^make test$", (ROOT / ".ci" / "run").read_text(), re.MULTILINE)


def test_every_make_target_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.MULTILINE))
    named = set(re.findall(r"`make ([a-z-]+)`", README)) | set(
        re.findall(r"^make ([a-z-]+)", README, re.MULTILINE)
    )
    assert named, "README names no make target"
    assert named <= targets


def test_every_lab2prod_command_in_readme_code_blocks_parses():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.DOTALL)
    commands = [
        line.split("#", 1)[0].strip().rstrip("&").strip()
        for block in blocks
        for line in block.splitlines()
        if re.match(r"^(?:[A-Z_]+=\S+ )*(?:\.venv/bin/)?lab2prod ", line.strip())
    ]
    assert len(commands) >= 8
    for command in commands:
        argv = shlex.split(command.split("lab2prod ", 1)[1])
        assert argv[0] in SUBCOMMANDS, command
        args = build_parser(only=argv[0]).parse_args(argv)
        assert callable(args.handler), command


def test_every_setting_readme_names_is_a_settings_field():
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    fields = {name.upper() for name in Settings.model_fields}
    assert names and names <= fields
    assert fields <= names, f"settings missing from README: {sorted(fields - names)}"


def test_every_endpoint_readme_names_is_served():
    # with an admin token, so that the admin API exists too
    app = create_app(Settings(_env_file=None, admin_token="t" * 16))  # type: ignore[call-arg]
    # WebSockets are served but, having no HTTP operation, are not in the OpenAPI paths.
    paths = set(app.openapi()["paths"]) | set(websocket_routes(app)) | {app.docs_url}
    named = {
        path
        for path in re.findall(r"`(?:GET |POST )?(/[a-z0-9/_{}-]+)`", README)
        if not path.startswith("/usr/")  # a data folder, not an endpoint
    }
    assert {"/predict", "/predict/batch", "/health", "/ready", "/model-info", "/metrics"} <= named
    for path in named:
        assert path in paths, f"README names {path}, which the app does not serve"
