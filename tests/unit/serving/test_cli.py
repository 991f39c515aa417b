"""One serving entry point: `python -m ganops.serving` is `ganops serve` under another name, with the same options,
no preflight by default (the image's entry point), and the old flags as deprecated aliases. The server itself is
replaced by a recorder here; tests/integration/test_serving_demo.py runs the real `ganops serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ganops import cli
from ganops.serving import __main__ as alias
from ganops.serving import server
from ganops.serving.model_store import ModelRef
from ganops.serving.settings import ServingSettings


class Recorded:
    def __init__(self) -> None:
        self.served: list[ServingSettings] = []
        self.preflights: list[ServingSettings] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorded:
    for name in list(os.environ):
        if name.startswith("GANOPS_SERVING_") or name == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .ganops/mlflow.db here
    record = Recorded()

    def preflight(settings: ServingSettings) -> ModelRef:
        record.preflights.append(settings)
        return ModelRef(settings.registered_name, "7", settings.alias, settings.checkpoint_uri or "file:///ckpt")

    monkeypatch.setattr(server, "preflight", preflight)
    monkeypatch.setattr(server, "run", record.served.append)
    monkeypatch.setattr(cli.signal, "signal", lambda *args: None)  # leave pytest's handlers alone
    return record


def run_alias(*args: str) -> int:
    with pytest.raises(SystemExit) as exited:
        alias.main(list(args))
    return int(exited.value.code or 0)


def test_the_alias_is_ganops_serve_without_the_preflight(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_alias("--model", "digits@canary", "--tracking-uri", "http://mlflow:5000", "--port", "9001") == 0
    [settings] = recorded.served
    assert (settings.model, settings.mlflow_uri, settings.port) == ("digits@canary", "http://mlflow:5000", 9001)
    assert recorded.preflights == []  # an unreachable MLflow must not stop the pod: it stays not ready
    assert "serving digits@canary on http://127.0.0.1:9001 (not checked" in capsys.readouterr().err

    assert run_alias("--checkpoint", "file:///ckpt/job", "--preflight") == 0
    assert [s.checkpoint_uri for s in recorded.preflights] == ["file:///ckpt/job"]

    done = CliRunner().invoke(cli.app, ["serve", "--checkpoint", "file:///ckpt/job"])
    assert done.exit_code == 0, done.output
    assert len(recorded.preflights) == 2 and "(version 7)" in done.output  # `ganops serve` checks first


def test_the_old_flags_are_deprecated_aliases(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_alias("--model", "digits", "--mlflow-uri", "http://mlflow:5000", "--host", "0.0.0.0") == 0
    assert run_alias("--checkpoint-uri", "file:///ckpt/job") == 0
    first, second = recorded.served
    assert (first.model, first.mlflow_uri, first.host) == ("digits", "http://mlflow:5000", "0.0.0.0")
    assert second.checkpoint_uri == "file:///ckpt/job" and second.model is None
    err = capsys.readouterr().err
    assert "--mlflow-uri is deprecated, use --tracking-uri" in err
    assert "--checkpoint-uri is deprecated, use --checkpoint" in err

    assert run_alias("--checkpoint-uri", "file:///a", "--checkpoint", "file:///b") == 2
    assert "not both" in capsys.readouterr().err
    assert len(recorded.served) == 2


def test_the_model_finds_mlflow_in_the_config_file_as_before(recorded: Recorded, tmp_path: Path) -> None:
    config = tmp_path / "serving.yaml"
    config.write_text("mlflow_uri: http://from-the-file:5000\nport: 9100\n")
    assert run_alias("--model", "digits@production", "--config", str(config)) == 0
    assert recorded.served[0].resolved_mlflow_uri() == "http://from-the-file:5000"
    assert recorded.served[0].port == 9100
    assert run_alias("--model", "digits@production", "--config", str(tmp_path / "missing.yaml")) == 2


def test_nothing_to_serve_exits_2_without_a_traceback(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANOPS_SERVING_") and k != "MLFLOW_TRACKING_URI"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(cli.__file__).parents[1]), env.get("PYTHONPATH")) if p)
    done = subprocess.run([sys.executable, "-m", "ganops.serving"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert done.returncode == 2 and "nothing to serve" in done.stderr and "Traceback" not in done.stderr
