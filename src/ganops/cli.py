"""The `ganops` command. Each subcommand is a thin edge: parse, call one function, report, pick an exit code.

Exit codes: 0 done (or stopped cleanly by SIGTERM after a checkpoint), 2 the job file or an argument is wrong,
3 the job cannot start (data, credentials, storage), 1 anything unexpected.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from ganops.api.loader import JobFileError, load_job
from ganops.api.spec import GanTrainingJob

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train GANs, judge them, promote and serve them.")

EXIT_INVALID = 2
EXIT_CANNOT_START = 3


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
    logging.basicConfig(
        level=os.environ.get("GANOPS_LOG_LEVEL", "INFO"), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )


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
    work_dir: Annotated[Path, typer.Option(envvar="GANOPS_WORK_DIR", help="Scratch space.")] = Path(
        "/tmp/ganops"
    ),
    no_progress: Annotated[bool, typer.Option("--no-progress", help="Log lines instead of a progress bar.")] = False,
) -> None:
    """Train as a pod does: resume from the latest checkpoint, checkpoint on SIGTERM and exit 0."""
    from ganops.trainer.run import TrainerCannotStart, train_job

    _setup_logging()
    parsed = _load(job)
    try:
        result = train_job(parsed, work_dir=work_dir, progress=not no_progress)
    except TrainerCannotStart as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    typer.echo(f"{result.status} at step {result.step}")


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="The same job file a user would kubectl apply.")],
    home: Annotated[Path, typer.Option(help="Local state: checkpoints, tracking, samples.")] = Path(".ganops"),
) -> None:
    """Train locally on embedded defaults (checkpoints under .ganops/), resuming if re-run; write a sample grid."""
    from ganops.trainer.run import TrainerCannotStart, run_local

    _setup_logging()
    parsed = _load(job_file)
    try:
        summary = run_local(parsed, home=home)
    except TrainerCannotStart as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    for line in summary:
        typer.echo(line)


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
    from ganops.trainer.sampling import SamplingError, write_samples

    if output.suffix not in (".png", ".npy"):
        _fail([f"--output must end in .png or .npy (got {output.name!r})"], EXIT_INVALID)
    try:
        write_samples(checkpoint, n=n, output=output, seed=seed, ema=not raw_generator)
    except SamplingError as exc:
        _fail([str(exc)], EXIT_CANNOT_START)
    typer.echo(f"wrote {n} samples to {output}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
