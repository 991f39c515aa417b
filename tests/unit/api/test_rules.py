"""Prometheus rules: promtool check + unit tests, and every alert documented and tested both ways."""

from __future__ import annotations

import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml
from dashboards import contract

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian: apt-get install prometheus; `make system-deps`)"
)
RUNBOOK_BASE = "https://github.com/ganops/ganops/blob/main/dashboards/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
RUNBOOK_SECTIONS = ("## Meaning", "## Impact", "## Confirm", "## Fix", "## Escalate")
# The list (the SLO burns are checked separately below).
REQUIRED_ALERTS = {
    "GanJobFailed", "GanCheckpointStale", "GanTrainingDiverged", "GanTrainingRolledBack", "GanModeCollapseSuspected",
    "GanDiscriminatorOverpowering", "GanGPUUnderutilized", "GanBudgetBurnHigh", "GanSafetyBlockRateSpike",
    "GanModelNotReady", "GanModelLoadFailing", "GanOperatorDown", "GanOperatorReconcileErrors",
}
TEST_FILES = sorted(contract.RULE_TESTS_DIR.glob("*.yaml"))


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=300, check=False)


@needs_promtool
def test_promtool_check_rules_is_clean() -> None:
    result = _promtool("check", "rules", str(contract.RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert TEST_FILES, "no promtool tests in dashboards/prometheus/tests/"
    with ThreadPoolExecutor(max_workers=len(TEST_FILES)) as pool:  # independent files: run them side by side
        results = list(pool.map(lambda p: (p, _promtool("test", "rules", str(p))), TEST_FILES))
    failures = [f"{p.name}:\n{r.stdout}{r.stderr}" for p, r in results if r.returncode != 0]
    assert not failures, "\n\n".join(failures)


def test_required_alerts_exist_and_are_camel_case() -> None:
    alerts = contract.alerts()
    assert set(alerts) >= REQUIRED_ALERTS, f"missing: {sorted(REQUIRED_ALERTS - set(alerts))}"
    for name in alerts:
        assert re.fullmatch(r"Gan(?:[A-Z][a-z0-9]*|GPU|SLO)+", name), f"{name} is not CamelCase with a Gan prefix"


@pytest.mark.parametrize("name", sorted(contract.alerts()))
def test_alert_has_severity_annotations_and_runbook(name: str) -> None:
    rule = contract.alerts()[name]
    assert rule.get("labels", {}).get("severity") in SEVERITIES, f"{name}: severity must be one of {SEVERITIES}"
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{name}: annotation {key} missing"
    assert annotations["runbook_url"] == f"{RUNBOOK_BASE}{name}.md"
    runbook = contract.RUNBOOKS_DIR / f"{name}.md"
    assert runbook.is_file(), f"{runbook} missing"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n")
    for section in RUNBOOK_SECTIONS:
        assert section in text, f"{runbook.name}: section {section!r} missing"
    confirm = text.split("## Confirm", 1)[1].split("## Fix", 1)[0]
    assert "```promql" in confirm, f"{runbook.name}: Confirm has no PromQL"
    assert "kubectl" in confirm, f"{runbook.name}: Confirm has no kubectl command"


def test_no_orphan_runbooks_and_index_lists_every_alert() -> None:
    alerts = set(contract.alerts())
    pages = {p.stem for p in contract.RUNBOOKS_DIR.glob("*.md")} - {"README"}
    assert pages == alerts, f"orphan runbooks: {sorted(pages - alerts)}; no runbook: {sorted(alerts - pages)}"
    index = (contract.RUNBOOKS_DIR / "README.md").read_text()
    for name in alerts:
        assert f"[{name}.md]({name}.md)" in index, f"runbooks/README.md does not list {name}"


def _alert_cases() -> dict[str, dict[str, int]]:
    """alertname → {"firing": n, "silent": n} over every alert_rule_test of every promtool test file."""
    cases: dict[str, dict[str, int]] = {}
    for path in TEST_FILES:
        doc: dict[str, Any] = yaml.safe_load(path.read_text())
        for group in doc.get("tests", []):
            for case in group.get("alert_rule_test", []) or []:
                kind = "firing" if case.get("exp_alerts") else "silent"
                counts = cases.setdefault(case["alertname"], {"firing": 0, "silent": 0})
                counts[kind] += 1
    return cases


@pytest.mark.parametrize("name", sorted(contract.alerts()))
def test_alert_has_firing_and_silent_test_case(name: str) -> None:
    counts = _alert_cases().get(name, {"firing": 0, "silent": 0})
    assert counts["firing"] >= 1, f"{name}: no promtool case where it fires"
    assert counts["silent"] >= 1, f"{name}: no promtool case where it stays silent"


def test_rule_test_files_pin_the_group_order() -> None:
    """Without group_eval_order promtool evaluates groups in map order: alerts on recording rules flake."""
    groups = [g["name"] for g in yaml.safe_load(contract.RULES_FILE.read_text())["groups"]]
    for path in TEST_FILES:
        doc = yaml.safe_load(path.read_text())
        assert doc.get("group_eval_order") == groups, f"{path.name}: group_eval_order must list {groups}"
        assert doc.get("rule_files") == ["../rules.yaml"], path.name


def test_slo_alerts_follow_the_multiwindow_multi_burn_rate_pattern() -> None:
    alerts = contract.alerts()
    for sli, budget in (("availability_errors", "0.005"), ("latency_slow", "0.05")):
        name = "Availability" if sli.startswith("availability") else "Latency"
        fast = alerts[f"GanServing{name}BudgetBurnFast"]["expr"]
        slow = alerts[f"GanServing{name}BudgetBurnSlow"]["expr"]
        for window in ("1h", "5m", "6h", "30m"):
            assert f"ganops:serving_{sli}:ratio_rate{window}" in fast
        assert f"(14.4 * {budget})" in fast and f"(6 * {budget})" in fast
        assert f"ganops:serving_{sli}:ratio_rate3d > {budget}" in slow
        assert f"ganops:serving_{sli}:ratio_rate6h > {budget}" in slow
        assert alerts[f"GanServing{name}BudgetBurnFast"]["labels"]["severity"] == "critical"
        assert alerts[f"GanServing{name}BudgetBurnSlow"]["labels"]["severity"] == "warning"
    recorded = contract.recorded()
    for window in ("5m", "30m", "1h", "6h", "3d"):
        assert f"[{window}]" in recorded[f"ganops:serving_availability_errors:ratio_rate{window}"]
        assert 'le="0.5"' in recorded[f"ganops:serving_latency_slow:ratio_rate{window}"]


def test_rules_file_is_a_plain_rule_file() -> None:
    doc = yaml.safe_load(contract.RULES_FILE.read_text())
    assert set(doc) == {"groups"}, "a plain rule file: the chart wraps it into a PrometheusRule"
