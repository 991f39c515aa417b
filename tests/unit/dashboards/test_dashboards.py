"""Grafana dashboards: the JSON Grafana needs, a clean layout, every query parses, every series is in the contract.

Fast and without a server: PromQL is parsed by `promtool check rules` (each query wrapped as a recording rule).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
import yaml
from dashboards import build, contract

from tests.support import exporters

PROMTOOL = shutil.which("promtool")
DASHBOARDS = contract.load_dashboards()
PANEL_TYPES = {"timeseries", "stat", "bargauge", "table", "gauge"}


def _panels(dash: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in contract.iter_panels(dash) if p["type"] != "row"]


def test_committed_json_is_what_the_builder_writes() -> None:
    assert build.main(["--check"]) == 0, "run: .venv/bin/python dashboards/build.py"
    assert set(DASHBOARDS) == set(build.DASHBOARDS)


def test_uids_are_stable_and_unique() -> None:
    uids = {name: dash["uid"] for name, dash in DASHBOARDS.items()}
    assert uids == {"executive": "ganops-executive", "oncall": "ganops-oncall", "serving": "ganops-serving",
                    "training": "ganops-training"}


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_top_level_fields(name: str) -> None:
    dash = DASHBOARDS[name]
    text = (contract.GRAFANA_DIR / f"{name}.json").read_text()
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "tags"):
        assert key in dash, f"{name}: {key} missing"
    assert dash["schemaVersion"] >= 39
    assert re.fullmatch(r"[a-z0-9-]{1,40}", dash["uid"])
    assert dash["title"].startswith("ganops / ")
    assert dash["id"] is None, "an exported id would clash on import"
    assert "__inputs" not in dash and "__inputs" not in text, "use a datasource variable, not __inputs"
    assert "${DS_" not in text and "DS_PROMETHEUS" not in text


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_templating_has_a_datasource_variable_and_label_values_variables(name: str) -> None:
    variables = {v["name"]: v for v in DASHBOARDS[name]["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None and ds["type"] == "datasource" and ds["query"] == "prometheus"
    assert "namespace" in variables
    wanted = {"training": {"job"}, "executive": {"model"}, "serving": {"model"}}.get(name, set())
    assert wanted <= set(variables), f"{name}: variables {wanted - set(variables)} missing"
    for var in variables.values():
        if var["type"] != "query":
            continue
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        query = var["query"]["query"]
        assert var["definition"] == query
        _, label = contract.label_values_selector(query)
        assert label == var["name"]
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_have_what_grafana_needs(name: str) -> None:
    dash = DASHBOARDS[name]
    ids = [p["id"] for p in contract.iter_panels(dash)]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    for panel in _panels(dash):
        where = f"{name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel["type"] in PANEL_TYPES, where
        assert panel["title"].strip(), where
        assert panel.get("description", "").strip(), f"{where}: no description"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{where}: fieldConfig.defaults.unit missing"
        assert panel["targets"], f"{where}: no targets"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{where}: duplicate refIds"
        for target in panel["targets"]:
            assert target["expr"].strip(), where
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_grid_fits_24_columns_without_overlaps(name: str) -> None:
    boxes = []
    for panel in contract.iter_panels(DASHBOARDS[name]):
        g = panel["gridPos"]
        assert set(g) >= {"h", "w", "x", "y"}
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0
        assert g["x"] + g["w"] <= 24, f"{name}: panel {panel['id']} overflows 24 columns"
        boxes.append((panel["id"], g))
    for (a, ga), (b, gb) in combinations(boxes, 2):
        overlap = (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                   and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"])
        assert not overlap, f"{name}: panels {a} and {b} overlap"


def test_queries_use_rate_interval_and_regex_matchers_for_variables() -> None:
    for q in contract.panel_queries(DASHBOARDS):
        for m in re.finditer(r"\b(?:i?rate)\((?:[^()]|\([^()]*\))*?\[([^\]]+)\]\)", q.expr):
            assert m.group(1) == "$__rate_interval", f"{q.where}: rate() over [{m.group(1)}]"
        assert not re.search(r'=\s*"\$(namespace|job|model)"', q.expr), f"{q.where}: use =~ for multi-value vars"
        for var in ("namespace", "job", "model"):
            if f"${var}" in q.expr:
                assert f'{var}=~"${var}"' in q.expr, q.where


def _parse_with_promtool(exprs: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    rules = [{"record": f"dashboard:query_{i}:check", "expr": expr} for i, expr in enumerate(exprs.values())]
    path = tmp_path / "queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))
    return subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, check=False)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus)")
def test_every_query_parses(tmp_path: Path) -> None:
    exprs = {q.where: contract.interpolate(q.expr) for q in contract.panel_queries(DASHBOARDS)}
    for dash, var, query in contract.variable_queries(DASHBOARDS):
        exprs[f"{dash}.json variable {var}"] = contract.interpolate(contract.label_values_selector(query)[0])
    for where, expr in exprs.items():
        leftover = re.findall(r"\$(?!\d)\w+|\$\{", expr)
        assert not leftover, f"{where}: unresolved Grafana variable {leftover} in {expr!r}"
    result = _parse_with_promtool(exprs, tmp_path)
    if result.returncode != 0:  # find the culprits, one by one
        bad = []
        for where, expr in exprs.items():
            single = _parse_with_promtool({where: expr}, tmp_path)
            if single.returncode != 0:
                bad.append(f"{where}:\n  {expr}\n  {single.stdout.strip()} {single.stderr.strip()}")
        pytest.fail("queries that do not parse:\n" + "\n".join(bad or [result.stdout + result.stderr]))


def test_every_series_is_in_the_metrics_contract() -> None:
    documented = contract.contract_series()
    recorded = contract.recorded()
    used: dict[str, str] = {}
    for q in contract.panel_queries(DASHBOARDS):
        for name in contract.metric_names(q.expr):
            used.setdefault(contract.base_name(name, documented), q.where)
    for _, var, query in contract.variable_queries(DASHBOARDS):
        for name in contract.metric_names(contract.label_values_selector(query)[0]):
            used.setdefault(name, f"variable {var}")
    for rule in contract.load_rules():
        for name in contract.metric_names(rule["expr"]):
            used.setdefault(contract.base_name(name, documented), rule.get("record") or rule.get("alert"))
    unknown = {n: w for n, w in used.items() if n not in documented and n not in recorded}
    assert not unknown, f"series used but not in dashboards/METRICS.md or rules.yaml: {unknown}"
    unused = documented - set(used)
    assert not unused, f"METRICS.md lists series that nothing uses: {sorted(unused)}"
    metrics_md = contract.METRICS_MD.read_text()
    for name in recorded:  # listed as `name` or, for windows, `prefix{5m,30m,...}`
        stem = re.sub(r"(?<=rate)(\d+[mhd])$", "", name)
        assert f"`{name}`" in metrics_md or f"`{stem}{{" in metrics_md, f"recording rule {name} not in METRICS.md"


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, stage) (rate(x_bucket{a=~"b|c"}[$__rate_interval]))) '
            '/ on (namespace, job) group_left (model) label_replace(y offset 5m, "job", "$1", "z", "(.+)") '
            "or vector(0) > bool 1e-9")
    assert contract.metric_names(expr) == {"x_bucket", "y"}


def test_gpu_panels_join_dcgm_to_jobs_with_fallbacks() -> None:
    oncall = {p["title"]: p for p in _panels(DASHBOARDS["oncall"])}
    leaves = contract.leaf_series(oncall["GPU utilisation per job"]["targets"][0]["expr"])
    assert {"DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_DEV_GPU_UTIL", "kube_pod_labels",
            "ganops_gpu_utilization_ratio"} <= leaves
    gpu_rule = contract.recorded()["ganops:pod_gpu_utilization:ratio"]
    assert "DCGM_FI_PROF_GR_ENGINE_ACTIVE or DCGM_FI_DEV_GPU_UTIL / 100" in gpu_rule
    assert '"exported_pod"' in gpu_rule and '"exported_namespace"' in gpu_rule


def test_required_panels_exist() -> None:
    titles = {name: " | ".join(p["title"] for p in _panels(d)) for name, d in DASHBOARDS.items()}
    for name, needles in {
        "executive": ["FID", "KID", "Recall", "Cost per run", "Cost per promoted model", "Cost per FID point",
                      "Safety block rate", "Promotions"],
        "oncall": ["Jobs by phase", "Failures and preemptions", "Checkpoint age", "Budget", "GPU utilisation",
                   "Availability", "p95", "Safety block rate", "Ready serving replicas"],
        "training": ["Losses", "Gradient norms", "Images per second", "Diversity", "Health events", "FID", "KID",
                     "Precision and recall", "GPU memory"],
        "serving": ["Requests by route", "by stage", "Batch size", "Queue depth", "Decisions by filter", "by alias"],
    }.items():
        for needle in needles:
            assert needle in titles[name], f"{name}: no panel about {needle!r}"
    exprs = " ".join(q.expr for q in contract.panel_queries(DASHBOARDS))
    leaves = contract.leaf_series(exprs)
    assert {"node_gpu_hourly_cost", "container_gpu_allocation", "ganops_job_cost_usd_total"} <= leaves


def test_dashboards_are_valid_json_files() -> None:
    for path in contract.GRAFANA_DIR.glob("*.json"):
        json.loads(path.read_text())
        assert path.read_text().endswith("\n")


def test_external_exporters_are_named_as_in_metrics_md() -> None:
    """The allow-list of series ganops does not export names the same exporters as METRICS.md, and nothing else."""
    documented = exporters.metrics_md_exporters()
    external = {s: by for s, by in documented.items() if not exporters.components_of(by)}
    assert external == exporters.EXTERNAL_EXPORTERS
    assert set(exporters.EXTERNAL_EXPORTERS) == set(contract.ECOSYSTEM)
    assert {s: documented[s] for s in contract.GPU_ONLY} == exporters.GPU_ONLY


def test_every_series_a_dashboard_or_rule_reads_has_an_exporter() -> None:
    """A series nobody exports fails here by name: fix the query, export it, or name its external exporter."""
    assert exporters.exported_by_nobody() == {}


def test_the_exporter_check_finds_a_series_nobody_exports(monkeypatch: pytest.MonkeyPatch) -> None:
    queries = contract.panel_queries()
    extra = [*queries, contract.PanelQuery("training", "t", 999, "p", "stat", "Z",
                                           "sum(ganops_train_nobody_exports_total) + ganops_serving_ready", True)]
    monkeypatch.setattr(contract, "panel_queries", lambda dashboards=None: extra)
    assert exporters.exported_by_nobody() == {
        "ganops_train_nobody_exports_total": "no ganops component exports it and it is on no external exporter's "
                                             "allow-list"}
    assert exporters.exported_in_source("ganops_job_cost_usd_total", "operator")  # a counter, declared bare
    assert not exporters.exported_in_source("ganops_serving_ready", "trainer")
