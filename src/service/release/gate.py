"""The release gate: a versioned policy file and a run's records -> a verdict, per criterion.

The gate is a pure function of records: what the notebooks wrote (``train.json``,
``evaluation.json``, the checkpoint) and what the serving checks measured (``serving.json``,
``release.checks``), never cell outputs. Every criterion gives ``{name, passed, measured,
required, detail}``; the release goes ahead only when all pass. With no champion in production
(the first release) the regression criteria pass as "skipped" and only the absolute ones decide.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.inference.verification import MIN_INEXACT_SPEEDUP, RuntimeCriteria
from service.ml.records import (
    EVALUATION_RECORD,
    SERVING_RECORD,
    TRAIN_RECORD,
    EvaluationRecord,
    ModelMetrics,
    RecordError,
    TrainRecord,
    decode_classes,
    read_record,
)
from service.release.regression import ClassComparison, Comparison, compare


class PolicyError(ValueError):
    """The policy file is missing or malformed; the message names the file and the fix."""


# Fields of policy_version 1 whose meaning changed: a fixed tolerance then, a bound that holds
# beside a significance test now. A policy that still names them is refused, not reinterpreted.
RETIRED_CRITERIA = {
    "max_accuracy_drop": "regression_alpha and accuracy_drop_bound",
    "max_class_recall_drop": "regression_alpha and class_recall_drop_bound",
}


def _refuse_retired(values: Any) -> Any:
    retired = [name for name in RETIRED_CRITERIA if isinstance(values, dict) and name in values]
    if retired:
        raise ValueError(
            "; ".join(f"{name} was replaced by {RETIRED_CRITERIA[name]}" for name in retired)
            + " in policy_version 2 (a paired test against the champion plus a practical bound); "
            "see the comments in the repository's release-policy.yaml"
        )
    return values


class Criteria(BaseModel):
    """Thresholds one release must meet."""

    model_config = ConfigDict(extra="forbid")

    min_accuracy: float = Field(ge=0, le=1)
    min_class_recall: float = Field(ge=0, le=1)
    regression_alpha: float = Field(
        gt=0, lt=1, description="One-sided level of McNemar's exact test versus the champion "
        "(per class: after Holm's adjustment)."
    )
    accuracy_drop_bound: float = Field(
        ge=0, le=1, description="Versus the champion, same digits: refused beyond, significant "
        "or not."
    )
    class_recall_drop_bound: float = Field(
        ge=0, le=1, description="Per class, versus the champion: refused beyond, significant or "
        "not."
    )

    @model_validator(mode="before")
    @classmethod
    def _no_retired_fields(cls, values: Any) -> Any:
        return _refuse_retired(values)

    sample_probability_atol: float = Field(
        1e-4, ge=0, description="Serving vs notebook probabilities on the recorded sample."
    )
    min_runtime_agreement: float = Field(
        0.995, ge=0, le=1, description="Serving runtime vs eager, share of equal predictions."
    )
    max_runtime_accuracy_drop: float = Field(
        0.002, ge=0, le=1, description="Serving runtime vs eager accuracy on the evaluation split."
    )
    max_runtime_probability_diff: float = Field(
        1.0, ge=0, le=1, description="Serving runtime vs eager: largest probability difference."
    )
    min_inexact_runtime_speedup: float = Field(
        MIN_INEXACT_SPEEDUP, ge=1, description="How much faster at batch 32 an inexact variant "
        "(int8) must be to be chosen ahead of one that answers as eager does (fp32)."
    )

    def runtime_criteria(self) -> RuntimeCriteria:
        """The bars a runtime variant must meet to stand in for eager PyTorch."""
        return RuntimeCriteria(self.min_runtime_agreement, self.max_runtime_accuracy_drop,
                               self.max_runtime_probability_diff)


class CriteriaOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_accuracy: float | None = Field(None, ge=0, le=1)
    min_class_recall: float | None = Field(None, ge=0, le=1)
    regression_alpha: float | None = Field(None, gt=0, lt=1)
    accuracy_drop_bound: float | None = Field(None, ge=0, le=1)
    class_recall_drop_bound: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _no_retired_fields(cls, values: Any) -> Any:
        return _refuse_retired(values)

    sample_probability_atol: float | None = Field(None, ge=0)
    min_runtime_agreement: float | None = Field(None, ge=0, le=1)
    max_runtime_accuracy_drop: float | None = Field(None, ge=0, le=1)
    max_runtime_probability_diff: float | None = Field(None, ge=0, le=1)
    min_inexact_runtime_speedup: float | None = Field(None, ge=1)


class Policy(BaseModel):
    """``release-policy.yaml``: default criteria plus per-dataset overrides."""

    model_config = ConfigDict(extra="forbid")

    policy_version: int = Field(1, ge=1)
    criteria: Criteria
    datasets: dict[str, CriteriaOverride] = Field(default_factory=dict)

    def for_dataset(self, name: str | None) -> Criteria:
        override = self.datasets.get(name or "")
        if override is None:
            return self.criteria
        changes = override.model_dump(exclude_none=True)
        return self.criteria.model_copy(update=changes)


def load_policy(path: str | Path) -> tuple[Policy, dict[str, Any]]:
    """The policy and where it came from (path, sha256) for the run record."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise PolicyError(
            f"cannot read the release policy {path} ({exc.strerror}); pass --policy FILE or set "
            "RELEASE_POLICY"
        ) from exc
    try:
        policy = Policy.model_validate(yaml.safe_load(raw) or {})
    except yaml.YAMLError as exc:
        raise PolicyError(f"release policy {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        raise PolicyError(f"release policy {path} is invalid: {problems}") from exc
    source = {"path": str(path), "sha256": "sha256:" + hashlib.sha256(raw).hexdigest()}
    return policy, source


@dataclass
class CriterionResult:
    name: str
    passed: bool
    measured: Any
    required: str
    detail: str = ""


@dataclass
class Verdict:
    passed: bool
    dataset: str | None
    criteria: list[CriterionResult] = field(default_factory=list)
    thresholds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[CriterionResult]:
        return [criterion for criterion in self.criteria if not criterion.passed]

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "dataset": self.dataset,
            "thresholds": self.thresholds,
            "criteria": [asdict(criterion) for criterion in self.criteria],
        }


@dataclass
class NotebookOutcome:
    """How one notebook run ended: ``error`` is None when every cell ran."""

    name: str
    path: str
    error: str | None = None
    ran: bool = True


@dataclass
class RunRecords:
    """What the notebooks and the serving checks wrote into the run folder (None: missing or
    unreadable, with the reason in ``problems``)."""

    run_dir: Path
    train: TrainRecord | None
    evaluation: EvaluationRecord | None
    checkpoint: Path | None
    problems: list[str] = field(default_factory=list)
    serving: dict[str, Any] | None = None  # written after the notebooks, see release.checks

    @property
    def usable(self) -> bool:
        """The notebooks left a checkpoint and candidate metrics to measure further."""
        return self.checkpoint is not None and self.evaluation is not None


def read_records(run_dir: str | Path) -> RunRecords:
    run_dir = Path(run_dir)
    problems: list[str] = []
    train = evaluation = None
    try:
        train = read_record(run_dir / TRAIN_RECORD, TrainRecord)
    except RecordError as exc:
        problems.append(str(exc))
    try:
        evaluation = read_record(run_dir / EVALUATION_RECORD, EvaluationRecord)
    except RecordError as exc:
        problems.append(str(exc))
    checkpoint_name = (train or TrainRecord()).checkpoint
    checkpoint: Path | None = run_dir / checkpoint_name
    if not checkpoint.is_file():  # type: ignore[union-attr]
        problems.append(f"{checkpoint_name} missing")
        checkpoint = None
    serving_path = run_dir / SERVING_RECORD
    serving = json.loads(serving_path.read_text()) if serving_path.is_file() else None
    return RunRecords(run_dir, train, evaluation, checkpoint, problems, serving)


def decide(
    policy: Policy,
    *,
    notebooks: list[NotebookOutcome],
    records: RunRecords,
    champion_version: str | None,
    dataset_hint: str | None = None,
) -> Verdict:
    """Apply the policy to one run: one CriterionResult per criterion, in a fixed order."""
    evaluation = records.evaluation
    dataset_name = evaluation.dataset.name if evaluation is not None else dataset_hint
    criteria = policy.for_dataset(dataset_name)
    results = [_notebooks_executed(notebooks), _records_complete(records)]
    if evaluation is None:
        reason = "not measured: " + (
            "a notebook failed" if any(nb.error or not nb.ran for nb in notebooks)
            else "evaluation.json is missing or has no candidate metrics"
        )
        for name, required in _metric_requirements(criteria, champion_version):
            results.append(CriterionResult(name, False, None, required, reason))
    else:
        results.append(_min_accuracy(evaluation.candidate, criteria))
        results.append(_min_class_recall(evaluation.candidate, criteria))
        results.extend(no_regression(evaluation, champion_version, criteria))
        results.extend(_serving_checks(records.serving, criteria))
    return Verdict(
        passed=all(result.passed for result in results),
        dataset=dataset_name,
        criteria=results,
        thresholds=criteria.model_dump(),
    )


# --- criteria ---------------------------------------------------------------------------------


def _metric_requirements(criteria: Criteria, champion_version: str | None) -> list[tuple[str, str]]:
    against = f"champion {champion_version}" if champion_version else "no champion"
    return [
        ("min_accuracy", f">= {criteria.min_accuracy:.4f}"),
        ("min_class_recall", f">= {criteria.min_class_recall:.4f}"),
        ("no_accuracy_regression", f"{_accuracy_required(criteria)} vs {against}"),
        ("no_class_recall_regression", f"{_class_recall_required(criteria)} vs {against}"),
        ("serving_parity", "0 mismatches"),
        ("serving_runtime", criteria.runtime_criteria().describe()),
    ]


def _notebooks_executed(notebooks: list[NotebookOutcome]) -> CriterionResult:
    failed = [nb for nb in notebooks if nb.error or not nb.ran]
    details = []
    for nb in failed:
        details.append(f"{nb.name}: {nb.error} (executed notebook kept at {nb.path})"
                       if nb.error else f"{nb.name}: not run")
    return CriterionResult(
        name="notebooks_executed",
        passed=not failed and bool(notebooks),
        measured=[nb.name for nb in failed] if failed else "all cells ran",
        required="every notebook runs without error",
        detail="; ".join(details) or ", ".join(nb.name for nb in notebooks) + " executed cleanly",
    )


def _records_complete(records: RunRecords) -> CriterionResult:
    return CriterionResult(
        name="run_records",
        passed=not records.problems,
        measured="; ".join(records.problems) or "complete",
        required=f"{TRAIN_RECORD}, {EVALUATION_RECORD} and the checkpoint in the run folder",
        detail=str(records.run_dir),
    )


def _min_accuracy(candidate: ModelMetrics, criteria: Criteria) -> CriterionResult:
    accuracy = candidate.accuracy
    return CriterionResult(
        name="min_accuracy",
        passed=accuracy >= criteria.min_accuracy,
        measured=round(accuracy, 6),
        required=f">= {criteria.min_accuracy:.4f}",
        detail="candidate accuracy on the evaluation split",
    )


def _min_class_recall(candidate: ModelMetrics, criteria: Criteria) -> CriterionResult:
    recalls = candidate.recalls()
    if not recalls:
        return CriterionResult("min_class_recall", False, None,
                               f">= {criteria.min_class_recall:.4f}",
                               "no per-class metrics recorded")
    worst_class = min(recalls, key=recalls.__getitem__)
    below = {name: value for name, value in recalls.items() if value < criteria.min_class_recall}
    return CriterionResult(
        name="min_class_recall",
        passed=not below,
        measured=round(recalls[worst_class], 6),
        required=f">= {criteria.min_class_recall:.4f}",
        detail=(
            "below: " + ", ".join(f"class {name} {value:.4f}" for name, value in below.items())
            if below else f"worst class {worst_class}"
        ),
    )


def no_regression(
    evaluation: EvaluationRecord, champion_version: str | None, criteria: Criteria
) -> list[CriterionResult]:
    """The candidate against the champion on the same digits, overall and per class: refused
    when significantly worse (McNemar's exact one-sided test at ``regression_alpha``, per class
    after Holm's adjustment) or worse beyond the practical bound, significant or not."""
    overall_required = _accuracy_required(criteria)
    class_required = _class_recall_required(criteria)

    def both(passed: bool, detail: str) -> list[CriterionResult]:
        return [CriterionResult("no_accuracy_regression", passed, None, overall_required, detail),
                CriterionResult("no_class_recall_regression", passed, None, class_required,
                                detail)]

    if champion_version is None:
        return both(True, "skipped: no champion in production (first release), absolute "
                          "criteria only")
    try:
        comparison = paired_comparison(evaluation)
    except ValueError as exc:
        return both(False, f"champion {champion_version} was passed to evaluate.ipynb but {exc}")
    return [
        _accuracy_regression(comparison, evaluation, champion_version, criteria,
                             overall_required),
        _class_recall_regression(comparison, champion_version, criteria, class_required),
    ]


def paired_comparison(evaluation: EvaluationRecord) -> Comparison:
    """The paired test over the per-digit predictions that evaluation.json records."""
    if evaluation.champion is None:
        raise ValueError("evaluation.json holds no champion metrics")
    recorded = evaluation.predictions
    if recorded is None or not (recorded.labels and recorded.candidate and recorded.champion):
        raise ValueError(
            "evaluation.json holds no per-digit predictions of both models (its predictions "
            "section, written by service.ml.evaluate); re-run evaluate.ipynb with this version"
        )
    labels, candidate, champion = (
        decode_classes(text) for text in (recorded.labels, recorded.candidate, recorded.champion)
    )
    if not len(labels) == len(candidate) == len(champion):
        raise ValueError(
            f"evaluation.json records {len(labels)} labels but {len(candidate)} candidate and "
            f"{len(champion)} champion predictions"
        )
    return compare(labels, candidate, champion, evaluation.dataset.class_names)


MAX_CLASSES_LISTED = 3  # a model that learnt nothing fails every class: one line, not ten


def _accuracy_required(criteria: Criteria) -> str:
    return (f"not significantly worse (one-sided p > {criteria.regression_alpha:g}) and drop "
            f"<= {criteria.accuracy_drop_bound:.4f}")


def _class_recall_required(criteria: Criteria) -> str:
    return (f"per class: not significantly worse (Holm-adjusted one-sided p > "
            f"{criteria.regression_alpha:g}) and recall drop "
            f"<= {criteria.class_recall_drop_bound:.4f}")


def _why_worse(
    p_value: float, drop: float, alpha: float, bound: float, p_name: str = "p"
) -> list[str]:
    """Why a drop refuses the release: empty when it does not."""
    reasons = []
    if p_value <= alpha:
        reasons.append(f"significantly worse ({p_name} <= {alpha:g})")
    if drop > bound + 1e-12:
        reasons.append(f"drop {drop:.4f} beyond the bound {bound:.4f}")
    return reasons


def _accuracy_regression(
    comparison: Comparison, evaluation: EvaluationRecord, champion_version: str,
    criteria: Criteria, required: str,
) -> CriterionResult:
    counts = comparison.overall
    reasons = _why_worse(counts.p_value, counts.drop, criteria.regression_alpha,
                         criteria.accuracy_drop_bound)
    assert evaluation.champion is not None  # paired_comparison checked it
    accuracies = (evaluation.candidate.accuracy, evaluation.champion.accuracy)
    return CriterionResult(
        name="no_accuracy_regression",
        passed=not reasons,
        measured=f"drop {counts.drop:.4f}, p {counts.p_value:.3g}",
        required=required,
        detail=(f"McNemar exact on {counts.n} digits: b {counts.b} champion right & candidate "
                f"wrong, c {counts.c} candidate right & champion wrong; candidate "
                f"{accuracies[0]:.4f} vs champion {champion_version} {accuracies[1]:.4f}"
                + (f"; refused: {' and '.join(reasons)}" if reasons else "")),
    )


def _class_recall_regression(
    comparison: Comparison, champion_version: str, criteria: Criteria, required: str
) -> CriterionResult:
    alpha, bound = criteria.regression_alpha, criteria.class_recall_drop_bound

    def reasons(item: ClassComparison) -> list[str]:
        return _why_worse(item.adjusted_p, item.counts.drop, alpha, bound, "Holm p")

    classes = comparison.classes
    worse = sorted((item for item in classes if reasons(item)),
                   key=lambda item: (item.adjusted_p, -item.counts.drop))
    shown = worse[0] if worse else max(classes, key=lambda item: item.counts.drop)
    if worse:
        detail = "worse: " + "; ".join(
            f"class {item.label} (b {item.counts.b}, c {item.counts.c} of {item.counts.n} "
            f"digits, p {item.p_value:.3g}, Holm p {item.adjusted_p:.3g}): "
            + " and ".join(reasons(item))
            for item in worse[:MAX_CLASSES_LISTED]
        )
        if len(worse) > MAX_CLASSES_LISTED:
            detail += f"; and {len(worse) - MAX_CLASSES_LISTED} more classes"
    else:
        closest = min(classes, key=lambda item: item.adjusted_p)
        detail = (f"no class significantly worse (smallest Holm p {closest.adjusted_p:.3g}, "
                  f"class {closest.label}) or beyond the bound (largest drop "
                  f"{shown.counts.drop:.4f}, class {shown.label})")
    return CriterionResult(
        name="no_class_recall_regression",
        passed=not worse,
        measured=f"class {shown.label}: drop {shown.counts.drop:.4f}, Holm p "
                 f"{shown.adjusted_p:.3g}",
        required=required,
        detail=f"{detail}; Holm over {len(classes)} classes, champion {champion_version}",
    )


def _serving_checks(serving: dict[str, Any] | None, criteria: Criteria) -> list[CriterionResult]:
    """Judge what ``release.checks`` measured: the serving parity replay and the runtime."""
    parity_required = f"0 mismatches, |dp| <= {criteria.sample_probability_atol:g}"
    runtime_required = criteria.runtime_criteria().describe()
    if serving is None:
        missing = f"{SERVING_RECORD} missing: the serving checks did not run"
        return [CriterionResult("serving_parity", False, None, parity_required, missing),
                CriterionResult("serving_runtime", False, None, runtime_required, missing)]
    return [_serving_parity(serving.get("parity") or {}, criteria, parity_required),
            _serving_runtime(serving.get("runtimes") or {}, criteria, runtime_required)]


def _serving_parity(parity: dict[str, Any], criteria: Criteria, required: str) -> CriterionResult:
    """The checkpoint loaded as serving loads it (eager) replayed the notebook's sample."""
    if "error" in parity or "mismatches" not in parity:
        return CriterionResult("serving_parity", False, None, required,
                               parity.get("error", "not measured"))
    mismatches, size = int(parity["mismatches"]), int(parity["size"])
    max_diff = float(parity["max_probability_diff"])
    note = "" if parity.get("probabilities_recorded", True) else " (no probabilities recorded)"
    return CriterionResult(
        name="serving_parity",
        passed=mismatches == 0 and size > 0 and max_diff <= criteria.sample_probability_atol,
        measured=mismatches,
        required=required,
        detail=(f"{size - mismatches}/{size} sample predictions equal through "
                f"service.inference.loader.load_runtime; max |dp| {max_diff:.2e}{note}"),
    )


def _serving_runtime(
    runtimes: dict[str, Any], criteria: Criteria, required: str
) -> CriterionResult:
    """A runtime serving may use was found: with RUNTIME=auto the fastest variant that meets the
    bars (eager always does); a named RUNTIME only if that variant itself meets them."""
    if "error" in runtimes or "requested" not in runtimes:
        return CriterionResult("serving_runtime", False, None, required,
                               runtimes.get("error", "not measured"))
    requested, chosen = runtimes["requested"], runtimes.get("chosen")
    recorded = RuntimeCriteria(**runtimes.get("criteria", {}))
    if recorded != criteria.runtime_criteria():
        return CriterionResult(
            "serving_runtime", False, chosen, required,
            f"measured against other bars ({recorded.describe()}) than the policy's",
        )
    ranking = runtimes.get("min_inexact_speedup")
    if ranking != criteria.min_inexact_runtime_speedup:
        return CriterionResult(
            "serving_runtime", False, chosen, required,
            f"ranked with min_inexact_runtime_speedup {ranking}, not the policy's "
            f"{criteria.min_inexact_runtime_speedup:g}",
        )
    return CriterionResult(
        name="serving_runtime",
        passed=chosen is not None,
        measured=chosen or f"{requested} misses",
        required=(f"RUNTIME={requested}: " + (
            f"the fastest variant (an inexact one only at {ranking:g}x an exact one) with "
            if requested == "auto" else "") + required),
        detail=(f"{runtimes['summary']} ({runtimes.get('digits')} evaluation digits, "
                f"{runtimes.get('threads')} thread(s) on {runtimes.get('device')}, "
                f"{(runtimes.get('machine') or {}).get('model', 'unknown CPU')})"),
    )


def format_failures(verdict: Verdict) -> str:
    """Every failed criterion with measured vs required, one per line."""
    lines = []
    for criterion in verdict.failed:
        lines.append(
            f"  FAILED {criterion.name}: measured {criterion.measured!s}, required "
            f"{criterion.required}" + (f" ({criterion.detail})" if criterion.detail else "")
        )
    return "\n".join(lines)
