"""Concurrent publishes and promotions from separate processes keep the registry consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from service.registry import open_registry

PUBLISHERS, PROMOTERS = 8, 4

PUBLISH = """
import sys
from service.registry import open_registry
registry = open_registry(sys.argv[1], "mnist-cnn")
print(registry.publish(sys.argv[2], {"run_id": sys.argv[3]}))
"""
PROMOTE = """
import sys, time
from service.registry import open_registry, RegistryError
registry = open_registry(sys.argv[1], "mnist-cnn")
for _ in range(200):  # promote whatever exists as soon as something does
    versions = registry.versions()
    if versions:
        print(registry.promote(versions[0], sys.argv[2]))
        break
    time.sleep(0.01)
"""


def test_concurrent_publishes_and_promotions_lose_no_version_and_keep_aliases_valid(tmp_path):
    url = str(tmp_path / "models")
    checkpoints = []
    for index in range(PUBLISHERS):
        path = tmp_path / f"candidate-{index}.safetensors"
        path.write_bytes(f"weights-{index}".encode() * 1000)
        checkpoints.append(path)
    processes = [
        subprocess.Popen([sys.executable, "-c", PUBLISH, url, str(path), f"run-{index}"],
                         stdout=subprocess.PIPE, text=True)
        for index, path in enumerate(checkpoints)
    ]
    processes += [
        subprocess.Popen([sys.executable, "-c", PROMOTE, url, alias],
                         stdout=subprocess.PIPE, text=True)
        for alias in ("production", "stable", "canary", "production")[:PROMOTERS]
    ]
    outputs = [process.communicate(timeout=120)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes), outputs

    registry = open_registry(url, "mnist-cnn")
    expected = [f"v{n}" for n in range(1, PUBLISHERS + 1)]
    assert sorted(outputs[:PUBLISHERS], key=lambda v: int(v[1:])) == expected
    assert registry.versions() == expected
    runs = set()
    for version in expected:
        card = registry.card(version)
        assert card["version"] == version
        index = int(card["run_id"].split("-")[1])
        assert registry.checkpoint_path(version).read_bytes() == checkpoints[index].read_bytes()
        runs.add(card["run_id"])
    assert len(runs) == PUBLISHERS
    aliases = json.loads(Path(registry.root, "aliases.json").read_text())
    assert {"production", "stable", "canary"} <= set(aliases)
    assert set(aliases.values()) <= set(expected)
    leftovers = [p.name for p in Path(registry.root).iterdir()
                 if p.name.startswith((".staging", ".aliases"))]
    assert leftovers == []
