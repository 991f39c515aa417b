"""The served end of `make demo` (scripts/serve_demo.py) and `ganops serve`: a real `ganops serve` process on a
local MLflow sqlite store like the one `ganops run` leaves, with a tiny trained checkpoint registered as
digits@production (not the demo's 1500-step training); bad references end with a clear message, no traceback."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from scripts.serve_demo import DEMO_KEY_ID, DemoError, main, serve_and_fetch

from ganops import tracking
from ganops.home import local_artifact_root, local_tracking_uri
from tests.support.serving import trained_digits, write_memorization_index


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A `ganops run`-like home: sqlite MLflow store with digits@production → a 30-step 8 px checkpoint."""
    import mlflow

    root = tmp_path_factory.mktemp("served-demo")
    step = trained_digits(root / "runs")[-1]
    write_memorization_index(step)
    home = root / "home"
    home.mkdir()
    uri = local_tracking_uri(home)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("demo", artifact_location=local_artifact_root(home))
    run = client.create_run(experiment)
    client.set_terminated(run.info.run_id)
    version = tracking.register_version(uri, "digits", step, run_id=run.info.run_id)
    tracking.set_alias(uri, "digits", "production", version)
    return home, version


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) == 0


def test_the_demo_serves_the_promoted_model_and_saves_a_watermarked_grid(
    demo_home: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    home, version = demo_home
    output = home / "grid.png"
    assert main(["--home", str(home), "--n", "16", "--seed", "7", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert f"digits@production version {version}" in printed and str(output) in printed
    assert "safety:     16 allowed, 0 blocked" in printed and "memorization pass x16" in printed
    with Image.open(io.BytesIO(output.read_bytes())) as image:
        assert image.format == "PNG" and image.size == (4 * 8 + 5 * 2, 4 * 8 + 5 * 2)  # 4×4 tiles of 8 px
    assert "filters:    degenerate, memorization; skipped: nsfw (below_min_size)" in printed
    assert "present=True" in printed and f"model=digits:{version}" in printed
    assert "server exit code 0" in printed
    keys = (home / "api-keys").read_text()
    assert keys.startswith(f"{DEMO_KEY_ID}:") and len(keys.strip().split(":")[1]) == 64  # only the hash is kept

    again = serve_and_fetch(home, n=16, seed=7, output=home / "again.png")
    assert again.grid_path.read_bytes() == output.read_bytes()  # same version and seed: same bytes
    assert again.server_exit_code == 0 and not _port_open(again.url)  # stopped, port released
    assert again.version == version and again.allowed == 16


def test_a_bad_reference_fails_fast_with_a_message(demo_home: tuple[Path, str], tmp_path: Path) -> None:
    home, _ = demo_home

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ganops.cli", "serve", "--port", "0", *args],
                              capture_output=True, text=True, timeout=120)

    cases = [
        (("--model", "digits@staging", "--home", str(home)), 3, "has no alias 'staging'"),
        (("--model", "faces@production", "--home", str(home)), 3, "'faces' is not registered"),
        (("--model", "digits@production", "--home", str(tmp_path)), 2, "mlflow.db does not exist"),
        (("--checkpoint", (tmp_path / "nothing").as_uri()), 3, "cannot read checkpoint"),
        (("--model", "a@b@c", "--home", str(home)), 2, "model must be 'name' or 'name@alias'"),
        (("--model", "digits", "--checkpoint", "file:///x"), 2, "not both"),
        ((), 2, "nothing to serve"),
    ]
    for args, code, message in cases:
        done = serve(*args)
        assert done.returncode == code, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr, (args, done.stderr)

    with pytest.raises(DemoError, match="has no alias 'canary'"):
        serve_and_fetch(home, "digits@canary", n=4, ready_timeout=60)
