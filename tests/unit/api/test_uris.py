"""The URI policy's placement half (`ganops.api.uris.same_server`, `within`); the shape half is checked against
CEL in test_crd.py."""

from __future__ import annotations

from ganops.api.uris import same_server, within
from ganops.contracts import model_namespace, registered_model_name


def test_same_server_answers_with_the_platforms_spelling() -> None:
    allowed = ("http://mlflow.mlflow.svc:5000", "https://mlflow.example")
    assert same_server("http://MLflow.mlflow.svc:5000/", allowed) == "http://mlflow.mlflow.svc:5000"
    assert same_server("https://mlflow.example:443", allowed) == "https://mlflow.example"
    for other in ("http://mlflow.mlflow.svc:5001", "https://mlflow.mlflow.svc:5000", "http://mlflow.example",
                  "http://mlflow.example.evil.com", "http://x@mlflow.mlflow.svc:5000", "http://127.0.0.1:5000",
                  "https://mlflow.example/?x=1", "sqlite:///mlflow.db"):
        assert same_server(other, allowed) is None, other


def test_within_counts_whole_path_segments_only() -> None:
    roots = ("s3://platform/runs", "file:///shared/ckpt/")
    assert within("s3://platform/runs", roots) == "s3://platform/runs"
    assert within("s3://platform/runs/", roots) == "s3://platform/runs"
    assert within("s3://platform/runs/team-a", roots) == "s3://platform/runs"
    assert within("file:///shared/ckpt/x", roots) == "file:///shared/ckpt/"
    for other in ("s3://platform/runs-evil", "s3://platform/run", "s3://platform", "s3://platform/runs/../x",
                  "s3://platform/runs?x=1", "file:///shared/ckpt/../../etc", "file:///shared/ckptx"):
        assert within(other, roots) is None, other


def test_registry_names_are_qualified_by_namespace() -> None:
    assert registered_model_name("team-a", "digits") == "team-a.digits"
    assert registered_model_name("team-a", "team-a.digits") == "team-a.digits"
    assert registered_model_name("team-b", "default.digits") == "default.digits"  # refused by its owner check
    assert model_namespace("team-a.digits") == "team-a" and model_namespace("digits") is None
