"""The release policy: a versioned YAML file, validated, with per-dataset overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.release.gate import PolicyError, load_policy

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


BASE = """
criteria:
  min_accuracy: 0.95
  min_class_recall: 0.85
  max_accuracy_drop: 0.005
  max_class_recall_drop: 0.03
"""


def test_the_repository_policy_file_is_valid_and_names_its_digest():
    policy, source = load_policy(REPO / "release-policy.yaml")
    assert policy.criteria.min_accuracy == 0.95
    assert policy.criteria.min_class_recall == 0.85
    assert source["sha256"].startswith("sha256:")


def test_dataset_override_replaces_only_the_thresholds_it_names(tmp_path):
    override = "datasets:\n  fashion-mnist:\n    min_accuracy: 0.8\n"
    policy, _ = load_policy(write(tmp_path, BASE + override))
    fashion = policy.for_dataset("fashion-mnist")
    assert fashion.min_accuracy == 0.8
    assert fashion.min_class_recall == 0.85
    assert policy.for_dataset("mnist-5k").min_accuracy == 0.95
    assert policy.for_dataset(None).min_accuracy == 0.95


def test_a_misspelt_criterion_is_refused_with_its_name(tmp_path):
    with pytest.raises(PolicyError, match=r"criteria\.min_acuracy"):
        load_policy(write(tmp_path, BASE + "  min_acuracy: 0.9\n"))


def test_a_threshold_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="min_accuracy"):
        load_policy(write(tmp_path, BASE.replace("0.95", "95")))


def test_a_missing_policy_file_says_how_to_choose_one(tmp_path):
    with pytest.raises(PolicyError, match="--policy FILE or set RELEASE_POLICY"):
        load_policy(tmp_path / "absent.yaml")
