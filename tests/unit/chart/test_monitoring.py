"""What the chart ships for observability is what dashboards/ holds, and its monitors scrape the shapes that
dashboards/METRICS.md ("Scraping") and dashboards/synthetic.py's scrape configs assume."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import helm_python
import pytest
import yaml
from dashboards import synthetic
from scripts import chart

from tests.unit.chart.chart_support import Obj, of_kind, one, render, render_set

ROOT = chart.ROOT
GRAFANA = ROOT / "dashboards" / "grafana"
RULES = ROOT / "dashboards" / "prometheus" / "rules.yaml"


def _dashboard_maps(objs: list[Obj]) -> list[Obj]:
    return [o for o in of_kind(objs, "ConfigMap")
            if o["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"]


@pytest.mark.parametrize("name", ["defaults", "monitoring-on"])
def test_dashboards_are_byte_identical_to_dashboards_dir(name: str) -> None:
    """Each ConfigMap value, read back from the rendered YAML, is the file's exact bytes (toJson of the file's text
    is a YAML double-quoted scalar that decodes to the same string)."""
    maps = _dashboard_maps(render_set(name))
    files = sorted(GRAFANA.glob("*.json"))
    assert len(maps) == len(files) >= 4
    shipped = {key: value for cm in maps for key, value in cm["data"].items()}
    assert sorted(shipped) == [p.name for p in files]
    for path in files:
        assert shipped[path.name].encode() == path.read_bytes(), path.name
        json.loads(shipped[path.name])


def test_dashboard_configmaps_carry_the_sidecar_label_and_folder() -> None:
    defaults = _dashboard_maps(render_set("defaults"))
    for cm in defaults:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "GANops"}
        assert cm["metadata"]["namespace"] == chart.NAMESPACE
    custom = _dashboard_maps(render_set("monitoring-on"))
    assert {cm["metadata"]["namespace"] for cm in custom} == {"monitoring"}
    assert {cm["metadata"]["annotations"]["grafana_folder"] for cm in custom} == {"ML platform"}
    relabelled = render({"monitoring": {"dashboards": {"label": "dashboards.grafana.io/load", "labelValue": "yes",
                                                       "folderAnnotation": "k8s-sidecar-target-directory"}}})
    text = relabelled["ganops/templates/dashboards.yaml"]
    assert text.count("dashboards.grafana.io/load: \"yes\"") == 4
    assert text.count("k8s-sidecar-target-directory: \"GANops\"") == 4


def test_rules_are_the_rules_file() -> None:
    """Parsed: the PrometheusRule's spec equals rules.yaml. Bytes: the rendered spec block, de-indented by the two
    spaces YAML nesting forces, is rules.yaml byte for byte (comments included)."""
    objs = render_set("defaults")
    rule = one(objs, "PrometheusRule", "monitoring")
    assert rule["spec"] == yaml.safe_load(RULES.read_text())
    text = render(api_versions=("monitoring.coreos.com/v1",))["ganops/templates/monitoring.yaml"]
    block = text.rsplit("\nspec:\n", 1)[-1]  # the PrometheusRule is the last object of monitoring.yaml
    dedented = "".join(line[2:] if line.startswith("  ") else line.lstrip(" ")
                       for line in block.splitlines(keepends=True))
    assert dedented.rstrip("\n") == RULES.read_text().rstrip("\n")


def test_chart_files_are_copies_of_dashboards() -> None:
    """Self-contained chart, no drift: the files are byte copies that `make manifests` writes (the drift test in
    tests/unit/chart/test_manifests.py fails when one differs); no links, which a copied chart directory would lose."""
    copies = {path.relative_to(chart.CHART_FILES): path for path in chart.chart_file_sources()}
    assert set(copies) == {p.relative_to(ROOT / "dashboards") for p in [*GRAFANA.glob("*.json"), RULES]}
    for rel, path in copies.items():
        assert not path.is_symlink() and path.read_bytes() == (ROOT / "dashboards" / rel).read_bytes(), rel


# ---------------------------------------------------------------------------------------------- scrape shapes
def _scrape_expectations() -> dict[str, bool]:
    """synthetic.py's scrape jobs, which mirror the chart's monitors: job name → honor_labels."""
    return {job["job_name"]: job["honor_labels"] for job in synthetic.scrape_configs("127.0.0.1:1")}


def test_monitors_scrape_what_the_dashboards_expect() -> None:
    objs = render_set("defaults")
    expected = _scrape_expectations()
    operator_sm = one(objs, "ServiceMonitor", "operator")
    serving_sm = one(objs, "ServiceMonitor", "serving")
    trainer_pm = one(objs, "PodMonitor", "trainer")
    # Scrape job names: a ServiceMonitor's is the Service name, a PodMonitor's "<namespace>/<name>".
    operator_service = one(objs, "Service", "operator")["metadata"]["name"]
    serving_service = one(objs, "Service", "serving")["metadata"]["name"]
    trainer_job = f"{trainer_pm['metadata']['namespace']}/{trainer_pm['metadata']['name']}"
    assert "ganops-operator" in operator_service and re.search(".*ganops-operator.*", operator_service)
    assert "ganops-serving" in serving_service
    assert "ganops-trainer" in trainer_job
    (op_ep,) = operator_sm["spec"]["endpoints"]
    (sv_ep,) = serving_sm["spec"]["endpoints"]
    (tr_ep,) = trainer_pm["spec"]["podMetricsEndpoints"]
    assert op_ep["honorLabels"] is expected["ganops-operator"] is True
    assert sv_ep["honorLabels"] is expected["ganops-serving"] is False
    assert tr_ep["honorLabels"] is expected["ganops-trainer"] is True
    assert op_ep["port"] == "metrics" and sv_ep["port"] == "http" and tr_ep["port"] == "metrics"


def test_monitors_select_the_pods_and_ports_that_exist() -> None:
    objs = render_set("defaults")
    for component, port in (("operator", "metrics"), ("serving", "http")):
        service = one(objs, "Service", component)
        monitor = one(objs, "ServiceMonitor", component)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        assert port in {p["name"] for p in service["spec"]["ports"]}
        pod = one(objs, "Deployment", component)["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        assert port in {p["name"] for p in pod["spec"]["containers"][0]["ports"]}


def test_trainer_podmonitor_matches_the_operators_pods() -> None:
    """The labels and port name are the ones children.py puts on trainer pods (built here by the operator code)."""
    from ganops.operator import children

    labels = children.labels("gan", "trainer")
    pm = one(render_set("defaults"), "PodMonitor", "trainer")["spec"]
    assert pm["selector"]["matchLabels"].items() <= labels.items()
    assert all(e["key"] in labels for e in pm["selector"]["matchExpressions"] if e["operator"] == "Exists")
    assert pm["namespaceSelector"] == {"any": True}
    watched = one(render_set("watch-namespace"), "PodMonitor", "trainer")["spec"]
    assert watched["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    source = Path(children.__file__).read_text()
    assert '"name": "metrics"' in source  # the trainer container's port name the PodMonitor scrapes


def test_the_packaged_chart_carries_the_files_not_the_links(tmp_path: Path) -> None:
    """`helm package` (what a chart repository serves) resolves the links: the archive holds the files, and it
    renders exactly what the chart directory renders."""
    archive = helm_python.package(chart.CHART, destination=tmp_path)
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for path in [*sorted(GRAFANA.glob("*.json")), RULES]:
            rel = "ganops/files/" + path.relative_to(ROOT / "dashboards").as_posix()
            assert members[rel].isfile(), rel
            extracted = tar.extractfile(members[rel])
            assert extracted is not None and extracted.read() == path.read_bytes()
    with helm_python.Chart.load(archive) as packaged, helm_python.Chart.load(chart.CHART) as directory:
        values = {"monitoring": {"forceEnable": True}}
        assert packaged.render(values, name="ganops") == directory.render(values, name="ganops")


def test_notes_tell_how_to_submit_a_job_and_find_the_dashboards() -> None:
    notes = render(api_versions=("monitoring.coreos.com/v1",))["ganops/templates/NOTES.txt"]
    assert "kubectl -n <ns> apply -f manifests/examples/digits.yaml" in notes
    assert "kubectl -n <ns> create secret generic ganops-s3" in notes
    assert "grafana_dashboard=1" in notes and '"GANops" folder' in notes
    assert "port-forward svc/ganops-serving" in notes
    assert "not served" not in notes
