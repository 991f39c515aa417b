"""Who exports each series the dashboards and rules read: a ganops component, or a named external exporter.

A series that a dashboard or rule reads must be exported by somebody. ganops' own series must be found in the
source of every component that dashboards/METRICS.md says exports them; everything else must be on the
allow-list below, with the software that exports it named (the tests compare it with METRICS.md's "exported by"
column). There is no third way: a series nobody exports fails the tests, it is never skipped or xfailed.
"""

from __future__ import annotations

import re
from pathlib import Path

from dashboards import contract

SRC = Path(__file__).resolve().parents[2] / "src" / "ganops"
COMPONENT_SOURCES = {"trainer": SRC / "trainer", "operator": SRC / "operator", "serving": SRC / "serving"}

# Series ganops reads but cannot export, by the software that does. On a machine without that software (the
# tests', a CPU-only cluster) queries over them evaluate without error and return nothing.
EXTERNAL_EXPORTERS: dict[str, str] = {
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "NVIDIA DCGM exporter",
    "DCGM_FI_DEV_GPU_UTIL": "NVIDIA DCGM exporter",
    "DCGM_FI_DEV_FB_USED": "NVIDIA DCGM exporter",
    "kube_pod_labels": "kube-state-metrics",
    "node_gpu_hourly_cost": "OpenCost",
    "container_gpu_allocation": "OpenCost",
    "up": "Prometheus",
    "ALERTS": "Prometheus",
}
# ganops' own series that exist only where the hardware does: the trainer exports them through NVML.
GPU_ONLY: dict[str, str] = {
    "ganops_gpu_utilization_ratio": "trainer (only with a GPU)",
    "ganops_gpu_memory_used_bytes": "trainer (only with a GPU)",
}


def metrics_md_exporters() -> dict[str, str]:
    """Series → METRICS.md's "exported by" column (component sections and the ecosystem one)."""
    out: dict[str, str] = {}
    section = ""
    for line in contract.METRICS_MD.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split()[0].lower()
        if section not in ("trainer", "operator", "serving", "ecosystem"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)]
        m = re.fullmatch(r"`([A-Za-z_:][A-Za-z0-9_:]*)`", cells[1]) if len(cells) > 5 else None
        if m:
            out[m.group(1)] = cells[4]
    return out


def components_of(exported_by: str) -> set[str]:
    """`trainer, operator` → {"trainer", "operator"}; `trainer (only with a GPU)` → {"trainer"}."""
    return {word for word in re.findall(r"[a-z]+", exported_by) if word in COMPONENT_SOURCES}


def exported_in_source(series: str, component: str) -> bool:
    """Whether the component's source declares the series (prometheus_client adds `_total` to counters)."""
    stem = series.removesuffix("_total")
    pattern = re.compile(rf"[\"']{re.escape(stem)}(?:_total)?[\"']")
    return any(pattern.search(p.read_text()) for p in COMPONENT_SOURCES[component].rglob("*.py"))


def exported_by_nobody() -> dict[str, str]:
    """Every series read by a dashboard panel, variable or rule that no one exports → why."""
    documented = metrics_md_exporters()
    used: set[str] = set()
    for q in contract.panel_queries():
        used |= contract.leaf_series(q.expr)
    for _, _, query in contract.variable_queries():
        used |= contract.leaf_series(contract.label_values_selector(query)[0])
    for rule in contract.load_rules():
        used |= contract.leaf_series(rule["expr"])
    problems: dict[str, str] = {}
    for series in sorted(used):
        if series in EXTERNAL_EXPORTERS:
            continue
        components = components_of(documented.get(series, ""))
        if not components:
            problems[series] = "no ganops component exports it and it is on no external exporter's allow-list"
            continue
        missing = sorted(c for c in components if not exported_in_source(series, c))
        if missing:
            problems[series] = f"METRICS.md says {', '.join(missing)} exports it; its source does not"
    return problems
