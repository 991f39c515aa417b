"""Promotion against a real ``mlflow server``: gates, registry versions, aliases, and a bit-exact reload."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from ganops import tracking
from ganops.api.spec import GanTrainingJob
from ganops.checkpoints import memorization_index_of
from ganops.cli import app
from ganops.contracts import TAG_MEMORIZATION_INDEX as MEMORIZATION_TAG
from ganops.generator import generate, load_generator
from ganops.local import run_local
from ganops.operator.promotion import promote_job
from ganops.promotion import choose_checkpoint, promote, samples_png, samples_sha256
from ganops.serving.model_store import ModelLoader, RegistryResolver
from ganops.serving.safety import RequestContext, make_samples
from ganops.serving.settings import ServingSettings
from ganops.trainer.data import digits
from tests.support.jobs import as_job, digits_job, write_job

pytest_plugins = ["tests.support.mlflow_server"]

BIN = Path(sys.executable).parent


@dataclass
class Trained:
    job: GanTrainingJob
    obj: dict[str, Any]
    root: str  # the job's checkpoint root
    tracking_uri: str
    model: str
    summary: list[str]
    home: Path


def _with(trained: Trained, **promotion: Any) -> GanTrainingJob:
    obj = {**trained.obj, "spec": {**trained.obj["spec"], "promotion": {"modelName": trained.model, **promotion}}}
    return as_job(obj)


@pytest.fixture(scope="module")
def trained(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`ganops run` of a small digits job: evaluated (FID) at steps 5 and 10, auto-promoted (no gates)."""
    uri = mlflow_server.url if mlflow_server.running else mlflow_server.start().url
    home = tmp_path_factory.mktemp("promotion") / ".ganops"
    model = f"digits-{uuid.uuid4().hex[:8]}"
    obj = digits_job(
        "digits-promo",
        evaluation={"everySteps": 5, "numSamples": 200, "metrics": ["fid"], "featureExtractor": "digits"},
        tracking={"mlflowUri": uri, "experiment": f"promo-{uuid.uuid4().hex[:8]}"},
        promotion={"modelName": model},
    )
    job = as_job(obj)
    old = os.environ.get("GANOPS_METRICS_PORT")
    os.environ["GANOPS_METRICS_PORT"] = "0"
    try:
        summary = run_local(job, home=home)
    finally:
        if old is None:
            os.environ.pop("GANOPS_METRICS_PORT")
        else:
            os.environ["GANOPS_METRICS_PORT"] = old
    root = f"file://{home.resolve()}/checkpoints/default/digits-promo"
    return Trained(job, obj, root, uri, model, summary, home)


def test_run_promotes_automatically_and_writes_the_grid(trained: Trained) -> None:
    text = "\n".join(trained.summary)
    assert "training completed at step 10" in text
    assert "quality:    200 samples of the EMA generator vs real data, per evaluation" in text
    assert [line.split(":")[0].split() for line in trained.summary if line.startswith("  step")] == [
        ["step", "5"], ["step", "10"]]
    assert f"promoted:   {trained.model} version 1 is now {trained.model}@production (set)" in text
    alias = tracking.get_alias(trained.tracking_uri, trained.model, "production")
    assert alias is not None and alias.version == "1"
    grid = trained.home.resolve() / "samples" / "digits-promo.png"
    assert f"samples:    {grid}" in text and grid.read_bytes().startswith(b"\x89PNG")


def test_best_checkpoint_is_chosen_by_its_metric(trained: Trained) -> None:
    choice = choose_checkpoint(trained.root)
    manifests = {s: choose_checkpoint(f"{trained.root}/step-{s:09d}").manifest for s in (5, 10)}
    fids = {s: m["metrics"]["fid"] for s, m in manifests.items()}
    assert choice.step == min(fids, key=lambda s: (fids[s], s))
    assert choice.manifest["metric"] == fids[choice.step]


def test_alias_moves_only_when_the_gates_pass(trained: Trained) -> None:
    uri, model = trained.tracking_uri, trained.model
    best = choose_checkpoint(trained.root)
    fid = best.manifest["metrics"]["fid"]

    rejected = promote(_with(trained, gates={"maxFID": fid - 5, "minRecall": 0.5}), trained.root, uri)
    assert not rejected.promoted
    assert rejected.decision.failures == [
        f"fid {fid:.4g} > maxFID {fid - 5:.4g} (by 5)",
        "metric recall was not measured (gate minRecall 0.5)",
    ]
    assert rejected.previous_version == "1"
    alias = tracking.get_alias(uri, model, "production")
    assert alias is not None and alias.version == "1"  # did not move
    version = tracking.get_version(uri, model, rejected.version)
    assert version is not None and version.tags["ganops.gates"] == "rejected"
    assert "maxFID" in version.tags["ganops.gates.failures"]
    assert any("rejected:" in line and "still points at version 1" in line for line in rejected.lines())

    passed = promote(_with(trained, gates={"maxFID": fid + 10}), trained.root, uri)
    assert passed.promoted and passed.decision.failures == []
    assert passed.decision.passes == [f"fid {fid:.4g} <= maxFID {fid + 10:.4g}"]
    assert passed.version == "1" and passed.reused_version  # same checkpoint, same verdict: same version
    canary = promote(_with(trained, alias="canary", gates={"maxFID": fid + 10}), trained.root, uri)
    assert canary.promoted and canary.version == "1" and canary.previous_version is None
    info = tracking.get_alias(uri, model, "canary")
    assert info is not None and info.version == "1"


def test_registered_version_reloads_into_the_promoted_generator_bit_for_bit(trained: Trained, tmp_path: Path) -> None:
    uri, model = trained.tracking_uri, trained.model
    result = promote(_with(trained), trained.root, uri)
    assert result.samples is not None and result.samples_png is not None

    info = tracking.get_alias(uri, model, "production")
    assert info is not None and info.version == result.version
    assert info.checkpoint_uri == result.checkpoint_uri == choose_checkpoint(trained.root).uri
    tags = info.tags
    assert tags["ganops.job"] == "default/digits-promo" and tags["ganops.step"] == str(result.step)
    assert float(tags["ganops.metric.fid"]) == result.metrics["fid"]
    assert {k: tags[f"ganops.generation.{k}"] for k in
            ("architecture", "latentDim", "imageSize", "channels", "ema", "truncation", "sampleSeed")} == {
        "architecture": "dcgan", "latentDim": "8", "imageSize": "8", "channels": "1", "ema": "true",
        "truncation": "", "sampleSeed": "0"}
    assert "ganops.generation.numClasses" not in tags  # unconditional

    # what serving will do: follow the alias to the weights, load them (safetensors + JSON only), sample
    generator, _ = load_generator(info.checkpoint_uri, ema=tags["ganops.generation.ema"] == "true")
    n = int(tags["ganops.samples.n"])
    with torch.inference_mode():
        again = generate(generator, n, int(tags["ganops.generation.sampleSeed"]),
                         int(tags["ganops.generation.latentDim"]), None, torch.device("cpu")).numpy()
    assert again.dtype == result.samples.dtype and np.array_equal(again, result.samples)
    assert samples_sha256(again) == tags["ganops.samples.sha256"]
    assert samples_png(again) == result.samples_png
    # the grid logged into the job's MLflow run at registration, and the one `ganops run` wrote, are that grid
    assert result.run_id and info.run_id == result.run_id
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    logged = client.download_artifacts(result.run_id, f"promotion/{model}-v{result.version}.png", str(tmp_path))
    assert Path(logged).read_bytes() == samples_png(again)
    assert (trained.home.resolve() / "samples" / "digits-promo.png").read_bytes() == samples_png(again)


def test_promote_cli_exit_codes(trained: Trained, tmp_path: Path) -> None:
    best = choose_checkpoint(trained.root)
    fid = best.manifest["metrics"]["fid"]
    job = _with(trained, gates={"maxFID": round(fid / 2, 1)})
    path = write_job(job.model_dump(mode="json", by_alias=True, exclude_none=True), tmp_path / "job.yaml")
    env = {**os.environ, "GANOPS_METRICS_PORT": "0"}
    args = [str(BIN / "ganops"), "promote", str(path), "--checkpoint", trained.root,
            "--tracking-uri", trained.tracking_uri, "-o", str(tmp_path / "grid.png")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 4, result.stdout + result.stderr[-2000:]
    assert f"fid {fid:.4g} > maxFID {round(fid / 2, 1):.4g} (by {fid - round(fid / 2, 1):.4g})" in result.stdout
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
    missing = CliRunner().invoke(app, [*args[1:4], f"file://{tmp_path}/nothing", *args[5:]])
    assert missing.exit_code == 3 and "no checkpoint under" in missing.output


def test_promoted_versions_carry_the_trainers_memorization_index_and_serve_with_the_filter_on(
    trained: Trained,
) -> None:
    uri = trained.tracking_uri
    best = choose_checkpoint(trained.root)
    index_uri = best.manifest["memorizationIndex"]
    assert index_uri == f"file://{trained.home.resolve()}/checkpoints/_reference/" + index_uri.rsplit("/", 1)[-1]

    # the CLI/`ganops run` path and the operator's (render=False: no torch, no dataset) tag the version alike
    cli = promote(_with(trained), trained.root, uri)
    operator_model = f"default.{trained.model}-op"  # the operator registers <namespace>.<modelName>
    outcome = promote_job(_with(trained, modelName=f"{trained.model}-op").spec, namespace="default",
                          name="digits-promo", checkpoint_root=trained.root, tracking_uri=uri)
    assert outcome.kind == "promoted" and outcome.model == operator_model, outcome
    for model, version in ((trained.model, cli.version), (operator_model, outcome.version)):
        info = tracking.get_version(uri, model, str(version))
        assert info is not None and info.tags[MEMORIZATION_TAG] == index_uri

    # serving resolves operator_model@production, loads the version: the memorization filter is on, with that index
    ref, _ = RegistryResolver(uri, operator_model, "production").resolve()
    assert ref is not None and ref.version == outcome.version
    settings = ServingSettings(model=f"{operator_model}@production", mlflow_uri=uri, safety={"audit_uri": None})
    loaded = ModelLoader(settings, watermark_key=b"k" * 32)(ref)
    assert loaded.memorization_index == index_uri
    assert "memorization" in loaded.pipeline.filter_names and "memorization" not in loaded.skipped_filters

    # training digits handed to the pipeline as if generated are blocked by it; noise and the model's own samples
    # pass the memorization filter
    real = digits().data.numpy()[[0, 1000]]
    noise = np.random.default_rng(0).uniform(-1, 1, size=(1, 1, 8, 8)).astype(np.float32)
    decisions = loaded.pipeline.run(make_samples(np.concatenate([real, noise])), RequestContext("t", operator_model))
    assert [d.blocked_by for d in decisions] == ["memorization", "memorization", None]
    assert decisions[2].allowed
    memorization = next(f for f in loaded.pipeline.filters if f.name == "memorization")
    own = make_samples(loaded.forward(loaded.latents(4, 7, None), None))
    assert [v.outcome for v in memorization.check(own, RequestContext("t"))] == ["pass"] * 4


def test_a_manifest_naming_a_missing_index_gets_no_tag(trained: Trained, tmp_path: Path) -> None:
    best = choose_checkpoint(trained.root)
    manifest = dict(best.manifest, memorizationIndex=(tmp_path / "gone.memorization.safetensors").as_uri())
    assert memorization_index_of(manifest, best.uri) is None
    assert memorization_index_of({}, best.uri) is None
    assert memorization_index_of(best.manifest, best.uri) == best.manifest["memorizationIndex"]
    # recorded relative to another working directory: found under the step's own <checkpoint.uri>/_reference/
    relative = dict(best.manifest, memorizationIndex="file://.ganops/checkpoints/_reference/"
                    + best.manifest["memorizationIndex"].rsplit("/", 1)[-1])
    assert memorization_index_of(relative, best.uri) == best.manifest["memorizationIndex"]
