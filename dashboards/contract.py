"""Read the dashboards, the rules and the metrics contract; find the series a PromQL expression reads.

Shared by the tests (structure, parsing, evaluation against a real Prometheus) and the synthetic exporter.
No third-party imports beyond PyYAML.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
GRAFANA_DIR = HERE / "grafana"
RULES_FILE = HERE / "prometheus" / "rules.yaml"
RULE_TESTS_DIR = HERE / "prometheus" / "tests"
RUNBOOKS_DIR = HERE / "runbooks"
METRICS_MD = HERE / "METRICS.md"

# Series that other software exports; ganops cannot make them exist.
ECOSYSTEM = frozenset({
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE", "DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "kube_pod_labels",
    "node_gpu_hourly_cost", "container_gpu_allocation", "up", "ALERTS",
})
# ganops series that exist only on machines with a GPU.
GPU_ONLY = frozenset({"ganops_gpu_utilization_ratio", "ganops_gpu_memory_used_bytes"})
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str  # file stem
    title: str  # dashboard title
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def where(self) -> str:
        return f"{self.dashboard}.json panel {self.panel_id} {self.panel_title!r} query {self.ref_id}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(GRAFANA_DIR.glob("*.json"))}


def iter_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def panel_queries(dashboards: dict[str, dict[str, Any]] | None = None) -> list[PanelQuery]:
    out = []
    for name, dash in (dashboards or load_dashboards()).items():
        for panel in iter_panels(dash):
            for target in panel.get("targets", []):
                out.append(PanelQuery(name, dash["title"], panel["id"], panel["title"], panel["type"],
                                      target["refId"], target["expr"], bool(target.get("instant"))))
    return out


def variable_queries(dashboards: dict[str, dict[str, Any]] | None = None) -> list[tuple[str, str, str]]:
    """(dashboard, variable name, query) for every query variable."""
    out = []
    for name, dash in (dashboards or load_dashboards()).items():
        for var in dash["templating"]["list"]:
            if var.get("type") == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((name, var["name"], query))
    return out


def label_values_selector(query: str) -> tuple[str, str]:
    """`label_values(selector, label)` → (selector, label)."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query, re.S)
    if not m:
        raise ValueError(f"not a label_values(selector, label) query: {query!r}")
    return m.group(1).strip(), m.group(2)


def load_rules() -> list[dict[str, Any]]:
    """Every rule of rules.yaml, each with its group's name under `group`."""
    doc = yaml.safe_load(RULES_FILE.read_text())
    return [{**rule, "group": group["name"]} for group in doc["groups"] for rule in group["rules"]]


def recorded() -> dict[str, str]:
    return {r["record"]: r["expr"] for r in load_rules() if "record" in r}


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in load_rules() if "alert" in r}


def contract_series() -> set[str]:
    """Series names listed in the tables of METRICS.md (first column), recording rules excluded."""
    names = set()
    section = ""
    for line in METRICS_MD.read_text().splitlines():
        if line.startswith("## "):
            section = line
        if "Recording rules" in section:
            continue
        m = re.match(r"\|\s*`([A-Za-z_:][A-Za-z0-9_:]*)`\s*\|", line)
        if m:
            names.add(m.group(1))
    return names


def series_by_component() -> dict[str, set[str]]:
    """METRICS.md's tables by section: "trainer", "operator", "serving", "ecosystem"."""
    out: dict[str, set[str]] = {}
    section = ""
    for line in METRICS_MD.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0].lower()
        m = re.match(r"\|\s*`([A-Za-z_:][A-Za-z0-9_:]*)`\s*\|", line)
        if m and section in ("trainer", "operator", "serving", "ecosystem"):
            out.setdefault(section, set()).add(m.group(1))
    return out


# ------------------------------------------------------------------------------------------------- PromQL names
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
             "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a tokenizer, not a parser: enough for these dashboards)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # strings
    text = re.sub(r"#[^\n]*", " ", text)  # comments
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)  # label lists
    text = re.sub(r"\boffset\s+\S+", " ", text)
    text = re.sub(r"(?<![A-Za-z0-9_:.])\d+(?:\.\d*)?(?:[eE][+-]?\d+)?", " ", text)  # numbers
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        token = m.group(0)
        after = text[m.end():].lstrip()
        if token.lower() in _KEYWORDS or after.startswith("("):
            continue
        if re.fullmatch(r"\d+[smhdwy]", token):
            continue
        names.add(token)
    return names


def base_name(name: str, contract: set[str]) -> str:
    """`x_bucket`/`x_count`/`x_sum` → `x` when `x` is a histogram in the contract."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in contract:
            return name[: -len(suffix)]
    return name


def leaf_series(expr: str, rules: dict[str, str] | None = None, contract: set[str] | None = None) -> set[str]:
    """Exported series an expression ultimately reads, recording rules expanded."""
    rules = recorded() if rules is None else rules
    contract = contract_series() if contract is None else contract
    out: set[str] = set()
    todo = list(metric_names(expr))
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in rules:
            todo.extend(metric_names(rules[name]))
        else:
            out.add(base_name(name, contract))
    return out


# ------------------------------------------------------------------------------------------ Grafana variables
def interpolate(expr: str, *, rate_interval: str = "5m", interval: str = "1m", range_: str = "1h",
                variables: dict[str, str] | None = None) -> str:
    """Replace Grafana's variables the way Grafana would, with regex-friendly defaults (`.*` = All)."""
    values = {"__rate_interval": rate_interval, "__interval": interval, "__range": range_,
              "namespace": ".*", "job": ".*", "model": ".*", **(variables or {})}
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr
