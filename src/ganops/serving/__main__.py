"""``python -m ganops.serving``: the serving image's entry point, a thin alias of ``ganops serve`` (same options).

One difference, a default: it starts without the preflight check (``--no-preflight``), because in a cluster an
unreachable MLflow must not crash-loop the pod: it stays not ready and keeps polling. ``--preflight`` turns the
check on. The old flags of this entry point, ``--mlflow-uri`` and ``--checkpoint-uri``, are deprecated aliases of
``--tracking-uri`` and ``--checkpoint``.
"""

from __future__ import annotations

from collections.abc import Sequence

import typer
import typer.core

from ganops import cli

PROG = "python -m ganops.serving"


def main(argv: Sequence[str] | None = None) -> None:
    """``ganops serve`` with ``argv`` (default: the command line), under this name and without the preflight."""
    group = typer.main.get_command(cli.app)
    assert isinstance(group, typer.core.TyperGroup)
    args = None if argv is None else list(argv)
    group.commands["serve"].main(args=args, prog_name=PROG, default_map={"preflight": False})


if __name__ == "__main__":
    main()
