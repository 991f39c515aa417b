"""The `ganops` command. Each subcommand is a thin edge: parse, call one function, report, pick an exit code.

Exit codes: 0 done (or stopped cleanly by SIGTERM after a checkpoint; `promote`: promoted), 2 the job file or an
argument is wrong, 3 the job cannot start (data, credentials, storage; `promote`: no readable checkpoint, or MLflow
unavailable or refusing; `serve`: the model reference cannot be resolved or read),
4 `promote`: the gates rejected the checkpoint (it is registered, the alias did not move); `audit verify`: a
record breaks the audit log's hash chain, 1 anything unexpected.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ganops import contracts, logs
from ganops.api.loader import JobFileError, load_job
from ganops.api.spec import GanTrainingJob

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train GANs, judge them, promote and serve them.")

EXIT_INVALID = 2
EXIT_CANNOT_START = 3
EXIT_REJECTED = 4


def _fail(lines: list[str], code: int) -> NoReturn:
    for line in lines:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(code)


def _load(path: Path) -> GanTrainingJob:
    try:
        return load_job(path)
    except JobFileError as exc:
        _fail([f"{exc.source}: {p}" for p in exc.problems], EXIT_INVALID)


def _setup_logging() -> None:
    logs.setup()


@app.command()
def validate(job_file: Annotated[Path, typer.Argument(help="A GanTrainingJob YAML file.")]) -> None:
    """Check a job file; print one line per problem and exit 2 if it is invalid."""
    job = _load(job_file)
    typer.echo(f"{job_file}: valid GanTrainingJob {job.metadata.name!r}")


@app.command()
def crd(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of stdout.")] = None,
) -> None:
    """Print the GanTrainingJob CustomResourceDefinition generated from the spec models."""
    from ganops.api.crd import crd_yaml

    text = crd_yaml()
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


@app.command()
def train(
    job: Annotated[Path, typer.Option("--job", help="The job file (in a pod: the mounted ConfigMap).")],
    work_dir: Annotated[Path, typer.Option(envvar=contracts.ENV_WORK_DIR, help="Scratch space.")] = Path(
        "/tmp/ganops"
    ),
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Log lines instead of a progress bar.")] = False,
) -> None:
    """Train as a pod does: resume from the latest checkpoint, checkpoint on SIGTERM and exit 0."""
    from ganops.trainer.run import TrainerCannotStart, train_session

    _setup_logging()
    parsed = _load(job)
    try:
        session = train_session(parsed, work_dir=work_dir, progress=not no_progress)
    except TrainerCannotStart as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    if session.tracking_report:
        typer.echo(f"warning: {session.tracking_report}", err=True)
    typer.echo(f"{session.result.status} at step {session.result.step}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                "help_option_names": []})
def launch(ctx: typer.Context) -> None:
    """torchrun's arguments, run under a supervisor that makes a SIGTERM a checkpoint and exit 0 on every rank
    (what the operator runs for multi-GPU pods; see ganops.trainer.launch)."""
    from ganops.trainer.launch import launch as launch_torchrun

    _setup_logging()
    raise typer.Exit(launch_torchrun(list(ctx.args)))


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="The same job file a user would kubectl apply.")],
    home: Annotated[Path, typer.Option(help="Local state: checkpoints, tracking, samples.")] = Path(".ganops"),
) -> None:
    """Train locally on embedded defaults (checkpoints and an MLflow sqlite store under .ganops/), resuming if
    re-run; promote when spec.promotion.auto is set (a rejection is reported, not an error); write a sample grid."""
    from ganops.local import run_local
    from ganops.trainer.run import TrainerCannotStart

    _setup_logging()
    parsed = _load(job_file)
    try:
        summary = run_local(parsed, home=home)
    except TrainerCannotStart as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    for line in summary:
        typer.echo(line)


@app.command()
def promote(
    job_file: Annotated[Path, typer.Argument(help="The job whose checkpoints to judge.")],
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="The job's checkpoint root (its best step is chosen) or one step folder. "
        "Default: where `ganops run` / `ganops train` put it.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow. Default: spec.tracking.mlflowUri, MLFLOW_TRACKING_URI, else the local "
        "sqlite store under --home.")] = None,
    home: Annotated[Path, typer.Option(help="Local state of `ganops run`.")] = Path(".ganops"),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write the promotion sample grid here.")] = None,
) -> None:
    """Apply spec.promotion.gates to the job's best checkpoint, register it as a model version and move
    spec.promotion.alias when the gates pass. Exit 0 promoted, 4 rejected, 3 nothing to promote or MLflow down."""
    from ganops import storage, tracking
    from ganops.checkpoints import job_root
    from ganops.home import local_artifact_root, local_tracking_uri
    from ganops.promotion import PromotionError
    from ganops.promotion import promote as promote_checkpoint
    from ganops.trainer.loop import DEFAULT_CHECKPOINT_URI
    from ganops.trainer.run import tracking_uri_for

    _setup_logging()
    parsed = _load(job_file)
    namespace = os.environ.get(contracts.ENV_NAMESPACE) or parsed.metadata.namespace or "default"
    name = os.environ.get(contracts.ENV_JOB_NAME) or parsed.metadata.name
    if checkpoint is None:
        base = (parsed.spec.checkpoint.uri or os.environ.get(contracts.ENV_CHECKPOINT_URI)
                or (f"file://{home.resolve() / 'checkpoints'}" if home.exists() else DEFAULT_CHECKPOINT_URI))
        checkpoint = job_root(base, namespace, name)
    uri = tracking_uri_for(parsed, tracking_uri)
    artifact_root = None
    if uri is None:
        uri, artifact_root = local_tracking_uri(home), local_artifact_root(home)
    try:
        result = promote_checkpoint(parsed, checkpoint, uri, namespace=namespace, job=name,
                                    artifact_root=artifact_root)
    except (PromotionError, tracking.TrackingError, storage.StorageError) as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    for line in result.lines():
        typer.echo(line)
    if output is not None and result.samples_png is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_bytes(result.samples_png)
        typer.echo(f"samples:    {output}")
    if not result.promoted:
        raise typer.Exit(EXIT_REJECTED)


@app.command()
def generate(
    checkpoint: Annotated[str, typer.Option(help="A checkpoint step folder, or a job's root (its latest).")],
    n: Annotated[int, typer.Option("-n", min=1, max=4096, help="How many samples.")] = 64,
    output: Annotated[Path, typer.Option("--output", "-o", help=".png for a grid, .npy for raw samples.")] = Path(
        "samples.png"
    ),
    seed: Annotated[int, typer.Option(min=0)] = 0,
    raw_generator: Annotated[bool, typer.Option("--no-ema", help="Use the raw generator, not the EMA.")] = False,
) -> None:
    """Sample a trained generator into a PNG grid (a scatter plot for 2-D data) or a .npy array."""
    from ganops.local import SamplingError, write_samples

    if output.suffix not in (".png", ".npy"):
        _fail([f"--output must end in .png or .npy (got {output.name!r})"], EXIT_INVALID)
    try:
        write_samples(checkpoint, n=n, output=output, seed=seed, ema=not raw_generator)
    except SamplingError as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    typer.echo(f"wrote {n} samples to {output}")


@app.command()
def serve(
    model: Annotated[str | None, typer.Option(
        "--model", help="'name@alias' in the MLflow registry (alias default: production).")] = None,
    checkpoint: Annotated[str | None, typer.Option(
        "--checkpoint", help="Serve a checkpoint directly (no MLflow): a step folder or a job's root.")] = None,
    tracking_uri: Annotated[str | None, typer.Option(
        "--tracking-uri", help="MLflow for --model. Default: GANOPS_SERVING_MLFLOW_URI, the --config file's "
        "mlflow_uri, MLFLOW_TRACKING_URI, else the local sqlite store of `ganops run` under --home.")] = None,
    home: Annotated[Path, typer.Option(help="Local state of `ganops run` (its MLflow store).")] = Path(".ganops"),
    host: Annotated[str | None, typer.Option(help="Interface to listen on (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(min=0, max=65535, help="Port (default 8080).")] = None,
    api_keys_file: Annotated[Path | None, typer.Option(
        "--api-keys-file", help="Lines '<key-id>:<sha256-hex of the key>'. Without keys the API is open.")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", help="YAML/JSON serving settings (as GANOPS_SERVING_CONFIG_FILE); GANOPS_SERVING_* variables "
        "override it, these options override both.")] = None,
    preflight: Annotated[bool, typer.Option(
        "--preflight/--no-preflight", help="Resolve the model before starting and exit 3 if it cannot be served. "
        "--no-preflight (the default of `python -m ganops.serving`, the image's entry point): start anyway, "
        "not ready until the model loads; an unreachable MLflow must not crash-loop a pod.")] = True,
    mlflow_uri: Annotated[str | None, typer.Option(
        "--mlflow-uri", hidden=True, help="Deprecated alias of --tracking-uri.")] = None,
    checkpoint_uri: Annotated[str | None, typer.Option(
        "--checkpoint-uri", hidden=True, help="Deprecated alias of --checkpoint.")] = None,
) -> None:
    """Serve a promoted model (or a checkpoint) over HTTP until SIGTERM or Ctrl-C: POST /v1/generate, /readyz,
    /metrics, OpenAPI at /docs. Exit 0 once stopped (in-flight requests drained), 2 for bad options or settings,
    3 when the model reference cannot be served."""
    from pydantic import ValidationError

    from ganops.home import LOCAL_MLFLOW_DB, local_tracking_uri
    from ganops.serving.server import CannotServe
    from ganops.serving.server import preflight as resolve_once
    from ganops.serving.server import run as run_server
    from ganops.serving.settings import ServingSettings, config_file_values

    tracking_uri = _deprecated_alias("--mlflow-uri", mlflow_uri, "--tracking-uri", tracking_uri)
    checkpoint = _deprecated_alias("--checkpoint-uri", checkpoint_uri, "--checkpoint", checkpoint)
    if model and checkpoint:
        _fail(["give --model or --checkpoint, not both"], EXIT_INVALID)
    overrides: dict[str, object] = {}
    if config is not None:
        overrides["config_file"] = config
    if tracking_uri:
        overrides["mlflow_uri"] = tracking_uri
    if model:
        overrides.update(model=model, checkpoint_uri=None)
        try:
            named = tracking_uri or os.environ.get("GANOPS_SERVING_MLFLOW_URI") or os.environ.get(
                "MLFLOW_TRACKING_URI") or config_file_values(config).get("mlflow_uri")
        except (ValueError, FileNotFoundError) as exc:
            _fail([str(exc)], EXIT_INVALID)
        if not named:

            if not (home / LOCAL_MLFLOW_DB).is_file():
                _fail([f"--model needs MLflow: pass --tracking-uri, or --home with a `ganops run` store "
                       f"({home / LOCAL_MLFLOW_DB} does not exist)"], EXIT_INVALID)
            overrides["mlflow_uri"] = local_tracking_uri(home)
    if checkpoint:
        overrides.update(checkpoint_uri=checkpoint, model=None)
    for key, value in (("host", host), ("port", port), ("api_keys_file", api_keys_file)):
        if value is not None:
            overrides[key] = value
    try:
        settings = ServingSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        _fail([f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors()], EXIT_INVALID)
    except (ValueError, FileNotFoundError) as exc:
        _fail([str(exc)], EXIT_INVALID)
    if settings.api_keys_file is not None and not settings.api_keys_file.is_file():
        _fail([f"--api-keys-file {settings.api_keys_file} does not exist"], EXIT_INVALID)
    if not settings.model and not settings.checkpoint_uri:
        _fail(["nothing to serve: pass --model name@alias or --checkpoint URI (or set GANOPS_SERVING_MODEL / "
               "GANOPS_SERVING_CHECKPOINT_URI, or a --config file)"], EXIT_INVALID)
    where = f"http://{settings.host}:{settings.port}"
    if preflight:
        try:
            ref = resolve_once(settings)
        except CannotServe as exc:
            _fail([str(exc)], EXIT_CANNOT_START)
        what = f"{ref.name}@{ref.alias}" if settings.model else ref.checkpoint_uri
        typer.echo(f"serving {what} (version {ref.version}) on {where}", err=True)
    else:
        named = f"{settings.registered_name}@{settings.alias}" if settings.model else settings.checkpoint_uri
        typer.echo(f"serving {named} on {where} (not checked: not ready until it loads)", err=True)

    def stopped(signum: int, frame: object) -> None:
        raise typer.Exit(0)

    # uvicorn drains on SIGTERM/SIGINT, restores these handlers and raises the signal again: exit 0, not -15.
    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    run_server(settings)
    typer.echo("stopped", err=True)


audit_app = typer.Typer(no_args_is_help=True, help="The audit log of blocked samples (docs/safety.md).")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    location: Annotated[str, typer.Argument(
        help="An audit log: a .jsonl file, a folder or a file:// / s3:// prefix (every *.jsonl under it).")],
    partial: Annotated[bool, typer.Option(
        "--partial", help="Accept chains whose first records were pruned (they may start after seq 0).")] = False,
) -> None:
    """Check the hash chains of an audit log: each record's own hash, its link to the previous record, no gap.
    Exit 0 when intact, 4 naming the first broken record, 3 when there is nothing readable to check."""
    from ganops.serving.safety.audit import read_audit_lines, verify_records
    from ganops.storage import StorageError

    uri = location if "://" in location else Path(location).resolve().as_uri()
    try:
        report = verify_records(read_audit_lines(uri), partial=partial)
    except StorageError as exc:
        _fail([f"cannot read the audit log at {location}: {exc}"], EXIT_CANNOT_START)
    if report.broken is not None:
        typer.echo(f"broken: {report.broken}", err=True)
        typer.echo(f"{report.records} record(s) read; the log was changed at or before the record named above",
                   err=True)
        raise typer.Exit(EXIT_REJECTED)
    if report.records == 0:
        _fail([f"no audit records at {location}"], EXIT_CANNOT_START)
    chains = ", ".join(f"{chain} ({count})" for chain, count in sorted(report.chains.items()))
    typer.echo(f"intact: {report.records} record(s) in {len(report.chains)} chain(s): {chains}")


def _deprecated_alias(old: str, old_value: str | None, new: str, new_value: str | None) -> str | None:
    """The value of option ``new``, or of its deprecated alias ``old`` (with a warning); both differing: exit 2."""
    if old_value is None:
        return new_value
    typer.echo(f"warning: {old} is deprecated, use {new}", err=True)
    if new_value is not None and new_value != old_value:
        _fail([f"give {new} or its deprecated alias {old}, not both"], EXIT_INVALID)
    return old_value


def main() -> None:
    app()


if __name__ == "__main__":
    main()
