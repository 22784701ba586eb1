"""Would the release gate refuse a retrain that only changes the seed? The old rule and the new.

Trains the default recipe (``service.ml.train.TrainConfig``: mnist-5k, 10 epochs) with seed 1 as
the champion, eight candidates with seeds 2..9, and two clearly worse models (the recipe with 1
epoch, and with lr 0, which learns nothing). Each candidate is evaluated against the champion on
the 1,000 evaluation digits by ``service.ml.evaluate.evaluate`` (what evaluate.ipynb runs), and
its evaluation record is judged twice:

- the old rule (policy_version 1): refused when accuracy drops by more than 0.005, or any class
  recall by more than 0.03, against the champion;
- the gate's regression criteria under release-policy.yaml, through
  ``service.release.gate.no_regression`` (McNemar's exact one-sided test, Holm across classes,
  and the practical bounds).

Because the same digits are evaluated each time, every seed can also stand in as the champion
for every other (9 x 8 ordered pairs, from the same evaluations): the champion a weekly retrain
meets is whichever seed happened to be released last, lucky or not.

It writes docs/release-gate.md (a row per candidate: accuracy, b, c, p, both verdicts; the
refusal counts; the printed refusals of the clearly worse models; the pairs) and
docs/release-gate.json. It also works out exactly how often each rule refuses a retrain that is
as good as the champion and disagrees with it on as many digits as the seeds did, and how often
the gate refuses one that besides gets 10, 20 or 30 more digits wrong (1, 2, 3 points).

    .venv/bin/python scripts/seed_experiment.py             # ~11 trainings of ~1 min on 2 cores
    .venv/bin/python scripts/seed_experiment.py --seeds 2 3 --out /tmp/try

Checkpoints stay under --work-dir; a rerun reuses every one whose recipe is unchanged (so a new
policy is judged in a minute), --retrain trains them all again. On the CPU the same seed gives
the same model, so anyone rerunning it gets the same table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from itertools import permutations
from math import comb
from pathlib import Path
from typing import Any

# service.ml first: it sets torch's OpenMP wait policy, which must happen before torch loads.
from service.ml.evaluate import EvaluateConfig, evaluate  # isort: skip
from service.ml.records import EvaluationRecord
from service.ml.train import TrainConfig, load_training_data, train, write_run
from service.provenance import library_versions
from service.release.gate import (
    Criteria,
    CriterionResult,
    Verdict,
    format_failures,
    load_policy,
    no_regression,
    paired_comparison,
)
from service.release.regression import exact_one_sided_p

REPO = Path(__file__).resolve().parents[1]
CHAMPION_SEED = 1
OLD_ACCURACY_TOLERANCE = 0.005  # policy_version 1: max_accuracy_drop
OLD_RECALL_TOLERANCE = 0.03  # policy_version 1: max_class_recall_drop
EXTRA_MISTAKES = (0, 10, 20, 30)  # digits: 0 to 3 points on 1,000


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: str  # "reseed" or "worse"
    config: TrainConfig


def recipes(seeds: list[int], device: str, limit: int = 0) -> tuple[Recipe, list[Recipe]]:
    default = TrainConfig(device=device, limit=limit)
    champion = Recipe("seed-1", "champion", replace(default, seed=CHAMPION_SEED))
    candidates = [Recipe(f"seed-{seed}", "reseed", replace(default, seed=seed)) for seed in seeds]
    candidates += [
        Recipe("1-epoch", "worse", replace(default, epochs=1)),
        Recipe("lr-0", "worse", replace(default, lr=0.0)),
    ]
    return champion, candidates


def trained(recipe: Recipe, work_dir: Path, dataset: Any, retrain: bool) -> Path:
    """The recipe's checkpoint, trained now unless the work folder holds one from this recipe."""
    run_dir = work_dir / recipe.name
    config = replace(recipe.config, run_dir=str(run_dir))
    record, checkpoint = run_dir / "train.json", run_dir / "model.safetensors"
    kept = (not retrain and record.is_file() and checkpoint.is_file()
            and json.loads(record.read_text()).get("params") == asdict(config))
    if kept:
        print(f"{recipe.name}: reusing {run_dir}", flush=True)
        return checkpoint
    started = time.perf_counter()
    result = train(config, progress=False, dataset=dataset)
    write_run(result)
    print(f"{recipe.name}: trained in {time.perf_counter() - started:.0f} s, test accuracy "
          f"{result.epochs[-1]['test_accuracy']:.4f}", flush=True)
    return checkpoint


def old_rule(record: dict[str, Any]) -> list[str]:
    """policy_version 1's fixed tolerance: why it refuses (empty when it does not)."""
    candidate, champion = record["candidate"], record["champion"]
    reasons = []
    drop = champion["accuracy"] - candidate["accuracy"]
    if drop > OLD_ACCURACY_TOLERANCE + 1e-12:
        reasons.append(f"accuracy drop {drop:.4f} > {OLD_ACCURACY_TOLERANCE}")
    recalls = {row["class"]: row["recall"] for row in candidate["per_class"] if row["support"]}
    for row in champion["per_class"]:
        if row["support"] and row["recall"] - recalls[row["class"]] > OLD_RECALL_TOLERANCE + 1e-12:
            reasons.append(f"class {row['class']} recall drop "
                           f"{row['recall'] - recalls[row['class']]:.4f} > {OLD_RECALL_TOLERANCE}")
    return reasons


def judge(
    name: str, kind: str, record: dict[str, Any], criteria: Criteria, champion: str
) -> dict[str, Any]:
    """One candidate's row: the paired figures, the old rule's and the gate's verdicts."""
    typed = EvaluationRecord.model_validate(record)
    comparison = paired_comparison(typed)
    results: list[CriterionResult] = no_regression(typed, champion, criteria)
    overall = comparison.overall
    worst = max(comparison.classes, key=lambda item: item.counts.drop)
    old = old_rule(record)
    verdict = Verdict(all(result.passed for result in results), None, results)
    return {
        "name": name,
        "kind": kind,
        "champion": champion,
        "accuracy": record["candidate"]["accuracy"],
        "champion_accuracy": record["champion"]["accuracy"],
        "n": overall.n, "b": overall.b, "c": overall.c,
        "drop": overall.drop, "p": overall.p_value,
        "worst_class": {"class": worst.label, "drop": worst.counts.drop,
                        "b": worst.counts.b, "c": worst.counts.c, "n": worst.counts.n,
                        "holm_p": worst.adjusted_p},
        "classes": [{"class": item.label, "n": item.counts.n, "b": item.counts.b,
                     "c": item.counts.c, "p": item.p_value, "holm_p": item.adjusted_p}
                    for item in comparison.classes],
        "old": {"refused": bool(old), "reasons": old},
        "new": {"refused": not verdict.passed,
                "criteria": [asdict(result) for result in results],
                "printed": format_failures(verdict)},
    }


def pair_record(
    candidate: dict[str, Any], champion: dict[str, Any], common: dict[str, Any]
) -> dict[str, Any]:
    """The evaluation record of one model against another, both already evaluated on the same
    digits: what evaluate() would write with the second as champion."""
    return {
        "dataset": common["dataset"],
        "candidate": candidate["metrics"],
        "champion": champion["metrics"],
        "predictions": {**common["predictions"], "candidate": candidate["predictions"],
                        "champion": champion["predictions"]},
    }


def every_pair(
    records: dict[str, dict[str, Any]], champion: str, criteria: Criteria
) -> list[dict[str, Any]]:
    """Every reseed (the champion's seed too) judged against every other as champion."""
    common = next(iter(records.values()))
    models = {champion: {"metrics": common["champion"],
                         "predictions": common["predictions"]["champion"]}}
    models |= {name: {"metrics": record["candidate"],
                      "predictions": record["predictions"]["candidate"]}
               for name, record in records.items()}
    return [
        judge(candidate, "pair", pair_record(models[candidate], models[holder], common),
              criteria, holder)
        for holder, candidate in permutations(models, 2)
    ]


def refusal_probability(d: int, n: int, extra: int, criteria: Criteria) -> float:
    """Exactly: how often no_accuracy_regression refuses a candidate that disagrees with the
    champion by chance on d of n digits (each a fair coin) and besides gets ``extra`` digits
    wrong that the champion gets right."""
    return sum(comb(d, x) for x in range(d + 1)
               if _new_refuses(x + extra, d - x, n, criteria.regression_alpha,
                               criteria.accuracy_drop_bound)) / 2**d


def _new_refuses(b: int, c: int, n: int, alpha: float, bound: float) -> bool:
    """The policy's rule (see release-policy.yaml): significantly worse, or beyond the bound."""
    return exact_one_sided_p(b, c) <= alpha or (b - c) / n > bound + 1e-12


def _old_refuses(b: int, c: int, n: int, tolerance: float) -> bool:
    return (b - c) / n > tolerance + 1e-12


Refuses = Callable[[int, int, int], bool]


def null_refusal(row: dict[str, Any], overall: Refuses, per_class: Refuses) -> float:
    """How often a rule refuses a candidate exactly as good as the champion that disagrees with
    it on the digits this row's candidate did: every such digit then goes either way with
    probability 1/2, independently, and classes are disjoint sets of digits, so the chance
    follows exactly from a walk over the classes (state: champion-only wins so far, and
    whether any class has refused yet)."""
    states: dict[tuple[int, bool], float] = {(0, False): 1.0}
    for item in row["classes"]:
        d, n = item["b"] + item["c"], item["n"]
        following: dict[tuple[int, bool], float] = defaultdict(float)
        for (wins, refused), chance in states.items():
            for b in range(d + 1):
                key = (wins + b, refused or per_class(b, d - b, n))
                following[key] += chance * comb(d, b) / 2**d
        states = following
    d = row["b"] + row["c"]
    return sum(chance for (wins, refused), chance in states.items()
               if refused or overall(wins, d - wins, row["n"]))


def rates(pairs: list[dict[str, Any]], criteria: Criteria) -> dict[str, Any]:
    """The two rules' chances over the disagreements the pairs of seeds showed."""
    alpha = criteria.regression_alpha
    family = len(pairs[0]["classes"])

    def new_overall(b: int, c: int, n: int) -> bool:
        return _new_refuses(b, c, n, alpha, criteria.accuracy_drop_bound)

    def new_class(b: int, c: int, n: int) -> bool:
        # Holm flags some class exactly when the smallest p is <= alpha / (number of classes)
        return _new_refuses(b, c, n, alpha / family, criteria.class_recall_drop_bound)

    def old_overall(b: int, c: int, n: int) -> bool:
        return _old_refuses(b, c, n, OLD_ACCURACY_TOLERANCE)

    def old_class(b: int, c: int, n: int) -> bool:
        return _old_refuses(b, c, n, OLD_RECALL_TOLERANCE)

    old = [null_refusal(row, old_overall, old_class) for row in pairs]
    new = [null_refusal(row, new_overall, new_class) for row in pairs]
    disagreements = [row["b"] + row["c"] for row in pairs]
    d, n = round(sum(disagreements) / len(pairs)), pairs[0]["n"]
    return {
        "equally_good": {"old": sum(old) / len(old), "new": sum(new) / len(new),
                         "old_worst_pair": max(old), "new_worst_pair": max(new)},
        "disagreements": {"mean": sum(disagreements) / len(pairs), "min": min(disagreements),
                          "max": max(disagreements)},
        "n": n,
        "overall_by_extra_mistakes": {str(extra): refusal_probability(d, n, extra, criteria)
                                      for extra in EXTRA_MISTAKES},
    }


def _old_verdict(row: dict[str, Any]) -> str:
    if not row["old"]["refused"]:
        return "released"
    accuracy = [reason for reason in row["old"]["reasons"] if reason.startswith("accuracy")]
    classes = len(row["old"]["reasons"]) - len(accuracy)
    return "**refused**: " + ", ".join(
        ["accuracy"] * bool(accuracy) + [f"{classes} class{'es' * (classes > 1)}"] * bool(classes)
    )


def _new_verdict(row: dict[str, Any]) -> str:
    failed = row["new"].get("failed") or [
        c["name"] for c in row["new"].get("criteria", []) if not c["passed"]]
    return "**refused**: " + ", ".join(failed) if failed else "released"


def markdown(report: dict[str, Any]) -> str:
    policy, rows, pairs, odds = report["policy"], report["rows"], report["pairs"], report["rates"]
    criteria = policy["criteria"]
    reseeds = [row for row in rows if row["kind"] == "reseed"]
    worse = [row for row in rows if row["kind"] == "worse"]
    champion = report["champion"]
    recipe = f"{champion['dataset']}, {champion['epochs']} epochs" + (
        f", only {champion['limit']} training digits" if champion["limit"] else "")

    def refused(group: list[dict[str, Any]], rule: str) -> int:
        return sum(row[rule]["refused"] for row in group)

    lines = [
        "# The release gate against reseeding: the old rule and the paired test",
        "",
        f"Generated by `scripts/seed_experiment.py` ({report['generated']}, {report['machine']}, "
        f"torch {report['torch']}). Champion: the default recipe ({recipe}) with seed 1, "
        f"accuracy {report['champion_accuracy']:.4f}. Candidates: the same recipe with "
        "another seed, and two clearly worse models (1 epoch; lr 0), each evaluated against the "
        "champion on the same 1,000 evaluation digits by `service.ml.evaluate`.",
        "",
        f"- old rule (policy_version 1): refused when accuracy drops by more than "
        f"{OLD_ACCURACY_TOLERANCE} or any class recall by more than {OLD_RECALL_TOLERANCE};",
        f"- new gate (release-policy.yaml, policy_version {policy['version']}), through "
        "`service.release.gate.no_regression`: refused when McNemar's exact one-sided p <= "
        f"{criteria['regression_alpha']:g} (per class: Holm-adjusted) or the drop exceeds "
        f"{criteria['accuracy_drop_bound']:g} (per class: {criteria['class_recall_drop_bound']:g}"
        ").",
        "",
        "b: digits the champion gets right and the candidate wrong; c: the reverse; "
        "p = P(X >= b), X ~ Binomial(b + c, 1/2); drop = (b - c) / n, n = 1000 (a class: "
        "its digits).",
        "",
        "| candidate | accuracy | b | c | p | drop | largest class drop: class, drop (b, c of "
        "n), Holm p | old rule | new gate |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        lines.append(_table_row(row, row["name"]))
    lines += [
        "",
        f"**Reseeds refused: old rule {refused(reseeds, 'old')} of {len(reseeds)}, new gate "
        f"{refused(reseeds, 'new')} of {len(reseeds)}. Clearly worse models refused: old rule "
        f"{refused(worse, 'old')} of {len(worse)}, new gate {refused(worse, 'new')} of "
        f"{len(worse)}.**",
        "",
        "What `lab2prod release` prints for the clearly worse models:",
        "",
        "```",
    ]
    for row in worse:
        lines += [f"# {row['name']}", row["new"]["printed"]]
    either = [pair for pair in pairs if pair["old"]["refused"] or pair["new"]["refused"]]
    lines += [
        "```",
        "",
        "## Every seed as the champion",
        "",
        "The champion a weekly retrain meets is whichever seed was released last. The same "
        f"evaluations give every ordered pair of the {len(reseeds) + 1} seeds ({len(pairs)} "
        f"pairs): **old rule refused {refused(pairs, 'old')}, new gate "
        f"{refused(pairs, 'new')}.** The pairs either rule refused:",
        "",
        "| candidate vs champion | accuracy | b | c | p | drop | largest class drop: class, "
        "drop (b, c of n), Holm p | old rule | new gate |",
        "|---|---:|---:|---:|---:|---:|---|---|---|",
    ]
    lines += [_table_row(pair, f"{pair['name']} vs {pair['champion']}") for pair in either]
    if not either:
        lines.append("| none | | | | | | | | |")
    equal, spread = odds["equally_good"], odds["disagreements"]
    lines += [
        "",
        "## How often, beyond these seeds",
        "",
        f"{len(pairs)} pairs cannot measure a rate of a few percent, so it is worked out "
        "exactly. Take a retrain exactly as good as its champion that disagrees with it on the "
        "same digits of each class as a pair of seeds did: each such digit then goes either way "
        "with probability 1/2, independently. Averaged over the pairs (disagreeing on "
        f"{spread['min']} to {spread['max']} digits, {spread['mean']:.1f} on average), both "
        "criteria together refuse it:",
        "",
        "| rule | per retrain (worst pair) | weekly retrains refused a year |",
        "|---|---:|---:|",
        f"| old rule | {equal['old']:.1%} ({equal['old_worst_pair']:.1%}) | "
        f"{52 * equal['old']:.1f} |",
        f"| new gate | {equal['new']:.1%} ({equal['new_worst_pair']:.1%}) | "
        f"{52 * equal['new']:.1f} |",
        "",
        "And how often the overall criterion refuses a candidate that, beyond disagreeing by "
        f"chance on {round(spread['mean'])} digits, gets more digits wrong that the champion gets "
        "right:",
        "",
        "| more digits wrong | " + " | ".join(f"{extra} ({int(extra) / odds['n']:.0%})"
                                          for extra in odds["overall_by_extra_mistakes"]) + " |",
        "|---|" + "---:|" * len(odds["overall_by_extra_mistakes"]),
        "| refused | " + " | ".join(f"{value:.1%}"
                                 for value in odds["overall_by_extra_mistakes"].values()) + " |",
        "",
    ]
    return "\n".join(lines)


def _table_row(row: dict[str, Any], label: str) -> str:
    worst = row["worst_class"]
    return (
        f"| {label} | {row['accuracy']:.4f} | {row['b']} | {row['c']} | {row['p']:.3g} | "
        f"{row['drop']:+.4f} | {worst['class']}: {worst['drop']:+.3f} ({worst['b']}, "
        f"{worst['c']} of {worst['n']}), {worst['holm_p']:.3g} | {_old_verdict(row)} | "
        f"{_new_verdict(row)} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(2, 10)))
    parser.add_argument("--device", default="auto", help="training and evaluation device")
    parser.add_argument("--policy", type=Path, default=REPO / "release-policy.yaml")
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "seed-experiment")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "release-gate",
                        help="writes OUT.md and OUT.json")
    parser.add_argument("--retrain", action="store_true", help="ignore kept checkpoints")
    parser.add_argument("--limit", type=int, default=0,
                        help="train on N digits only: a quick look at the script, not the gate")
    args = parser.parse_args()

    policy, _ = load_policy(args.policy)
    champion, candidates = recipes(args.seeds, args.device, args.limit)
    dataset = load_training_data(champion.config)
    criteria = policy.for_dataset(dataset.name)
    champion_path = trained(champion, args.work_dir, dataset, args.retrain)
    rows: list[dict[str, Any]] = []
    reseed_records: dict[str, dict[str, Any]] = {}
    for recipe in candidates:
        checkpoint = trained(recipe, args.work_dir, dataset, args.retrain)
        record = evaluate(EvaluateConfig(
            run_dir=str(checkpoint.parent), checkpoint=str(checkpoint),
            champion_checkpoint=str(champion_path), device=args.device,
        ), latency_repeats=1).record
        if recipe.kind == "reseed":
            reseed_records[recipe.name] = record
        row = judge(recipe.name, recipe.kind, record, criteria, champion.name)
        rows.append(row)
        print(f"{row['name']}: accuracy {row['accuracy']:.4f}, b {row['b']}, c {row['c']}, "
              f"p {row['p']:.3g}, drop {row['drop']:+.4f}; old rule "
              f"{'refused' if row['old']['refused'] else 'released'}, new gate "
              f"{'refused' if row['new']['refused'] else 'released'}", flush=True)
        if row["new"]["printed"]:
            print(row["new"]["printed"], flush=True)
    pairs = every_pair(reseed_records, champion.name, criteria)
    print(f"{len(pairs)} pairs of seeds: old rule refused {sum(p['old']['refused'] for p in pairs)}"
          f", new gate {sum(p['new']['refused'] for p in pairs)}", flush=True)
    record = next(iter(reseed_records.values()))
    report = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {record['device']}",
        "torch": library_versions().get("torch"),
        "policy": {"version": policy.policy_version, "criteria": criteria.model_dump()},
        "old_rule": {"max_accuracy_drop": OLD_ACCURACY_TOLERANCE,
                     "max_class_recall_drop": OLD_RECALL_TOLERANCE},
        "champion": asdict(champion.config) | {"run_dir": champion_path.parent.name},
        "champion_accuracy": record["champion"]["accuracy"],
        "rows": rows,
        "pairs": [{key: pair[key] for key in ("name", "champion", "accuracy",
                                              "champion_accuracy", "b", "c", "p", "drop",
                                              "worst_class", "old")}
                  | {"new": {"refused": pair["new"]["refused"],
                             "failed": [c["name"] for c in pair["new"]["criteria"]
                                        if not c["passed"]]}}
                  for pair in pairs],
        "rates": rates(pairs, criteria),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(f"wrote {args.out.with_suffix('.md')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
