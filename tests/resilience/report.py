"""Figures of the resilience and bad-input runs, and the report `make resilience` writes.

Tests record numbers with the ``figures`` fixture (``figures["kills"] = 100``); they are kept per test in
``FIGURES``. Loaded as a plugin (``pytest -p tests.resilience.report``) with ``GANOPS_RESILIENCE_REPORT=<path
without suffix>`` set, this module also records each test's outcome and duration and, at the end of the session,
writes ``<path>.json`` and ``<path>.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import pytest

FULL = os.environ.get("GANOPS_RESILIENCE", "").lower() == "full"
REPORT_ENV = "GANOPS_RESILIENCE_REPORT"

FIGURES: dict[str, dict[str, Any]] = {}
OUTCOMES: dict[str, dict[str, Any]] = {}
_STARTED = time.time()


def sized(fast: int, full: int) -> int:
    """The fast subset's size in `make test`, the full one in `make resilience` (GANOPS_RESILIENCE=full)."""
    return full if FULL else fast


def figures_for(nodeid: str) -> dict[str, Any]:
    return FIGURES.setdefault(nodeid, {})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        OUTCOMES[report.nodeid] = {"outcome": report.outcome, "seconds": round(report.duration, 1)}


# Headline figures: (label, key in a test's figures, how to combine across tests)
HEADLINE = [
    ("trainer SIGKILLs", "kills"),
    ("  of them during a checkpoint save", "kills_mid_checkpoint"),
    ("steps lost beyond one checkpoint interval", "steps_lost_beyond_interval"),
    ("most steps lost by one kill", "max_steps_lost"),
    ("corrupt checkpoints", "corrupt_checkpoints"),
    ("checkpoints verified", "checkpoints_verified"),
    ("recoveries (restarts that resumed)", "recoveries"),
    ("preemptions (SIGTERM) relaunched by the operator", "preemptions"),
    ("backoff spent by preemptions", "backoff_spent"),
    ("object-store faults injected", "s3_faults_injected"),
    ("MLflow outages survived", "mlflow_outages"),
    ("metric points missing in MLflow afterwards", "mlflow_points_missing"),
    ("operator SIGKILLs", "operator_kills"),
    ("duplicate children", "duplicate_children"),
    ("lost transitions", "lost_transitions"),
    ("serving requests under faults", "serving_requests"),
    ("serving 5xx", "serving_5xx"),
    ("serving readiness drops", "readiness_drops"),
    ("bad job files refused by `ganops validate`", "badinput_validate_refused"),
    ("bad job files refused by the CRD schema + CEL", "badinput_crd_refused"),
    ("bad jobs marked InvalidSpec by the operator", "badinput_operator_invalid"),
    ("malformed HTTP requests", "http_bad_requests"),
    ("  answered 5xx", "http_5xx"),
]

# Attacks: a test that reproduces one records ``figures["attack"] = "<what the attacker does>"`` (plus its
# numbers); it is "defended" when the test passed (each test asserts the attack fails).
ATTACK = "attack"


def _attacks(data: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """``(nodeid, attack, outcome, other figures)`` of every test that reproduced an attack, in test order."""
    rows = []
    for nodeid, figures in data["figures"].items():
        if ATTACK in figures:
            outcome = data["outcomes"].get(nodeid, {}).get("outcome", "?")
            rows.append((nodeid, str(figures[ATTACK]), outcome, {k: v for k, v in figures.items() if k != ATTACK}))
    return rows


# What these runs found in the product (each fixed, with a regression test that names it).
FINDINGS = [
    "100-kill run, kill 18: a step folder held re-uploaded weights beside the manifest of an earlier attempt "
    "(killed after the manifest, before latest.json) - `CheckpointManager.save` now drops a step's old manifest "
    "first (tests/resilience/test_checkpoint_reupload.py).",
    "`ganops validate`: deeply nested YAML and 5000-digit numbers crashed with a traceback; duplicate keys were "
    "silently merged; `true` passed as a number; NaN was reported as a bound (tests/badinput/corpus.py).",
    "Serving: JSON bodies `json.loads` cannot read (deep nesting, huge numbers, not UTF-8) got a generic 400 "
    "without the field; now 400 malformed_json naming the body (tests/badinput/test_http.py).",
    "Serving edge (issue 13): watermark verification without bounds (a 16 KB PNG cost 35 s and 1.15 GB), no "
    "connection limits, header size limit or read timeouts, X-Forwarded-For trusted from 127.0.0.1, unlimited failed "
    "authentications, unweighted rate limits, bodies parsed before authentication, a synchronous unchained audit "
    "log - each now refused, see Attacks (tests/resilience/test_serving_attacks.py).",
    "Tenancy (issue 13): a job in another namespace moved `digits@production` (auto, force and rollback), the "
    "operator sent its MLflow token to a job's `mlflowUri`, users chose image, priority class, node selector and "
    "tolerations of the operator's pods, presigned URIs were logged as MLflow params - each now refused, see "
    "Attacks (tests/integration/test_attacks_tenancy.py).",
]


def _totals() -> dict[str, Any]:
    totals: dict[str, Any] = {}
    for figures in FIGURES.values():
        for _, key in HEADLINE:
            if key in figures:
                value = figures[key]
                totals[key] = max(totals.get(key, 0), value) if key.startswith("max_") else totals.get(key, 0) + value
    return totals


def _markdown(data: dict[str, Any]) -> str:
    totals = data["totals"]
    lines = [
        "# Resilience report",
        "",
        f"`make resilience` ({data['mode']} sizes) on {data['host']}, {data['date']}; "
        f"{data['passed']} passed, {data['failed']} failed, {data['skipped']} skipped in {data['seconds']:.0f} s.",
        "",
    ]
    run = data.get("attacks_run")
    if run:  # attack rows from a later run of the attack tests alone (`--merge`), not counted in the line above
        lines += [f"The attack tests ({', '.join(f'`{t}`' for t in run['tests'])}) ran on their own at {run['mode']} "
                  f"sizes, {run['date']}: {run['passed']} passed, {run['failed']} failed in {run['seconds']:.0f} s; "
                  "their rows replace those of the run above (counted in neither its header nor its time).", ""]
    lines += [
        "| figure | value |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {totals[key]} |" for label, key in HEADLINE if key in totals]
    attacks = _attacks(data)
    if attacks:
        defended = sum(1 for _, _, outcome, _ in attacks if outcome == "passed")
        lines += [f"| attacks reproduced | {len(attacks)} |", f"| attacks defended | {defended} |"]
        lines += ["", "## Attacks", "",
                  f"{len(attacks)} attacks reproduced against real servers on 127.0.0.1, {defended} defended "
                  "(the test asserts the attack fails), "
                  f"{len(attacks) - defended} not.", "",
                  "| attack | outcome | figures | test |", "|---|---|---|---|"]
        for nodeid, attack, outcome, figs in attacks:
            shown = ", ".join(f"{k}={v}" for k, v in figs.items())
            outcome = "defended" if outcome == "passed" else f"**{outcome}**"
            lines.append(f"| {attack} | {outcome} | {shown} | `{nodeid.rsplit('::', 1)[-1]}` |")
    lines += ["", "## Found and fixed", ""] + [f"- {finding}" for finding in FINDINGS]
    lines += ["", "## Per test", "", "| test | outcome | s | figures |", "|---|---|---:|---|"]
    for nodeid in sorted(set(data["outcomes"]) | set(data["figures"])):
        outcome = data["outcomes"].get(nodeid, {})
        figs = ", ".join(f"{k}={v}" for k, v in data["figures"].get(nodeid, {}).items())
        lines.append(f"| `{nodeid}` | {outcome.get('outcome', '?')} | {outcome.get('seconds', '')} | {figs} |")
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    outcomes = [o["outcome"] for o in OUTCOMES.values()]
    data = {
        "mode": "full" if FULL else "fast",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "seconds": round(time.time() - _STARTED, 1),
        "passed": outcomes.count("passed"),
        "failed": outcomes.count("failed"),
        "skipped": outcomes.count("skipped"),
        "totals": _totals(),
        "figures": FIGURES,
        "outcomes": OUTCOMES,
    }
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(_markdown(data))


def merge_attacks(partial: Path, into: Path) -> None:
    """Put the rows of a run of the attack tests alone (``partial``, a ``<path>.json`` this plugin wrote) into the
    report ``into`` (``<path>`` without suffix) of the last full ``make resilience``: its figures and outcomes
    replace those tests' rows, and the report says when and how that run went. Used when the whole suite is too
    long to rerun for a change to the attacks."""
    data = json.loads(into.with_suffix(".json").read_text())
    run = json.loads(partial.read_text())
    tests = sorted({nodeid.split("::", 1)[0] for nodeid in (*run["figures"], *run["outcomes"])})
    for key in ("figures", "outcomes"):
        data[key] = {n: v for n, v in data[key].items() if n.split("::", 1)[0] not in tests} | run[key]
    data["attacks_run"] = {"date": run["date"], "mode": run["mode"], "seconds": run["seconds"], "tests": tests,
                           "passed": run["passed"], "failed": run["failed"]}
    FIGURES.clear()
    FIGURES.update(data["figures"])
    data["totals"] = _totals()
    into.with_suffix(".json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    into.with_suffix(".md").write_text(_markdown(data))


if __name__ == "__main__":  # python -m tests.resilience.report --merge /tmp/attacks.json reports/resilience
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "--merge":
        sys.exit("usage: python -m tests.resilience.report --merge <attacks run>.json <report path without suffix>")
    merge_attacks(Path(sys.argv[2]), Path(sys.argv[3]))
