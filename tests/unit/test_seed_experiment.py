"""scripts/seed_experiment.py works out how often the gate refuses an equally good retrain: that
figure (docs/release-gate.md) must be what the gate itself would decide, outcome by outcome."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from support.scripts import load_script

from service.ml.records import EvaluationRecord, encode_classes
from service.release.gate import Criteria, no_regression

# Loose thresholds, so that on a dozen digits both the test and the bounds decide some outcomes
CRITERIA = Criteria(min_accuracy=0, min_class_recall=0, regression_alpha=0.3,
                    accuracy_drop_bound=0.1, class_recall_drop_bound=0.25)
DISAGREEMENTS = {0: 5, 1: 4, 2: 3, 3: 0}  # class -> digits on which the two models disagree
SUPPORT = 10


@pytest.fixture(scope="module")
def experiment():
    return load_script("seed_experiment")


def gate_refuses(champion_wins: tuple[bool, ...]) -> bool:
    """The gate's own verdict when each disagreement goes as ``champion_wins`` says."""
    labels = np.repeat(np.arange(len(DISAGREEMENTS)), SUPPORT)
    candidate, champion = labels.copy(), labels.copy()
    wins = iter(champion_wins)
    for label, disagreements in DISAGREEMENTS.items():
        for offset in range(disagreements):
            loser = candidate if next(wins) else champion
            loser[label * SUPPORT + offset] = (label + 1) % 10
    metrics = {"checkpoint": "model.safetensors", "accuracy": 0.0, "per_class": []}
    evaluation = EvaluationRecord.model_validate({
        "dataset": {"name": "digits"}, "candidate": metrics, "champion": metrics,
        "sample": {"size": 0, "labels": [], "predictions": []},
        "predictions": {key: encode_classes(array) for key, array in
                        (("labels", labels), ("candidate", candidate), ("champion", champion))},
    })
    return not all(result.passed for result in no_regression(evaluation, "v1", CRITERIA))


def test_the_equally_good_refusal_rate_is_the_gates_own_over_every_outcome(experiment):
    total = sum(DISAGREEMENTS.values())
    outcomes = list(itertools.product([True, False], repeat=total))
    brute_force = sum(gate_refuses(outcome) for outcome in outcomes) / len(outcomes)
    row = {
        "name": "seed-2", "kind": "reseed", "n": SUPPORT * len(DISAGREEMENTS),
        "b": total, "c": 0,
        "classes": [{"class": str(label), "n": SUPPORT, "b": d, "c": 0}
                    for label, d in DISAGREEMENTS.items()],
    }
    rates = experiment.rates([row], CRITERIA)
    assert 0 < brute_force < 1
    assert rates["equally_good"]["new"] == pytest.approx(brute_force, abs=1e-12)


def test_a_candidate_with_more_mistakes_is_refused_more_often(experiment):
    chances = [experiment.refusal_probability(12, 100, extra, CRITERIA) for extra in (0, 2, 5)]
    assert chances[0] < chances[1] < chances[2]
    # 5 more mistakes on 100 digits, over a bound of 0.1: refused when b - c > 10 or p <= 0.3
    brute_force = sum(
        experiment.comb(12, x) for x in range(13)
        if (x + 5 - (12 - x)) / 100 > 0.1 or experiment.exact_one_sided_p(x + 5, 12 - x) <= 0.3
    ) / 2**12
    assert chances[2] == pytest.approx(brute_force)
    assert experiment.refusal_probability(0, 100, 0, CRITERIA) == 0.0
