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
  regression_alpha: 0.01
  accuracy_drop_bound: 0.015
  class_recall_drop_bound: 0.08
"""


def test_the_repository_policy_file_is_valid_and_names_its_digest():
    policy, source = load_policy(REPO / "release-policy.yaml")
    assert policy.criteria.min_accuracy == 0.95
    assert policy.criteria.min_class_recall == 0.85
    assert policy.policy_version == 2
    assert policy.criteria.regression_alpha == 0.01
    assert source["sha256"].startswith("sha256:")


def test_dataset_override_replaces_only_the_thresholds_it_names(tmp_path):
    override = "datasets:\n  fashion-mnist:\n    min_accuracy: 0.8\n"
    policy, _ = load_policy(write(tmp_path, BASE + override))
    fashion = policy.for_dataset("fashion-mnist")
    assert fashion.min_accuracy == 0.8
    assert fashion.min_class_recall == 0.85
    assert policy.for_dataset("mnist-5k").min_accuracy == 0.95
    assert policy.for_dataset(None).min_accuracy == 0.95


def test_a_dataset_override_may_loosen_the_regression_test_alone(tmp_path):
    override = "datasets:\n  mnist:\n    regression_alpha: 0.001\n"
    mnist = load_policy(write(tmp_path, BASE + override))[0].for_dataset("mnist")
    assert mnist.regression_alpha == 0.001
    assert (mnist.accuracy_drop_bound, mnist.class_recall_drop_bound) == (0.015, 0.08)


@pytest.mark.parametrize("retired", ["max_accuracy_drop", "max_class_recall_drop"])
def test_a_version_1_tolerance_is_refused_rather_than_read_with_a_new_meaning(tmp_path, retired):
    with pytest.raises(PolicyError, match=rf"{retired} was replaced by regression_alpha and"):
        load_policy(write(tmp_path, BASE + f"  {retired}: 0.005\n"))
    override = f"datasets:\n  mnist:\n    {retired}: 0.005\n"
    with pytest.raises(PolicyError, match=rf"datasets\.mnist: .*{retired} was replaced"):
        load_policy(write(tmp_path, BASE + override))


def test_the_significance_level_must_lie_strictly_between_zero_and_one(tmp_path):
    with pytest.raises(PolicyError, match="regression_alpha"):
        load_policy(write(tmp_path, BASE.replace("regression_alpha: 0.01", "regression_alpha: 0")))


def test_a_misspelt_criterion_is_refused_with_its_name(tmp_path):
    with pytest.raises(PolicyError, match=r"criteria\.min_acuracy"):
        load_policy(write(tmp_path, BASE + "  min_acuracy: 0.9\n"))


def test_a_threshold_outside_zero_to_one_is_refused(tmp_path):
    with pytest.raises(PolicyError, match="min_accuracy"):
        load_policy(write(tmp_path, BASE.replace("0.95", "95")))


def test_a_missing_policy_file_says_how_to_choose_one(tmp_path):
    with pytest.raises(PolicyError, match="--policy FILE or set RELEASE_POLICY"):
        load_policy(tmp_path / "absent.yaml")
