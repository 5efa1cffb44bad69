"""examples/grafana: the dashboard charts what batchgen exports, by the names it exports them under."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from batchgen.run.metrics import WorkerMetrics
from tests.conftest import ROOT

DASHBOARD = ROOT / "examples" / "grafana" / "batchgen.json"
# PromQL's own words the dashboard uses (functions, aggregations, operators).
PROMQL = {"sum", "max", "min", "avg", "rate", "increase", "time", "and", "or", "unless", "bool", "label_values"}


def exported() -> set[str]:
    registry = WorkerMetrics(job="j", worker="w", rows_share=1, rows_skipped=0).registry
    return {s.name for family in registry.collect() for s in family.samples}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects: what is left once strings, label matchers, ranges,
    grouping clauses, variables and PromQL's own words are taken out."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", e)
    e = re.sub(r"label_values\(\s*([\w:]+)\s*,\s*\w+\s*\)", r"\1", e)
    e = re.sub(r"\$\w+", "", e)
    return set(re.findall(r"\b[a-zA-Z_:][\w:]*\b", e)) - PROMQL


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    found = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    found += [(f"variable {v['name']}", v["query"]["query"]) for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return found


def test_dashboard_names_only_exported_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    ours = exported()
    used = set()
    for title, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names and names <= ours, f"{title}: {expr!r} names {sorted(names - ours)}, not exported by batchgen"
        used |= names
    # What the operator looks at: rows/s, tok/s, errors, prefix-cache hit, upload backlog, per worker.
    for metric in ("batchgen_rows_generated_total", "batchgen_output_tokens_total", "batchgen_errors_total",
                   "batchgen_cached_tokens_total", "batchgen_prompt_tokens_total", "batchgen_upload_backlog_parts"):
        assert metric in used, f"no panel charts {metric}"
    per_worker = [e for _, e in expressions(dashboard) if "rate(" in e]
    assert per_worker and all("by (worker)" in e for e in per_worker)


def test_the_check_catches_a_wrong_name():
    assert metric_names('sum by (worker) (rate(batchgen_rows_total{job_name=~"$job_name"}[5m]))') == {"batchgen_rows_total"}
    assert "batchgen_rows_total" not in exported()
    assert metric_names("label_values(batchgen_rows_share, job_name)") == {"batchgen_rows_share"}


def test_dashboard_is_well_formed():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)) and dashboard["uid"] == "batchgen"
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus' own checker, from Debian's `prometheus` package (installed here as the SLURM packages are)."""
    if shutil.which("promtool") is None:
        subprocess.run("apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus",
                       shell=True, check=False, capture_output=True, timeout=600)
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing and `apt-get install prometheus` did not bring it (needs root and Debian's mirror)")
    return path


def test_dashboard_queries_parse_as_promql(promtool, tmp_path):
    """Every panel's query, with Grafana's variables filled in, through Prometheus' own parser."""
    grafana = {"$__rate_interval": "5m", "$job_name": ".*", "$worker": ".*"}
    rules = []
    for i, (title, expr) in enumerate(expressions(json.loads(DASHBOARD.read_text()))):
        if expr.startswith("label_values("):  # a Grafana function: its PromQL is the metric selector inside
            expr = re.match(r"label_values\((.*),\s*\w+\)$", expr)[1]
        for var, value in grafana.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "batchgen-dashboard", "rules": rules}]}))
    checked = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout
