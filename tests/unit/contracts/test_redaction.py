"""MLflow never receives a credential that a URI carried: params and tags are redacted (`ganops.tracking.redact`),
whatever the spec validation let through."""

from __future__ import annotations

from ganops.api.loader import job_from_object
from ganops.tracking import redact
from ganops.tracking.lineage import flatten_spec, lineage_tags
from tests.support.jobs import digits_job

SECRETS = ("AKIAIOSFODNN7EXAMPLE", "deadbeefcafe", "FQoGZXIvYXdzEJr", "hunter2", "sv-sig-123")
PRESIGNED = ("s3://bucket/digits.zip?X-Amz-Algorithm=AWS4-HMAC-SHA256"
             "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20240101%2Fus-east-1%2Fs3%2Faws4_request"
             "&X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=FQoGZXIvYXdzEJr")


def test_redact_removes_user_info_query_strings_and_secret_pairs() -> None:
    for text in (PRESIGNED, "https://acct.blob.core.windows.net/c/x?sv=2020&sig=sv-sig-123",
                 "http://bob:hunter2@mlflow:5000/x", "failed with token=deadbeefcafe", "password=hunter2"):
        out = redact(text)
        assert not any(secret in out for secret in SECRETS), out
    assert redact("s3://bucket/runs/team-a") == "s3://bucket/runs/team-a"  # nothing to hide: unchanged


def test_params_and_tags_carry_no_secret_even_from_a_spec_that_bypassed_validation() -> None:
    job = job_from_object(digits_job("leaky"))
    # What an older CRD (or a hand-edited ConfigMap) could still hand the trainer: validation is not the only guard.
    spec = job.spec.model_copy(update={
        "dataset": job.spec.dataset.model_copy(update={"uri": PRESIGNED}),
        "tracking": job.spec.tracking.model_copy(update={"mlflow_uri": "https://bob:hunter2@mlflow.example"}),
        "resources": job.spec.resources.model_copy(update={"image": "registry.example/t:1?token=sv-sig-123"}),
    })
    params = flatten_spec(spec)
    assert params["dataset.uri"] == "s3://bucket/digits.zip?***"
    assert params["tracking.mlflowUri"] == "https://***@mlflow.example"
    tags = lineage_tags(spec, job="team-a/leaky")
    for value in (*params.values(), *tags.values()):
        assert not any(secret in value for secret in SECRETS), value
