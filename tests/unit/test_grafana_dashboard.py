"""deploy/grafana/lab2prod.json is a Grafana dashboard of metrics that exist: valid dashboard JSON
whose every query names only metrics the service exports (monitoring/metrics.py), so a renamed
metric fails here instead of leaving an empty panel."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from support import REPO

from service.monitoring import metrics

DASHBOARD = REPO / "deploy" / "grafana" / "lab2prod.json"
# The series each metric type exposes, by suffix of the metric's name (prometheus_client's).
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}
PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan"}


def exported_series() -> set[str]:
    """Every series name the service's metrics expose."""
    names = set()
    for collector in vars(metrics).values():
        if isinstance(collector, MetricWrapperBase):
            for metric in collector.describe():
                names.update(metric.name + suffix for suffix in SERIES_SUFFIXES[metric.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in {...}, by/without/on/ignoring/group_x (...)), durations or
    Grafana variables."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # Grafana variables ($version, $__rate_interval)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    return {
        match[1] for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text)
        if not match[2] and match[1] not in PROMQL_KEYWORDS
    }


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    found = [(f"panel {panel['title']!r}", target["expr"])
             for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]  # label_values(<series selector>, <label>)
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert selector, query
            found.append((f"variable ${variable['name']}", selector[1]))
    return found


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def test_the_dashboard_is_grafana_dashboard_json(dashboard):
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"h", "w", "x", "y"}, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"].strip(), panel["title"]
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_every_query_names_only_metrics_the_service_exports(dashboard):
    exported = exported_series()
    for where, expr in queries(dashboard):
        named = metric_names(expr)
        assert named, f"{where}: no metric found in {expr!r}"
        assert named <= exported, f"{where}: {sorted(named - exported)} are not exported"


def test_the_panels_cover_what_the_service_is_watched_for(dashboard):
    named = {name for _, expr in queries(dashboard) for name in metric_names(expr)}
    for series in ("lab2prod_http_requests_total", "lab2prod_http_request_duration_seconds_bucket",
                   "lab2prod_cache_requests_total", "lab2prod_queue_depth",
                   "lab2prod_batch_size_bucket", "lab2prod_shadow_predictions_total",
                   "lab2prod_runtime_agreement", "lab2prod_drift_psi", "lab2prod_drift_alert"):
        assert series in named, series


@pytest.mark.parametrize(("expr", "names"), [
    ('histogram_quantile(0.99, sum by (le, model_version) (rate(lab2prod_http_request_duration'
     '_seconds_bucket{route="/predict", model_version=~"$version"}[$__rate_interval])))',
     {"lab2prod_http_request_duration_seconds_bucket"}),
    ("sum(rate(a_total[5m] offset 1h)) / ignoring(x) group_left(y) b + 1e-3 > bool 0.5",
     {"a_total", "b"}),
    ('max by (model_version) (lab2prod_drift_alert) or on() vector(0)', {"lab2prod_drift_alert"}),
    ('rate(lab2prod_http_requests{status=~"5.."}[1m])', {"lab2prod_http_requests"}),
])
def test_metric_names_are_read_from_promql(expr, names):
    assert metric_names(expr) == names


def test_a_misspelt_or_suffixless_metric_is_not_taken_as_exported():
    exported = exported_series()
    assert {"lab2prod_http_requests_total", "lab2prod_batch_size_count",
            "lab2prod_model_info", "lab2prod_drift_psi"} <= exported
    assert "lab2prod_http_requests" not in exported  # a counter is read as <name>_total
    assert "lab2prod_batch_size" not in exported  # a histogram only through its series
