"""Static review of the three Dockerfiles (no Docker engine on these machines): multi-stage, pinned bases, a
non-root numeric user equal to the chart's runAsUser, no build tools in the final stage, OCI labels, and the
commands the chart and the operator run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from scripts import chart

IMAGES = ("operator", "trainer", "serving")
OCI_LABELS = ("title", "description", "version", "revision", "created", "source", "licenses")
BUILD_TOOLS = ("build-essential", "gcc", "g++", "python3-dev", "make ", "git ")


def _stages(dockerfile: Path) -> tuple[dict[str, str], list[str]]:
    """(ARG defaults before the first FROM, stage texts), continuation lines joined."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    args: dict[str, str] = {}
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([line])
        elif stages:
            stages[-1].append(line)
        elif line.startswith("ARG ") and "=" in line:
            key, _, value = line[4:].partition("=")
            args[key.strip()] = value.strip()
    return args, ["\n".join(stage) for stage in stages]


@pytest.mark.parametrize("image", IMAGES)
def test_dockerfile_is_multistage_pinned_non_root_and_labelled(image: str) -> None:
    args, stages = _stages(chart.ROOT / image / "Dockerfile")
    assert len(stages) >= 2, "multi-stage: build, then a clean final stage"
    for stage in stages:
        base = stage.split()[1]
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        tag = base.partition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{image}: base {base} is not pinned"
    final = stages[-1]
    assert "COPY --from=build" in final
    users = re.findall(r"^USER (\S+)", final, re.M)
    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    uid = values["podSecurityContext"]["runAsUser"]
    assert users and users[-1] == f"{uid}:{uid}", f"{image}: final USER {users} is not the chart's {uid}"
    for tool in BUILD_TOOLS:
        assert tool not in final, f"{image}: {tool.strip()} in the final stage"
    for label in OCI_LABELS:
        assert f"org.opencontainers.image.{label}=" in final, f"{image}: no org.opencontainers.image.{label}"


def test_images_run_what_the_chart_and_operator_run() -> None:
    operator = (chart.ROOT / "operator" / "Dockerfile").read_text()
    serving = (chart.ROOT / "serving" / "Dockerfile").read_text()
    trainer = (chart.ROOT / "trainer" / "Dockerfile").read_text()
    deployment = (chart.CHART / "templates" / "operator-deployment.yaml").read_text()
    assert 'ENTRYPOINT ["kopf", "run", "-m", "ganops.operator.main"]' in operator
    assert 'command: ["kopf", "run", "-m", "ganops.operator.main"]' in deployment
    assert 'CMD ["python", "-m", "ganops.serving"]' in serving
    assert "'.[operator]'" in operator and "torch" not in operator.split("FROM")[1].replace(
        "find_spec('torch') is None", "")  # the operator image never installs torch
    assert "'.[trainer]'" in trainer and "torch==${TORCH_VERSION}" in trainer
    assert "invisible-watermark==0.2.0" in serving and "--no-deps" in serving


def test_build_context_is_small() -> None:
    ignore = (chart.ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:3] == ["!pyproject.toml", "!README.md", "!src/"]


def test_serving_image_has_a_cuda_variant_and_the_trainer_image_stays_without_a_compiler() -> None:
    args, stages = _stages(chart.ROOT / "serving" / "Dockerfile")
    assert args["TORCH_FLAVOR"] == "cpu"  # --build-arg TORCH_FLAVOR=cu128 builds the CUDA variant
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_FLAVOR}"
    assert '--index-url "${TORCH_INDEX_URL}"' in stages[0]
    # compile: true is refused where it cannot run (the operator for this image, the trainer at start), so the
    # trainer's final stage keeps carrying no build tools (see test_dockerfile_is_multistage_pinned_…)
    _, trainer = _stages(chart.ROOT / "trainer" / "Dockerfile")
    assert "python3-dev" not in trainer[-1] and "gcc" not in trainer[-1]
