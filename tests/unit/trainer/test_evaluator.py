"""Evaluation inside training: when it runs, what it reports, cached real statistics, keepBest, failures at start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from ganops import logs
from ganops.api.loader import job_from_object
from ganops.trainer.checkpoint import CheckpointManager
from ganops.trainer.data import TensorDataset
from ganops.trainer.evaluate.errors import FeatureExtractorError
from ganops.trainer.evaluate.report import EvaluationReport
from ganops.trainer.evaluator import build_job_extractor, promotion_metric
from ganops.trainer.loop import RunContext, Trainer
from tests.support.jobs import as_job, digits_job, grid_job


def make_trainer(obj: dict[str, Any], tmp_path: Path, name: str | None = None) -> Trainer:
    job = as_job(obj)
    ctx = RunContext(namespace="ns", job_name=name or job.metadata.name, checkpoint_uri=f"file://{tmp_path}/ckpt",
                     work_dir=tmp_path / "work", progress=False)
    return Trainer(job, ctx)


def record_moments(trainer: Trainer) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    trainer.hooks.append(lambda t, moment: seen.append((moment, t.step)))
    return seen


def test_evaluates_every_n_steps_and_at_the_end(tmp_path: Path) -> None:
    trainer = make_trainer(grid_job(training={"steps": 25}, evaluation={"everySteps": 10, "numSamples": 200}),
                           tmp_path)
    seen = record_moments(trainer)
    trainer.fit()
    assert [s for m, s in seen if m == "evaluated"] == [10, 20, 25]
    # evaluated before the checkpoint of the same step, so the checkpoint carries its metric
    assert seen.index(("evaluated", 20)) < seen.index(("before_checkpoint", 20))
    assert trainer.last_evaluation is not None and trainer.last_evaluation.step == 25


def test_two_d_job_reports_modes_and_high_quality(tmp_path: Path) -> None:
    trainer = make_trainer(grid_job(evaluation={"metrics": ["modes", "fid"], "numSamples": 500}), tmp_path)
    trainer.fit()
    report = trainer.last_evaluation
    assert report is not None and report.num_fake == 500 and report.extractor == "raw"
    numeric = report.numeric()
    assert {"modes", "high_quality", "fid"} <= numeric.keys()
    assert 0 <= numeric["modes"] <= 25 and 0.0 <= numeric["high_quality"] <= 1.0
    assert report.details["modes"]["num_modes"] == 25
    expected = 25 - numeric["modes"] + (1 - numeric["high_quality"])
    assert trainer.extra_state["metric"] == pytest.approx(expected)
    latest = CheckpointManager(f"file://{tmp_path}/ckpt/ns/grid").latest_record()
    assert latest is not None
    assert latest["metric"] == pytest.approx(expected)
    assert latest["metrics"] == pytest.approx(numeric)


def test_reference_statistics_are_computed_once_and_cached_in_the_store(tmp_path: Path) -> None:
    obj = digits_job(evaluation={"metrics": ["fid", "kid", "precision_recall"], "numSamples": 200})
    first = make_trainer(obj, tmp_path, name="a")
    first.fit()
    assert first.evaluator is not None and first.evaluator.reference_computations == 1
    files = sorted(p.name for p in (tmp_path / "ckpt" / "_reference").iterdir()
                   if not p.name.endswith(".memorization.safetensors"))  # the trainer's index lives here too
    digest = first.evaluator.reference_digest()
    assert files == [f"{digest}.json", f"{digest}.safetensors"]
    meta = json.loads((tmp_path / "ckpt" / "_reference" / f"{digest}.json").read_text())
    assert meta["numSamples"] == 200 and meta["dim"] == 128 and meta["tensors"] == ["features", "mu", "sigma"]
    first.evaluate()  # a second evaluation in the same process: from memory
    assert first.evaluator.reference_computations == 1

    second = make_trainer(obj, tmp_path, name="b")  # another job on the same data and checkpoint store
    second.fit()
    assert second.evaluator is not None and second.evaluator.reference_computations == 0
    assert second.last_evaluation is not None and first.last_evaluation is not None
    assert second.last_evaluation.details["reference"] == {"digest": digest, "source": "cache"}
    assert second.last_evaluation.metrics == first.last_evaluation.metrics  # same weights, same latents

    # a corrupt cache is recomputed, never trusted
    (tmp_path / "ckpt" / "_reference" / f"{digest}.safetensors").write_bytes(b"garbage")
    third = make_trainer(obj, tmp_path, name="c")
    third.evaluate()
    assert third.evaluator is not None and third.evaluator.reference_computations == 1


def test_keep_best_keeps_the_checkpoint_with_the_lowest_metric(tmp_path: Path) -> None:
    obj = grid_job(training={"steps": 40}, checkpoint={"everySteps": 5, "keepLast": 1, "keepBest": 1},
                   evaluation={"everySteps": 10, "numSamples": 100})
    trainer = make_trainer(obj, tmp_path)
    scripted = {10: 3.0, 20: 1.0, 30: 2.0, 40: 5.0}

    def script(t: Trainer, moment: str) -> None:
        if moment == "evaluated":
            t.extra_state["metric"] = scripted[t.step]

    trainer.hooks.append(script)
    trainer.fit()
    manager = CheckpointManager(f"file://{tmp_path}/ckpt/ns/grid")
    assert manager.steps() == [20, 40]  # the best (20) and the latest
    assert manager.best_step() == 20
    # checkpoints between evaluations carry no (stale) metric
    manifests = {s: json.loads((tmp_path / f"ckpt/ns/grid/step-{s:09d}/manifest.json").read_text())
                 for s in manager.steps()}
    assert manifests[20]["metric"] == 1.0 and manifests[20]["evaluation"]["step"] == 20
    assert manifests[40]["metrics"] == trainer.last_evaluation.numeric()  # type: ignore[union-attr]


def test_insufficient_samples_are_reported_not_raised(tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(evaluation={"metrics": ["fid"], "numSamples": 50}), tmp_path)
    trainer.fit()
    report = trainer.last_evaluation
    assert report is not None
    assert str(report.metrics["fid"]).startswith("insufficient samples (n=50")
    assert trainer.extra_state["metric"] is None
    assert trainer.extra_state["checkpoint_info"]["metrics"] == {}


def test_an_evaluation_error_never_stops_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    trainer = make_trainer(grid_job(), tmp_path)
    assert trainer.evaluator is not None

    def broken(*_: Any, **__: Any) -> EvaluationReport:
        raise RuntimeError("out of memory, say")

    trainer.evaluator.evaluate = broken  # type: ignore[method-assign]
    seen = record_moments(trainer)
    with caplog.at_level("INFO", logger="ganops.trainer"):
        result = trainer.fit()
    assert result.status == "completed" and result.step == 20
    assert trainer.last_evaluation is None and "evaluated" not in {m for m, _ in seen}
    failed = [r for r in caplog.records if logs.event_name(r) == "evaluation_failed"]
    assert failed and "out of memory" in str(logs.event_fields(failed[0]))


def test_no_metrics_means_no_evaluation(tmp_path: Path) -> None:
    trainer = make_trainer(digits_job(evaluation={"metrics": []}), tmp_path)
    assert trainer.evaluator is not None and trainer.evaluator.extractor is None
    trainer.fit()
    assert trainer.last_evaluation is None


def test_evaluation_does_not_move_the_training_rng(tmp_path: Path) -> None:
    a = make_trainer(grid_job(evaluation={"metrics": []}, training={"steps": 12}), tmp_path / "a")
    b = make_trainer(grid_job(evaluation={"everySteps": 3, "numSamples": 100}, training={"steps": 12}), tmp_path / "b")
    a.fit()
    b.fit()
    for x, y in zip(a.g.state_dict().values(), b.g.state_dict().values(), strict=True):
        assert torch.equal(x, y)


# ----------------------------------------------------------------- the feature extractor fails at start


def test_unreadable_inception_weights_fail_at_trainer_construction(tmp_path: Path) -> None:
    missing = f"file://{tmp_path}/nope.pth"
    with pytest.raises(FeatureExtractorError, match=r"spec\.evaluation\.inceptionWeightsUri.*nope\.pth"):
        make_trainer(digits_job(evaluation={"featureExtractor": "inception", "inceptionWeightsUri": missing}),
                     tmp_path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(FeatureExtractorError, match=r"inceptionWeightsUri.*cannot load"):
        make_trainer(digits_job(evaluation={"featureExtractor": "inception", "inceptionWeightsUri": f"file://{junk}"}),
                     tmp_path)


def test_wrong_inception_weights_name_what_differs(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    wrong = tmp_path / "wrong.safetensors"
    save_file({"conv.weight": torch.zeros(3, 3)}, str(wrong))
    with pytest.raises(FeatureExtractorError, match=r"do not match the FID Inception-v3 architecture"):
        make_trainer(digits_job(evaluation={"featureExtractor": "inception", "inceptionWeightsUri": f"file://{wrong}"}),
                     tmp_path)


def test_auto_extractor_for_image_folders_needs_inception_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANOPS_INCEPTION_WEIGHTS_URI", raising=False)
    job = job_from_object(digits_job(dataset={"uri": "file:///data/faces"}, model={"channels": 3},
                                     evaluation={"featureExtractor": "auto"}))
    dataset = TensorDataset(torch.zeros(4, 3, 8, 8), uri="file:///data/faces")
    with pytest.raises(FeatureExtractorError, match=r"resolves to 'inception'.*inceptionWeightsUri"):
        build_job_extractor(job.spec, dataset, torch.device("cpu"))


def test_inception_weights_are_read_through_the_object_store(s3_bucket: str) -> None:
    from ganops import storage

    uri = f"{s3_bucket}/weights/pt_inception.pth"
    storage.open_store(uri).put_bytes(uri, b"corrupt")
    job = job_from_object(digits_job(evaluation={"featureExtractor": "inception", "inceptionWeightsUri": uri}))
    dataset = TensorDataset(torch.zeros(4, 1, 8, 8), uri="builtin:digits")
    with pytest.raises(FeatureExtractorError, match="cannot load feature extractor weights"):
        build_job_extractor(job.spec, dataset, torch.device("cpu"))
    missing = f"{s3_bucket}/weights/absent.pth"
    job = job_from_object(digits_job(evaluation={"featureExtractor": "inception", "inceptionWeightsUri": missing}))
    with pytest.raises(FeatureExtractorError, match=r"cannot read feature extractor weights.*absent\.pth"):
        build_job_extractor(job.spec, dataset, torch.device("cpu"))


# ----------------------------------------------------------------- the promotion metric


def test_promotion_metric_prefers_modes_for_2d_then_fid_kid_pr() -> None:
    def report(**metrics: float | str) -> EvaluationReport:
        return EvaluationReport(extractor="raw", num_real=1, num_fake=1, metrics=dict(metrics))

    assert promotion_metric(report(modes=24, high_quality=0.9, fid=3.0), num_modes=25) == pytest.approx(1.1)
    assert promotion_metric(report(fid=3.0, kid=0.1)) == 3.0
    assert promotion_metric(report(fid="insufficient samples (n=5 < d+1=129)", kid=0.1)) == 0.1
    assert promotion_metric(report(precision=0.75, recall=0.5)) == pytest.approx(0.75)
    assert promotion_metric(report()) is None


@pytest.mark.parametrize(("n_real", "n_fake", "dim"), [(300, 300, 32), (700, 400, 16), (1, 5, 4)])
def test_kid_from_precomputed_kernels_equals_the_subset_computation(n_real: int, n_fake: int, dim: int) -> None:
    import numpy as np

    from ganops.trainer.evaluate.errors import InsufficientSamples
    from ganops.trainer.evaluate.kid import kernel_inception_distance
    from ganops.trainer.evaluator import kid_precomputed

    rng = np.random.default_rng(1)
    real = rng.standard_normal((n_real, dim)).astype(np.float32)
    fake = (1.1 * rng.standard_normal((n_fake, dim)) + 0.1).astype(np.float32)
    if min(n_real, n_fake) < 2:
        with pytest.raises(InsufficientSamples):
            kid_precomputed(real, fake)
        return
    expected = kernel_inception_distance(real, fake, num_subsets=20, subset_size=250, seed=7)
    got = kid_precomputed(real, fake, num_subsets=20, subset_size=250, seed=7)
    assert got.mean == pytest.approx(expected.mean, rel=1e-6, abs=1e-9)
    assert got.std == pytest.approx(expected.std, rel=1e-5, abs=1e-9)
