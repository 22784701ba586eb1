"""Concurrent publishes and promotions from separate processes keep the registry consistent."""

from __future__ import annotations

import json
from pathlib import Path

from support.registry import assert_nothing_lost, race

from service.registry import open_registry

PUBLISHERS = 8
PROMOTED = ("production", "stable", "canary", "production")


def test_concurrent_publishes_and_promotions_lose_no_version_and_keep_aliases_valid(tmp_path):
    url = str(tmp_path / "models")
    checkpoints = race(url, "mnist-cnn", tmp_path, PUBLISHERS, PROMOTED)
    registry = open_registry(url, "mnist-cnn")
    assert_nothing_lost(registry, checkpoints, PROMOTED)
    aliases = json.loads(Path(registry.root, "aliases.json").read_text())
    assert aliases == registry.aliases()
    leftovers = [p.name for p in Path(registry.root).iterdir()
                 if p.name.startswith((".staging", ".aliases"))]
    assert leftovers == []
