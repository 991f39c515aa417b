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
    operator, serving, trainer = (re.sub(r"\s*\\\n\s*", " ", (chart.ROOT / name / "Dockerfile").read_text())
                                  for name in ("operator", "serving", "trainer"))
    deployment = (chart.CHART / "templates" / "operator-deployment.yaml").read_text()
    assert 'ENTRYPOINT ["kopf", "run", "-m", "ganops.operator.main"]' in operator
    assert 'command: ["kopf", "run", "-m", "ganops.operator.main"]' in deployment
    assert 'CMD ["python", "-m", "ganops.serving"]' in serving
    # Each image installs its own lock (hashes, no resolution at build time), then the ganops wheel without deps.
    for text, lock in ((operator, "operator"), (trainer, "trainer"), (serving, "serving")):
        assert f"--no-deps --require-hashes -r images/locks/{lock}.lock" in text
        assert "pip wheel -q --no-deps --no-build-isolation" in text and "--no-deps --target /opt/ganops" in text
    assert "torch" not in operator.split("FROM")[2].replace("find_spec('torch') is None", "").replace(
        "'torch in the operator image'", "")  # the operator image never installs torch
    for text, lock in ((trainer, "trainer-torch"), (serving, "serving-torch")):
        assert f"--no-deps --require-hashes -r images/locks/{lock}.lock" in text  # TORCH_SOURCE=lock
        assert '--index-url "$TORCH_SOURCE" "torch==${TORCH_VERSION}"' in text  # the published build


def test_locks_pin_every_package_with_hashes_and_match_pyproject() -> None:
    from scripts.images import LOCKS
    from scripts.images.lock import parse, stale

    assert stale() == [], "pyproject.toml's dependencies changed: run `make lock`"
    for path in sorted(LOCKS.glob("*.lock")):
        entries = parse(path.read_text())
        assert entries, path.name
        for entry in entries:
            assert "==" in entry.lines[0], (path.name, entry.lines[0])
            assert any("--hash=sha256:" in line for line in entry.lines), (path.name, entry.name)
    serving = {e.name for e in parse((LOCKS / "serving.lock").read_text())}
    assert "invisible-watermark" in serving and "torch" not in serving
    assert "mlflow" not in serving and "mlflow-skinny" in serving  # the client only: no server stack in images
    serving_torch = {e.name for e in parse((LOCKS / "serving-torch.lock").read_text())}
    trainer_torch = {e.name for e in parse((LOCKS / "trainer-torch.lock").read_text())}
    assert "torch" in serving_torch and trainer_torch - serving_torch == {"triton", "nvidia-nvtx"}


def test_build_context_is_small() -> None:
    ignore = (chart.ROOT / ".dockerignore").read_text().split()
    allowed = ignore[ignore.index("*") + 1:]
    assert [a for a in allowed if a.startswith("!")] == ["!pyproject.toml", "!README.md", "!src/", "!images/locks/",
                                                         "!images/wheels/"]


def test_trainer_pods_run_as_the_chart_and_the_images_do() -> None:
    """The operator's trainer pods, the chart's pods and the images' USER: one securityContext."""
    from ganops.operator.children import restricted_container_security, restricted_pod_security

    values = yaml.safe_load((chart.CHART / "values.yaml").read_text())
    assert restricted_pod_security() == values["podSecurityContext"]
    assert restricted_container_security() == values["containerSecurityContext"]


def test_serving_image_has_a_cuda_variant_and_the_trainer_image_stays_without_a_compiler() -> None:
    args, stages = _stages(chart.ROOT / "serving" / "Dockerfile")
    # CPU wheels by default; --build-arg TORCH_SOURCE=https://download.pytorch.org/whl/cu128 (or `lock`: PyPI's
    # torch is the CUDA build) gives the CUDA variant for `device: cuda`
    assert args["TORCH_SOURCE"] == "https://download.pytorch.org/whl/cpu"
    assert '--index-url "$TORCH_SOURCE"' in stages[0] and "serving-torch.lock" in stages[0]
    # compile: true is refused where it cannot run (the operator for this image, the trainer at start), so the
    # trainer's final stage keeps carrying no build tools (see test_dockerfile_is_multistage_pinned_…)
    _, trainer = _stages(chart.ROOT / "trainer" / "Dockerfile")
    assert "python3-dev" not in trainer[-1] and "gcc" not in trainer[-1]
