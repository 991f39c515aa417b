"""Render ganops' Grafana dashboards from a live Prometheus into PNGs, for reviewers without a Grafana.

    python scripts/dashboards_preview.py --prometheus http://127.0.0.1:9090 --out reports/dashboards/

Each dashboard becomes `<out>/<uid>.png`, laid out by the panels' gridPos (24 columns): time series as line
charts, stats as big numbers, bar gauges as horizontal bars, tables as text. Grafana's variables are filled as
Grafana would (`$__rate_interval` from the scrape interval and step, `$__range`, "All" = `.*` for query
variables; `--var name=value` overrides). `<out>/index.md` lists every panel with its status (ok / no data /
error) and series count; `--strict` exits 1 when a panel has no data or fails. Needs matplotlib
(`pip install matplotlib`); everything else is the standard library.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DASHBOARDS = sorted((REPO / "dashboards" / "grafana").glob("*.json"))
COL_IN = 0.78  # inches per grid column
ROW_IN = 0.36  # inches per grid row unit
COLORS = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0", "#508642",
          "#cca300"]
THRESHOLD_COLORS = {"green": "#56a64b", "red": "#e02f44", "orange": "#ff9830", "yellow": "#f2cc0c",
                    "blue": "#3274d9", "transparent": "#888888"}
DURATION = re.compile(r"(\d+)([smhdwy])")
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


# --------------------------------------------------------------------------------------------------- Prometheus
class PromError(RuntimeError):
    pass


class Prometheus:
    def __init__(self, url: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, params: dict[str, str]) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=self.timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise PromError(f"HTTP {exc.code}") from exc
        if body.get("status") != "success":
            raise PromError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query_range",
                         {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
        return list(data["result"])


# ------------------------------------------------------------------------------------------------ interpolation
def seconds(text: str) -> float:
    """'now-6h' / '6h' / '1h30m' / '90' → seconds."""
    text = text.removeprefix("now-")
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = DURATION.findall(text)
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    return float(sum(int(n) * SECONDS[u] for n, u in parts))


def duration(secs: float) -> str:
    return f"{max(1, round(secs))}s"


def interpolate(expr: str, values: dict[str, str]) -> str:
    for name in sorted(values, key=len, reverse=True):
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    return expr


def variable_values(dash: dict[str, Any], overrides: dict[str, str], range_s: float, step: float,
                    scrape_s: float) -> dict[str, str]:
    values = {"__interval": duration(step), "__rate_interval": duration(max(4 * scrape_s, step + scrape_s)),
              "__range": duration(range_s), "__range_s": str(round(range_s))}
    for var in dash.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            values[var["name"]] = var.get("allValue") or ".*"
    values.update(overrides)
    return values


# --------------------------------------------------------------------------------------------------- formatting
def fmt(value: float, unit: str, decimals: int | None = None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if unit == "percentunit":
        return f"{value * 100:.{1 if decimals is None else decimals}f}%"
    if unit == "currencyUSD":
        return "$" + _si(value, 3)
    if unit == "s":
        a = abs(value)
        if a < 1e-3:
            return f"{value * 1e6:.0f} µs"
        if a < 1:
            return f"{value * 1e3:.0f} ms"
        if a < 120:
            return f"{value:.2f} s"
        if a < 7200:
            return f"{value / 60:.1f} min"
        return f"{value / 3600:.1f} h"
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or suffix == "TiB":
                return f"{value:.1f} {suffix}"
            value /= 1024
    if unit == "reqps":
        return _si(value, 2) + " req/s"
    if decimals is not None:
        return f"{value:.{decimals}f}"
    return _si(value, 3)


def _si(value: float, digits: int) -> str:
    a = abs(value)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if a >= div:
            return f"{value / div:.{digits}g}{suffix}"
    if a != 0 and a < 0.001:
        return f"{value:.1e}"
    return f"{float(f'{value:.{digits}g}'):g}"  # significant digits, never an exponent


def legend(fmt_: str, labels: dict[str, str]) -> str:
    if not fmt_ or fmt_ == "__auto":
        shown = {k: v for k, v in labels.items() if k != "__name__"}
        return ", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or labels.get("__name__", "value")
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt_)


def threshold_color(value: float, defaults: dict[str, Any]) -> str:
    steps = (defaults.get("thresholds") or {}).get("steps") or []
    color = "#3274d9"
    for step in steps:
        if step.get("value") is None or (value is not None and not math.isnan(value) and value >= step["value"]):
            color = THRESHOLD_COLORS.get(step.get("color", ""), step.get("color") or color)
    return color if color != "#888888" else "#3274d9"


# ------------------------------------------------------------------------------------------------------ panels
@dataclass
class Series:
    ref: str
    label: str
    times: list[float]
    values: list[float]


@dataclass
class PanelData:
    panel: dict[str, Any]
    series: list[Series] = field(default_factory=list)
    rows: list[dict[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.errors:
            return "error"
        finite = any(not math.isnan(v) for s in self.series for v in s.values)
        return "ok" if finite or self.rows else "no data"


def fetch(prom: Prometheus, panel: dict[str, Any], values: dict[str, str], start: float, end: float,
          step: float) -> PanelData:
    data = PanelData(panel)
    for target in panel.get("targets", []):
        expr = interpolate(target["expr"], values)
        try:
            if target.get("instant"):
                result = prom.query(expr, end)
                for item in result:
                    ts, val = item["value"]
                    data.series.append(Series(target["refId"], legend(target.get("legendFormat", ""), item["metric"]),
                                              [float(ts)], [float(val)]))
                    if target.get("format") == "table":
                        data.rows.append({k: v for k, v in item["metric"].items() if k != "__name__"})
            else:
                for item in prom.query_range(expr, start, end, step):
                    data.series.append(Series(target["refId"], legend(target.get("legendFormat", ""), item["metric"]),
                                              [float(t) for t, _ in item["values"]],
                                              [float(v) for _, v in item["values"]]))
        except (PromError, OSError, ValueError) as exc:
            data.errors.append(f"{target['refId']}: {exc}")
    return data


def last_finite(values: list[float]) -> float:
    for v in reversed(values):
        if not math.isnan(v):
            return v
    return math.nan


def draw_panel(fig: Any, box: tuple[float, float, float, float], data: PanelData) -> None:
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    panel = data.panel
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    unit = defaults.get("unit", "short")
    decimals = defaults.get("decimals")
    x, y, w, h = box
    frame = fig.add_axes((x, y, w, h))
    frame.set_xticks([])
    frame.set_yticks([])
    frame.set_facecolor("#fbfbfc")
    for spine in frame.spines.values():
        spine.set_color("#d0d4d9")
    frame.set_title(panel["title"], loc="left", fontsize=9, fontweight="bold", pad=3)
    if data.status != "ok":
        msg = "; ".join(data.errors)[:160] if data.errors else "No data"
        frame.text(0.5, 0.5, msg, ha="center", va="center", fontsize=8,
                   color="#c4162a" if data.errors else "#8e8e8e", wrap=True, transform=frame.transAxes)
        return
    kind = panel["type"]
    inner = (x + w * 0.08, y + h * 0.2, w * 0.88, h * 0.68)
    if kind == "timeseries":
        ax = fig.add_axes(inner)
        right_units = {o["matcher"]["options"]: next((p["value"] for p in o["properties"] if p["id"] == "unit"), unit)
                       for o in panel.get("fieldConfig", {}).get("overrides", [])
                       if o.get("matcher", {}).get("id") == "byFrameRefID"}
        ax2 = ax.twinx() if right_units else None
        for i, s in enumerate(data.series[:12]):
            target_ax = ax2 if (ax2 is not None and s.ref in right_units) else ax
            style = "--" if target_ax is ax2 else "-"
            times = [mdates.date2num(_dt(t)) for t in s.times]
            target_ax.plot(times, s.values, style, color=COLORS[i % len(COLORS)], linewidth=1.2, label=s.label[:40])
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
        if ax2 is not None:
            u2 = next(iter(right_units.values()))
            ax2.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, u2)))
            ax2.tick_params(labelsize=6)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=6)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if ax2 is not None:
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles[:6], labels[:6], fontsize=5.5, loc="upper left", bbox_to_anchor=(0, -0.12), ncol=3,
                      frameon=False)
    elif kind in ("stat", "gauge"):
        shown = data.series[:4]
        for i, s in enumerate(shown):
            value = last_finite(s.values)
            cy = 0.45 if len(shown) == 1 else 0.8 - i * (0.7 / max(1, len(shown) - 1))
            text = _mapped(value, defaults) or fmt(value, unit, decimals)
            frame.text(0.5, cy, text, ha="center", va="center", transform=frame.transAxes,
                       fontsize=22 if len(shown) == 1 else 12, fontweight="bold",
                       color=threshold_color(value, defaults))
            if len(shown) > 1 or (s.label and s.label not in ("value",) and "=" not in s.label):
                frame.text(0.5, cy - (0.25 if len(shown) == 1 else 0.1), s.label[:40], ha="center", va="center",
                           transform=frame.transAxes, fontsize=6, color="#555")
    elif kind == "bargauge":
        ax = fig.add_axes((x + w * 0.35, y + h * 0.06, w * 0.55, h * 0.8))
        items = [(s.label, last_finite(s.values)) for s in data.series if not math.isnan(last_finite(s.values))][:10]
        items.reverse()
        colors = [threshold_color(v, defaults) for _, v in items]
        ax.barh(range(len(items)), [v for _, v in items], color=colors)
        ax.set_yticks(range(len(items)), [lab[:32] for lab, _ in items], fontsize=6)
        for i, (_, v) in enumerate(items):
            ax.text(v, i, " " + fmt(v, unit, decimals), va="center", fontsize=6)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
        ax.tick_params(axis="x", labelsize=5)
        ax.spines[["top", "right"]].set_visible(False)
    elif kind == "table":
        order = _table_columns(panel, data.rows)
        lines = ["   ".join(f"{c:<14}"[:14] for c in order)]
        lines += ["   ".join(f"{row.get(c, ''):<14}"[:14] for c in order) for row in data.rows[:12]]
        frame.text(0.03, 0.85, "\n".join(lines), ha="left", va="top", family="monospace", fontsize=6.5,
                   transform=frame.transAxes)


def _mapped(value: float, defaults: dict[str, Any]) -> str | None:
    for mapping in defaults.get("mappings", []) or []:
        if mapping.get("type") == "value" and not math.isnan(value):
            option = mapping.get("options", {}).get(str(int(value)) if value == int(value) else str(value))
            if option:
                return str(option.get("text"))
    return None


def _table_columns(panel: dict[str, Any], rows: list[dict[str, str]]) -> list[str]:
    for t in panel.get("transformations", []):
        if t.get("id") == "organize" and t.get("options", {}).get("indexByName"):
            index = t["options"]["indexByName"]
            return sorted(index, key=index.get)
    return sorted({k for row in rows for k in row})


def _dt(ts: float) -> Any:
    from datetime import datetime

    return datetime.fromtimestamp(ts)


# ---------------------------------------------------------------------------------------------------- dashboards
def render(prom: Prometheus, path: Path, out: Path, *, range_override: str | None, end: float,
           overrides: dict[str, str], scrape_s: float, dpi: int) -> list[tuple[str, PanelData]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.loads(path.read_text())
    range_s = seconds(range_override or dash.get("time", {}).get("from", "now-6h"))
    step = max(scrape_s, math.ceil(range_s / 240))
    values = variable_values(dash, overrides, range_s, step, scrape_s)
    start = end - range_s
    panels = dash["panels"]
    rows_total = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    width, height = 24 * COL_IN, rows_total * ROW_IN + 0.6
    fig = plt.figure(figsize=(width, height), dpi=dpi, facecolor="white")
    fig.text(0.01, 1 - 0.25 / height, f"{dash['title']}  ·  last {duration(range_s)}  ·  "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(end))}  ·  {prom.url}",
             fontsize=11, fontweight="bold", va="center")
    top = 0.6 / height
    results: list[tuple[str, PanelData]] = []
    for panel in panels:
        g = panel["gridPos"]
        pad_x, pad_y = 0.06 / width, 0.08 / height
        box = (g["x"] * COL_IN / width + pad_x, 1 - top - (g["y"] + g["h"]) * ROW_IN / height + pad_y,
               g["w"] * COL_IN / width - 2 * pad_x, g["h"] * ROW_IN / height - 2 * pad_y - 0.18 / height)
        if panel["type"] == "row":
            fig.text(box[0], box[1] + box[3] / 2, panel["title"], fontsize=10, fontweight="bold", color="#1f60c4",
                     va="center")
            continue
        data = fetch(prom, panel, values, start, end, step)
        draw_panel(fig, box, data)
        results.append((dash["title"], data))
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{dash['uid']}.png", dpi=dpi)
    plt.close(fig)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="Base URL, e.g. http://127.0.0.1:9090")
    parser.add_argument("--out", type=Path, required=True, help="Directory for <uid>.png and index.md")
    parser.add_argument("--dashboard", type=Path, action="append", help="Dashboard JSON (default: all of ganops')")
    parser.add_argument("--range", dest="range_", help="Time range such as 6h or 5m (default: each dashboard's)")
    parser.add_argument("--end", type=float, help="End of the range, Unix seconds (default: now)")
    parser.add_argument("--var", action="append", default=[], help="name=value for a dashboard variable")
    parser.add_argument("--scrape-interval", default="15s", help="For $__rate_interval (default 15s)")
    parser.add_argument("--dpi", type=int, default=80)
    parser.add_argument("--strict", action="store_true", help="Exit 1 if a panel has no data or fails")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib is needed: .venv/bin/pip install matplotlib", file=sys.stderr)
        return 2
    overrides = dict(v.split("=", 1) for v in args.var)
    prom = Prometheus(args.prometheus)
    end = args.end or time.time()
    lines = ["# Dashboard preview", "", f"Prometheus: {args.prometheus} · end: "
             f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(end))}", "",
             "| dashboard | panel | type | status | series |", "|---|---|---|---|---|"]
    bad = 0
    for path in args.dashboard or DEFAULT_DASHBOARDS:
        results = render(prom, path, args.out, range_override=args.range_, end=end, overrides=overrides,
                         scrape_s=seconds(args.scrape_interval), dpi=args.dpi)
        for title, data in results:
            status = data.status
            bad += status != "ok"
            detail = f" ({'; '.join(data.errors)})" if data.errors else ""
            lines.append(f"| {title} | {data.panel['title']} | {data.panel['type']} | {status}{detail} | "
                         f"{len(data.series)} |")
        print(f"{path.name}: {sum(d.status == 'ok' for _, d in results)}/{len(results)} panels with data "
              f"→ {args.out}")
    (args.out / "index.md").write_text("\n".join(lines) + "\n")
    return 1 if args.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
