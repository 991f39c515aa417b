"""Build the ganops Grafana dashboards: `python dashboards/build.py` writes `dashboards/grafana/*.json`.

One small vocabulary (timeseries, stat, bargauge, table; rows laid out left to right, 24 columns wide) keeps the
four dashboards consistent: every panel has a unit, a description and the `${datasource}` variable, every query
uses `$__rate_interval` (never a fixed `[5m]` for dashboard rates) and regex matchers for multi-value variables.
`--check` exits 1 when the committed JSON differs from what this file builds (a unit test runs it).

Series names are the contract in `dashboards/METRICS.md`; the `ganops:*` names are recording rules from
`dashboards/prometheus/rules.yaml` (deploy both together, as the Helm chart does).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT_DIR = HERE / "grafana"
SCHEMA_VERSION = 39
DS: dict[str, str] = {"type": "prometheus", "uid": "${datasource}"}
COLUMNS = 24

# Requests that count for the serving SLOs: everything but probes and scrapes.
SLI_ROUTES = 'route!~"/metrics|/healthz|/readyz|/v2/health/.*"'
POD_JOB = "ganops:pod_job:info"  # recording rule: kube_pod_labels → {namespace, pod, job}


# --------------------------------------------------------------------------------------------------------- panels
@dataclass
class Q:
    """One query of a panel."""

    expr: str
    legend: str = ""
    instant: bool = False
    table: bool = False
    interval: str = ""


@dataclass
class P:
    """One panel before layout: `w`/`h` in Grafana grid units (24 columns; one row unit ≈ 30 px)."""

    kind: str  # timeseries | stat | bargauge | table
    title: str
    queries: list[Q]
    unit: str
    description: str
    w: int = 12
    h: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Row:
    title: str
    panels: list[P]


def thresholds(*steps: tuple[float, str], base: str = "green") -> dict[str, Any]:
    rest = [{"color": color, "value": value} for value, color in steps]
    return {"mode": "absolute", "steps": [{"color": base, "value": None}, *rest]}


def ts(title: str, queries: list[Q], unit: str, description: str, *, w: int = 12, h: int = 8,
       stack: bool = False, bars: bool = False, log: bool = False, min_: float | None = 0,
       max_: float | None = None, slo_line: float | None = None, right: dict[str, str] | None = None) -> P:
    """A time series. `right` maps a refId to the unit of a second (right-hand) axis."""
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 60 if bars else (25 if stack else 8),
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
        "scaleDistribution": {"type": "log", "log": 10} if log else {"type": "linear"},
        "thresholdsStyle": {"mode": "line+area" if slo_line is not None else "off"},
    }
    defaults: dict[str, Any] = {"color": {"mode": "palette-classic"}}
    if min_ is not None and not log:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    if slo_line is not None:
        defaults["thresholds"] = thresholds((slo_line, "transparent"), base="red") if unit == "percentunit" \
            else thresholds((slo_line, "red"), base="transparent")
    overrides = [
        {"matcher": {"id": "byFrameRefID", "options": ref},
         "properties": [{"id": "unit", "value": u}, {"id": "custom.axisPlacement", "value": "right"},
                        {"id": "min", "value": None}]}
        for ref, u in (right or {}).items()
    ]
    return P("timeseries", title, queries, unit, description, w, h, custom=custom, defaults=defaults,
             options={"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
                      "tooltip": {"mode": "multi", "sort": "desc"}},
             overrides=overrides)


def stat(title: str, queries: list[Q], unit: str, description: str, *, w: int = 4, h: int = 4,
         steps: tuple[tuple[float, str], ...] = (), base: str = "green", mappings: list[dict[str, Any]] | None = None,
         decimals: int | None = None) -> P:
    defaults: dict[str, Any] = {"color": {"mode": "thresholds"}, "thresholds": thresholds(*steps, base=base)}
    if mappings:
        defaults["mappings"] = mappings
    if decimals is not None:
        defaults["decimals"] = decimals
    return P("stat", title, queries, unit, description, w, h, defaults=defaults,
             options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                      "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
                      "textMode": "auto", "wideLayout": True, "showPercentChange": False})


def bars(title: str, queries: list[Q], unit: str, description: str, *, w: int = 8, h: int = 8,
         steps: tuple[tuple[float, str], ...] = (), max_: float | None = None) -> P:
    """A horizontal bar gauge of instant values: one bar per series (jobs, models)."""
    defaults: dict[str, Any] = {"color": {"mode": "thresholds"}, "thresholds": thresholds(*steps), "min": 0}
    if max_ is not None:
        defaults["max"] = max_
    for q in queries:
        q.instant = True
    return P("bargauge", title, queries, unit, description, w, h, defaults=defaults,
             options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                      "orientation": "horizontal", "displayMode": "gradient", "valueMode": "color",
                      "namePlacement": "auto", "showUnfilled": True, "sizing": "auto", "minVizHeight": 16,
                      "minVizWidth": 8, "maxVizHeight": 300})


def table(title: str, query: Q, unit: str, description: str, *, columns: list[str], w: int = 8, h: int = 8,
          hide_value: bool = True) -> P:
    """A table of an instant query's labels (`columns` in that order); the value column is hidden by default."""
    query.instant, query.table = True, True
    exclude = {"Time": True, "__name__": True, **({"Value": True} if hide_value else {})}
    order = {name: i for i, name in enumerate(columns)}
    return P("table", title, [query], unit, description, w, h,
             custom={"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
             defaults={"color": {"mode": "thresholds"}, "thresholds": thresholds()},
             options={"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"]}},
             transformations=[{"id": "labelsToFields", "options": {"mode": "columns"}},
                              {"id": "merge", "options": {}},
                              {"id": "organize", "options": {"excludeByName": exclude, "indexByName": order,
                                                             "renameByName": {}, "includeByName": {}}}])


# --------------------------------------------------------------------------------------------------------- layout
def _panel_json(p: P, pid: int, x: int, y: int) -> dict[str, Any]:
    targets = []
    for i, q in enumerate(p.queries):
        t: dict[str, Any] = {
            "datasource": DS,
            "editorMode": "code",
            "expr": q.expr.strip(),
            "legendFormat": q.legend or "__auto",
            "range": not q.instant,
            "instant": q.instant,
            "refId": chr(ord("A") + i),
        }
        if q.table:
            t["format"] = "table"
        if q.interval:
            t["interval"] = q.interval
        targets.append(t)
    defaults = {**p.defaults, "unit": p.unit}
    if p.custom:
        defaults["custom"] = p.custom
    defaults.setdefault("thresholds", thresholds())
    out: dict[str, Any] = {
        "datasource": DS,
        "description": p.description,
        "fieldConfig": {"defaults": defaults, "overrides": p.overrides},
        "gridPos": {"h": p.h, "w": p.w, "x": x, "y": y},
        "id": pid,
        "options": p.options,
        "targets": targets,
        "title": p.title,
        "type": p.kind,
    }
    if p.transformations:
        out["transformations"] = p.transformations
    return out


def layout(rows: list[Row]) -> list[dict[str, Any]]:
    """Rows on top of each other; panels of a row left to right, wrapping at 24 columns."""
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for row in rows:
        panels.append({"collapsed": False, "gridPos": {"h": 1, "w": COLUMNS, "x": 0, "y": y}, "id": pid,
                       "panels": [], "title": row.title, "type": "row"})
        pid, y = pid + 1, y + 1
        x, line_h = 0, 0
        for p in row.panels:
            if p.w > COLUMNS:
                raise ValueError(f"{p.title}: width {p.w} > {COLUMNS}")
            if x + p.w > COLUMNS:
                x, y, line_h = 0, y + line_h, 0
            panels.append(_panel_json(p, pid, x, y))
            pid, x, line_h = pid + 1, x + p.w, max(line_h, p.h)
        y += line_h
    return panels


def variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "definition": query, "query": {"query": query, "refId": "StandardVariableQuery"},
        "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*", "sort": 1, "regex": "", "hide": 0,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }


DATASOURCE_VARIABLE: dict[str, Any] = {
    "name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "regex": "",
    "hide": 0, "includeAll": False, "multi": False, "refresh": 1, "options": [],
    "current": {"selected": False, "text": "default", "value": "default"},
}


def dashboard(uid: str, title: str, description: str, rows: list[Row], variables: list[dict[str, Any]], *,
              time_from: str, refresh: str) -> dict[str, Any]:
    return {
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True, "hide": True,
            "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard",
        }]},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": False, "keepTime": True,
                   "tags": ["ganops"], "targetBlank": False, "title": "ganops", "type": "dashboards"}],
        "panels": layout(rows),
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["ganops"],
        "templating": {"list": [DATASOURCE_VARIABLE, *variables]},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ------------------------------------------------------------------------------------------------------ dashboards
JOBSEL = 'namespace=~"$namespace", job=~"$job"'
NS = 'namespace=~"$namespace"'
MODEL = 'model=~"$model"'
PROD = 'alias="production"'
BLOCKED = 'outcome=~"withheld|replaced"'  # samples the safety pipeline blocked (serving's outcome label)


def ratio(part: str, total: str) -> str:
    """part / total that reads 0 (not "no data") while the part's series do not exist yet (no block so far)."""
    return f"(\n  {part}\n  or\n  {total} * 0\n)\n/\n{total}"


def production_quality(metric: str) -> str:
    return (f'max by (model) (\n  ganops_model_version_quality{{metric="{metric}", {NS}, {MODEL}}}\n'
            f'  * on (model, version) group_left ()\n'
            f'  group by (model, version) (ganops_model_info{{{PROD}, {MODEL}}})\n)')


def executive() -> dict[str, Any]:
    job_cost_range = f"max by (namespace, job) (max_over_time(ganops_job_cost_usd_total{{{NS}}}[$__range]))"
    rows = [
        Row("Summary", [
            stat("Spend in range", [Q(f"sum(max by (namespace, job) (increase(ganops_job_cost_usd_total{{{NS}}}"
                                      f"[$__range])))")], "currencyUSD",
                 "GPU spend of all training jobs in the selected time range (ganops' own cost accrual).", w=6),
            stat("Models in production", [Q(f"count(group by (model) (ganops_model_info{{{PROD}, {MODEL}}})) "
                                            "or vector(0)")], "none",
                 "Registered models that serving currently serves under the @production alias.", w=6),
            stat("Promotions in range", [Q(f'sum(increase(ganops_operator_promotions_total{{outcome="promoted", '
                                           f"{MODEL}}}[$__range])) or vector(0)")], "none",
                 "Model versions promoted by the operator's quality and safety gates in the selected range.", w=6,
                 decimals=0),
            stat("Safety block rate", [Q(ratio(f"sum(increase(ganops_serving_samples_total{{{BLOCKED}, {MODEL}}}"
                                               "[$__range]))",
                                               f"sum(increase(ganops_serving_samples_total{{{MODEL}}}[$__range]))"))],
                 "percentunit",
                 "Share of generated samples that the safety pipeline blocked in the selected range.", w=6,
                 steps=((0.01, "orange"), (0.05, "red"))),
        ]),
        Row("Quality of the production models", [
            ts("FID of the production version", [Q(production_quality("fid"), "{{model}}")], "none",
               "Fréchet Inception Distance of the version each model serves @production (lower is better). "
               "Recorded by the operator on the model version when it was promoted; it steps down when a better "
               "version is promoted.", w=8),
            ts("KID of the production version", [Q(production_quality("kid"), "{{model}}")], "none",
               "Kernel Inception Distance of the @production version (lower is better).", w=8),
            ts("Recall of the production version", [Q(production_quality("recall"), "{{model}}")], "percentunit",
               "Recall (share of the data distribution the generator covers) of the @production version.", w=8,
               max_=1),
        ]),
        Row("Cost", [
            bars("Cost per run", [Q(f"sort_desc({job_cost_range})", "{{namespace}}/{{job}}")], "currencyUSD",
                 "Cost of each training job seen in the selected range (GPU-hours × price, spot discount applied)."),
            bars("Cost per promoted model", [Q(
                f"sort_desc(sum by (model) (\n  {job_cost_range}\n  * on (namespace, job) group_left (model)\n"
                f"  group by (namespace, job, model) (last_over_time(ganops_model_version_quality{{{MODEL}}}"
                "[$__range]))\n))", "{{model}}")], "currencyUSD",
                 "Training cost of the jobs that produced each model's registered versions."),
            bars("Cost per FID point", [Q(
                f"sort_desc(\n  {job_cost_range}\n  /\n  (max by (namespace, job) (\n"
                f"    max_over_time(ganops_eval_fid{{{NS}}}[$__range]) - min_over_time(ganops_eval_fid{{{NS}}}"
                "[$__range])\n  ) > 0)\n)", "{{namespace}}/{{job}}")], "currencyUSD",
                 "USD spent per point of FID gained: a job's cost divided by how far its FID fell (worst to best "
                 "evaluation in the range). Empty for jobs with fewer than two evaluations."),
            ts("Spend rate per namespace: ganops vs OpenCost", [
                Q(f"sum by (namespace) (max by (namespace, job) (rate(ganops_job_cost_usd_total{{{NS}}}"
                  "[$__rate_interval]))) * 3600", "{{namespace}} (ganops)"),
                Q(f"sum by (namespace) (ganops:job_opencost_gpu_usd_per_hour:sum{{{NS}}})", "{{namespace}} (OpenCost)"),
            ], "currencyUSD",
               "USD per hour. A: ganops' own accrual (price table). B: OpenCost's node_gpu_hourly_cost × "
               "container_gpu_allocation for the jobs' pods (only where OpenCost runs). A large gap means the "
               "price table is out of date.", w=12),
            ts("GPU-hours per day", [Q(f"sum by (namespace) (max by (namespace, job) (increase("
                                       f"ganops_job_gpu_hours_total{{{NS}}}[1d])))", "{{namespace}}")], "short",
               "GPU-hours consumed by training in the 24 h before each point.", w=12),
        ]),
        Row("Safety and promotions", [
            ts("Safety block rate per model", [Q(ratio(
                f"sum by (model) (rate(ganops_serving_samples_total{{{BLOCKED}, {MODEL}}}[$__rate_interval]))",
                f"sum by (model) (rate(ganops_serving_samples_total{{{MODEL}}}[$__rate_interval]))"),
                "{{model}}")], "percentunit",
               "Share of generated samples withheld or replaced by the safety pipeline.", max_=None),
            ts("Promotions per day", [Q(
                f"sum by (model, outcome) (increase(ganops_operator_promotions_total{{{MODEL}}}[1d]))",
                "{{model}} {{outcome}}")], "short",
               "Promotion decisions in the 24 h before each point: promoted (gates passed, alias moved) or "
               "rejected (a gate failed).", bars=True),
        ]),
    ]
    variables = [variable("namespace", "Namespace", "label_values(ganops_job_cost_usd_total, namespace)"),
                 variable("model", "Model", "label_values(ganops_model_info, model)")]
    return dashboard("ganops-executive", "ganops / Executive",
                     "Quality of what is in production, what it cost, and how safe it is.", rows, variables,
                     time_from="now-30d", refresh="5m")


def oncall() -> dict[str, Any]:
    running = 'max by (namespace, job) (ganops_operator_job_phase{phase="Running"}) == 1'
    rows = [
        Row("Now", [
            stat("Firing ganops alerts", [Q('count(ALERTS{alertname=~"Gan.+", alertstate="firing"}) or vector(0)')],
                 "none", "Alerts from dashboards/prometheus/rules.yaml firing now.", steps=((1, "red"),),
                 decimals=0),
            stat("Operator", [Q('max(up{job=~".*ganops-operator.*"}) or vector(0)')], "none",
                 "Whether Prometheus can scrape the ganops operator.", base="red", steps=((1, "green"),),
                 mappings=[{"type": "value", "options": {"0": {"text": "DOWN", "color": "red"},
                                                          "1": {"text": "UP", "color": "green"}}}]),
            stat("Jobs running", [Q('sum(ganops_operator_jobs{phase="Running"}) or vector(0)')], "none",
                 "GanTrainingJobs in phase Running.", base="blue", decimals=0),
            stat("Jobs failed", [Q('sum(ganops_operator_jobs{phase="Failed"}) or vector(0)')], "none",
                 "GanTrainingJobs in phase Failed (until deleted or TTL-collected).", steps=((1, "red"),),
                 decimals=0),
            stat("Serving availability (1h)", [Q("1 - max(ganops:serving_availability_errors:ratio_rate1h)")],
                 "percentunit", "Share of serving requests without a 5xx over the last hour (SLO 99.5 %).",
                 base="red", steps=((0.99, "orange"), (0.995, "green")), decimals=2),
            stat("Serving p95 (5m)", [Q("max(ganops:serving_request_duration_seconds:p95_rate5m)")], "s",
                 "95th percentile request latency over 5 minutes (SLO: 95 % of requests under 500 ms).",
                 steps=((0.4, "orange"), (0.5, "red"))),
        ]),
        Row("Training jobs", [
            ts("Jobs by phase", [Q("sum by (phase) (ganops_operator_jobs)", "{{phase}}")], "short",
               "GanTrainingJobs per phase, as the operator counts them.", w=8, stack=True),
            table("Current phase per job",
                  Q(f"max by (namespace, job, phase) (ganops_operator_job_phase{{{NS}}}) == 1"),
                  "none", "The phase of every GanTrainingJob (`kubectl get gtj -A`).",
                  columns=["namespace", "job", "phase"]),
            ts("Failures and preemptions (1h)", [Q(
                f"sum by (namespace, job, kind) (increase(ganops_operator_job_restarts_total{{{NS}}}[1h]))",
                "{{namespace}}/{{job}} {{kind}}")], "short",
               "Trainer relaunches in the hour before each point: preemption (spot reclaim, eviction; resumes from "
               "the latest checkpoint, does not count against backoffLimit) or failure (counts).", w=8, bars=True),
            bars("Checkpoint age (running jobs)", [Q(
                f"sort_desc(ganops:job_checkpoint_age_seconds{{{NS}}} and on (namespace, job) ({running}))",
                "{{namespace}}/{{job}}")], "s",
                 "Time since each running job's last verified checkpoint; GanCheckpointStale fires above 1 h.",
                 steps=((1800, "orange"), (3600, "red"))),
            bars("Budget spent", [Q(f"sort_desc(ganops:job_budget_burn:ratio{{{NS}}})", "{{namespace}}/{{job}}")],
                 "percentunit", "Share of spec.budget spent per job; GanBudgetBurnHigh fires above 80 % while "
                 "running, the operator stops the job at 100 % (phase BudgetExceeded).",
                 steps=((0.8, "orange"), (1, "red")), max_=1),
            ts("Spend rate per job", [
                Q(f"max by (namespace, job) (rate(ganops_job_cost_usd_total{{{NS}}}[$__rate_interval])) * 3600",
                  "{{namespace}}/{{job}}"),
                Q(f"ganops:job_opencost_gpu_usd_per_hour:sum{{{NS}}}", "{{namespace}}/{{job}} (OpenCost)"),
            ], "currencyUSD", "USD per hour per job: ganops' accrual (A) and OpenCost's GPU allocation cost (B, "
               "only where OpenCost runs).", w=8),
            ts("GPU utilisation per job", [Q(f"ganops:job_gpu_utilization:ratio{{{NS}}}", "{{namespace}}/{{job}}")],
               "percentunit", "Mean graphics-engine activity of the job's GPUs: DCGM_FI_PROF_GR_ENGINE_ACTIVE (or "
               "DCGM_FI_DEV_GPU_UTIL / 100) joined to the job's pods through kube_pod_labels, else the trainer's own "
               "ganops_gpu_utilization_ratio. GanGPUUnderutilized fires below 40 % for 30 min.", max_=1),
            ts("Training health events (15m)", [Q(
                f"ganops:job_health_events:increase15m{{{NS}}}", "{{namespace}}/{{job}} {{type}}")], "short",
               "Mode collapse, discriminator overpowering, divergence rollbacks and divergence reported by the "
               "trainers in the 15 minutes before each point.", bars=True),
        ]),
        Row("Serving", [
            ts("Availability", [Q("1 - ganops:serving_availability_errors:ratio_rate5m", "{{namespace}}/{{job}}")],
               "percentunit", "Share of requests (probes and /metrics excluded) answered without a 5xx, over 5 "
               "minutes. The red band is below the 99.5 % SLO.", w=8, min_=None, slo_line=0.995),
            ts("p95 latency", [Q("ganops:serving_request_duration_seconds:p95_rate5m", "{{namespace}}/{{job}}")],
               "s", "95th percentile request latency over 5 minutes; the SLO is 95 % of requests under 500 ms "
               "(red line).", w=8, slo_line=0.5),
            ts("Error-budget burn rate", [
                Q("ganops:serving_availability_errors:ratio_rate1h / 0.005", "availability 1h {{job}}"),
                Q("ganops:serving_availability_errors:ratio_rate6h / 0.005", "availability 6h {{job}}"),
                Q("ganops:serving_latency_slow:ratio_rate1h / 0.05", "latency 1h {{job}}"),
                Q("ganops:serving_latency_slow:ratio_rate6h / 0.05", "latency 6h {{job}}"),
            ], "short", "How fast each SLO's error budget is being spent (1 = exactly on budget over 30 days). "
               "Pages at 14.4× (1h and 5m) or 6× (6h and 30m); a ticket at 1× (3d and 6h).", w=8),
            ts("Safety block rate per filter", [Q("ganops:safety_block:ratio_rate5m", "{{filter}}")],
               "percentunit", "Share of a filter's decisions that blocked (block or error) over 5 minutes. "
               "GanSafetyBlockRateSpike fires above 5 % and 3× the day's rate.", w=8, max_=None),
            stat("Ready serving replicas", [
                Q(f"sum by (namespace, job) (ganops_serving_ready{{{NS}}})", "ready {{job}}"),
                Q(f"count by (namespace, job) (ganops_serving_ready{{{NS}}})", "replicas {{job}}"),
            ], "none", "Serving replicas whose /readyz passes (a model is loaded and warm) out of those scraped.",
                 w=8, h=8, base="red", steps=((1, "green"),), decimals=0),
            table("Served model versions", Q("max by (model, version, alias) (ganops_model_info)"), "none",
                  "What each alias resolves to in serving right now (ganops_model_info).",
                  columns=["model", "alias", "version"]),
            ts("Model load failures (1h)", [Q("sum by (model) (increase(ganops_model_load_failures_total[1h]))",
                                              "{{model}}")], "short",
               "Failed attempts to load or hot-swap a model version (bad checksum, missing weights, registry "
               "errors) in the hour before each point.", w=8, bars=True),
            ts("Operator reconcile latency and errors", [
                Q("histogram_quantile(0.95, sum by (le) (rate(ganops_operator_reconcile_seconds_bucket"
                  "[$__rate_interval])))", "p95 reconcile"),
                Q("sum(rate(ganops_operator_reconcile_errors_total[$__rate_interval]))", "errors/s"),
            ], "s", "p95 time of one reconcile (left) and failed reconciles per second (right).", w=16,
               right={"B": "short"}),
        ]),
    ]
    variables = [variable("namespace", "Namespace", "label_values(ganops_operator_job_phase, namespace)")]
    return dashboard("ganops-oncall", "ganops / On-call",
                     "What needs a human now: job failures, stale checkpoints, budgets, GPUs, serving SLOs, safety.",
                     rows, variables, time_from="now-6h", refresh="30s")


def training() -> dict[str, Any]:
    def by_job(metric: str, extra: str = "") -> str:
        return f"max by (namespace, job{extra}) ({metric}{{{JOBSEL}}})"

    rows = [
        Row("Progress", [
            stat("Step", [Q(by_job("ganops_train_step"), "{{job}}")], "none", "Current training step.", w=6,
                 base="blue", decimals=0),
            stat("Images per second", [Q(by_job("ganops_train_images_per_second"), "{{job}}")], "short",
                 "Real images consumed per second across all ranks.", w=6, base="blue"),
            stat("Checkpoint age", [Q(f"ganops:job_checkpoint_age_seconds{{{JOBSEL}}}", "{{job}}")], "s",
                 "Time since the last verified checkpoint (the trainer's start until the first one).", w=6,
                 steps=((1800, "orange"), (3600, "red"))),
            stat("Cost so far", [Q(by_job("ganops_job_cost_usd_total"), "{{job}}")], "currencyUSD",
                 "GPU-hours × price so far, resumed attempts included.", w=6, base="blue"),
        ]),
        Row("Optimisation", [
            ts("Losses", [Q(by_job("ganops_train_loss", ", network"), "{{job}} {{network}}")], "none",
               "Generator and discriminator losses (the scale depends on spec.loss.type).", min_=None),
            ts("Gradient norms", [Q(by_job("ganops_train_grad_norm", ", network"), "{{job}} {{network}}")], "none",
               "L2 norm of each network's gradients before the optimizer step (log scale): a jump of orders of "
               "magnitude precedes divergence.", log=True),
            ts("Images per second", [Q(by_job("ganops_train_images_per_second"), "{{job}}")], "short",
               "Training throughput; a drop with low GPU utilisation points at the input pipeline."),
            ts("Discriminator accuracy", [Q(by_job("ganops_train_discriminator_accuracy"), "{{job}}")],
               "percentunit", "Share of real and fake samples the discriminator classifies correctly. Near 100 % "
               "for long: the discriminator overpowers the generator.", max_=1),
        ]),
        Row("Diversity and health", [
            ts("Diversity ratio", [Q(by_job("ganops_train_diversity_ratio"), "{{job}}")], "none",
               "Diversity of a generated batch relative to a real batch (1 ≈ as diverse as the data; towards 0 on "
               "mode collapse).", w=8),
            ts("Health events (15m)", [Q(f"ganops:job_health_events:increase15m{{{JOBSEL}}}", "{{job}} {{type}}")],
               "short", "ModeCollapseSuspected, DiscriminatorOverpowering, DivergenceRollback and Diverged events in "
               "the 15 minutes before each point.", w=8, bars=True),
            ts("Rollbacks", [Q(by_job("ganops_train_rollbacks_total"), "{{job}}")], "short",
               "Total rollbacks to the last good checkpoint after a divergence, over the job's life.", w=8),
        ]),
        Row("Evaluation", [
            ts("FID", [Q(by_job("ganops_eval_fid"), "{{job}} FID"), Q(by_job("ganops_train_step"), "{{job}} step")],
               "none", "Fréchet Inception Distance at each evaluation (lower is better), with the training step "
               "on the right axis to read FID by step.", right={"B": "none"}),
            ts("KID", [Q(by_job("ganops_eval_kid"), "{{job}} KID"), Q(by_job("ganops_train_step"), "{{job}} step")],
               "none", "Kernel Inception Distance at each evaluation, with the step on the right axis.",
               right={"B": "none"}, min_=None),
            ts("Precision and recall", [Q(by_job("ganops_eval_precision"), "{{job}} precision"),
                                        Q(by_job("ganops_eval_recall"), "{{job}} recall")], "percentunit",
               "Precision (samples that look real) and recall (data covered by samples) at each evaluation.",
               max_=1),
            ts("Modes and high-quality ratio", [Q(by_job("ganops_eval_modes"), "{{job}} modes"),
                                                Q(by_job("ganops_eval_high_quality_ratio"), "{{job}} high-quality")],
               "short", "Modes covered (toy mixtures: out of 8 or 25) and the share of high-quality samples (right "
               "axis).", right={"B": "percentunit"}),
        ]),
        Row("GPU", [
            ts("GPU utilisation", [Q(f"ganops:job_gpu_utilization:ratio{{{JOBSEL}}}", "{{job}}")], "percentunit",
               "Mean GPU activity of the job (DCGM joined through kube_pod_labels, else the trainer's own gauge).",
               max_=1),
            ts("GPU memory used", [Q(f"ganops:job_gpu_memory_used:bytes{{{JOBSEL}}}", "{{job}} {{pod}} gpu {{gpu}}")],
               "bytes", "Framebuffer memory used per GPU (DCGM_FI_DEV_FB_USED, else the trainer's own gauge)."),
        ]),
    ]
    variables = [variable("namespace", "Namespace", "label_values(ganops_train_step, namespace)"),
                 variable("job", "Job", 'label_values(ganops_train_step{namespace=~"$namespace"}, job)')]
    return dashboard("ganops-training", "ganops / Training debug",
                     "One job's inside: losses, gradients, throughput, diversity, evaluation and GPUs.", rows,
                     variables, time_from="now-3h", refresh="30s")


def serving() -> dict[str, Any]:
    req = f"ganops_serving_request_duration_seconds_count{{{NS}, {SLI_ROUTES}}}"
    bucket = f"ganops_serving_request_duration_seconds_bucket{{{NS}, {SLI_ROUTES}}}"
    stage = f"ganops_serving_stage_duration_seconds_bucket{{{NS}}}"

    def quantile(q: float, series: str, by: str = "le") -> str:
        return f"histogram_quantile({q}, sum by ({by}) (rate({series}[$__rate_interval])))"

    def by_alias(extra: str = "") -> str:
        """Samples/s per (model, version) spread onto every alias that resolves to that version."""
        return (f"sum by (namespace, job, model, version) (rate(ganops_serving_samples_total{{{NS}, {MODEL}{extra}}}"
                "[$__rate_interval]))\n  * on (namespace, job, model, version) group_right ()\n"
                f"  group by (namespace, job, model, version, alias) (ganops_model_info{{{NS}, {MODEL}}})")

    rows = [
        Row("Traffic", [
            stat("Requests per second", [Q(f"sum(rate({req}[$__rate_interval]))")], "reqps",
                 "Requests per second (probes and /metrics excluded).", w=5, base="blue"),
            stat("Error ratio (5m)", [Q(f"max(ganops:serving_availability_errors:ratio_rate5m{{{NS}}})")],
                 "percentunit", "Share of requests answered with a 5xx over 5 minutes (budget: 0.5 %).", w=5,
                 steps=((0.005, "orange"), (0.01, "red"))),
            stat("p95 latency (5m)", [Q(f"max(ganops:serving_request_duration_seconds:p95_rate5m{{{NS}}})")], "s",
                 "95th percentile latency over 5 minutes (SLO: 95 % under 500 ms).", w=5,
                 steps=((0.4, "orange"), (0.5, "red"))),
            stat("Queue depth", [Q(f"sum(ganops_serving_queue_depth{{{NS}}})")], "short",
                 "Requests waiting for a batch slot, all replicas.", w=5, steps=((32, "orange"), (128, "red"))),
            stat("Ready replicas", [Q(f"sum(ganops_serving_ready{{{NS}}})")], "none",
                 "Replicas with a model loaded and warm.", w=4, base="red", steps=((1, "green"),), decimals=0),
            ts("Requests by route and status", [Q(f"sum by (route, status) (rate({req}[$__rate_interval]))",
                                                  "{{route}} {{status}}")], "reqps",
               "Request rate per route template and HTTP status."),
            ts("Latency quantiles", [Q(quantile(0.5, bucket), "p50"), Q(quantile(0.95, bucket), "p95"),
                                     Q(quantile(0.99, bucket), "p99")], "s",
               "End-to-end request latency; the SLO is p95 < 500 ms (red line).", slo_line=0.5),
        ]),
        Row("Inside a request", [
            ts("p95 latency by stage", [Q(quantile(0.95, stage, "le, stage"), "{{stage}}")], "s",
               "95th percentile time spent queueing, generating, in the safety pipeline and encoding."),
            ts("Mean time by stage", [Q(
                f"sum by (stage) (rate(ganops_serving_stage_duration_seconds_sum{{{NS}}}[$__rate_interval]))\n/\n"
                f"sum by (stage) (rate(ganops_serving_stage_duration_seconds_count{{{NS}}}[$__rate_interval]))",
                "{{stage}}")], "s", "Mean seconds per request in each stage, stacked: where a request's time goes.",
               stack=True),
            ts("Batch size", [
                Q(quantile(0.5, f"ganops_serving_batch_size_bucket{{{NS}}}"), "p50"),
                Q(quantile(0.95, f"ganops_serving_batch_size_bucket{{{NS}}}"), "p95"),
                Q(f"sum(rate(ganops_serving_batch_size_sum{{{NS}}}[$__rate_interval])) / "
                  f"sum(rate(ganops_serving_batch_size_count{{{NS}}}[$__rate_interval]))", "mean"),
            ], "short", "Samples per generator call after dynamic batching.", w=8),
            ts("Queue depth", [Q(f"max by (instance) (ganops_serving_queue_depth{{{NS}}})", "{{instance}}")], "short",
               "Requests waiting per replica.", w=8),
            ts("Samples by outcome", [Q(f"sum by (model, version, outcome) (rate(ganops_serving_samples_total{{{NS}, "
                                        f"{MODEL}}}[$__rate_interval]))", "{{model}} v{{version}} {{outcome}}")],
               "short", "Samples per second served or blocked, per model version.", w=8, stack=True),
        ]),
        Row("Safety", [
            ts("Decisions by filter", [Q(f"sum by (filter, outcome) (rate(ganops_safety_decisions_total{{{NS}}}"
                                         "[$__rate_interval]))", "{{filter}} {{outcome}}")], "short",
               "Safety verdicts per second: pass, block, or error (a failing filter blocks: fail-closed).",
               stack=True),
            ts("Block rate per filter", [Q(f"ganops:safety_block:ratio_rate5m{{{NS}}}", "{{filter}}")],
               "percentunit", "Share of each filter's verdicts that blocked, over 5 minutes.", max_=None),
        ]),
        Row("Canary vs production", [
            ts("Samples per second by alias", [Q(f"sum by (model, alias) (\n  {by_alias()}\n)",
                                                 "{{model}} @{{alias}}")], "short",
               "Traffic each alias receives (the canary's share follows the configured split).", w=8),
            ts("Block rate by alias", [Q(ratio(f"sum by (model, alias) (\n  {by_alias(', ' + BLOCKED)}\n)",
                                               f"sum by (model, alias) (\n  {by_alias()}\n)"),
                                         "{{model}} @{{alias}}")],
               "percentunit", "Safety block rate of each alias: a canary that blocks more than production "
               "should not be promoted.", w=8, max_=None),
            ts("FID by alias", [Q(
                f"max by (model, alias) (\n  max by (model, version) (ganops_model_version_quality{{metric=\"fid\", "
                f"{MODEL}}})\n  * on (model, version) group_right ()\n  group by (model, version, alias) "
                f"(ganops_model_info{{{MODEL}}})\n)", "{{model}} @{{alias}}")], "none",
               "Evaluation FID of the version behind each alias (lower is better).", w=8),
            table("Served model versions", Q(f"max by (namespace, model, version, alias) (ganops_model_info{{{NS}, "
                                              f"{MODEL}}})"), "none", "Alias → version in each serving namespace.",
                  columns=["namespace", "model", "alias", "version"], w=12),
            ts("Model load failures (1h)", [Q(f"sum by (model) (increase(ganops_model_load_failures_total{{{NS}, "
                                              f"{MODEL}}}[1h]))", "{{model}}")], "short",
               "Failed loads or hot swaps in the hour before each point.", bars=True),
        ]),
    ]
    variables = [variable("namespace", "Namespace", "label_values(ganops_serving_ready, namespace)"),
                 variable("model", "Model", "label_values(ganops_model_info, model)")]
    return dashboard("ganops-serving", "ganops / Serving",
                     "Traffic, latency by stage, batching, safety decisions, and canary against production.", rows,
                     variables, time_from="now-3h", refresh="30s")


DASHBOARDS = {"executive": executive, "oncall": oncall, "training": training, "serving": serving}


def build() -> dict[str, str]:
    """File name → JSON text of every dashboard."""
    return {f"{name}.json": json.dumps(fn(), indent=2, ensure_ascii=False) + "\n" for name, fn in DASHBOARDS.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if the committed JSON is not what this builds.")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args(argv)
    built = build()
    if args.check:
        stale = [n for n, text in built.items() if not (args.out / n).is_file() or (args.out / n).read_text() != text]
        for name in stale:
            print(f"{args.out / name} is stale: run python dashboards/build.py", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in built.items():
        (args.out / name).write_text(text)
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
