"""Mutation audit of one module against the unit tests that claim to pin it down.

    python -m scripts.mutation_audit --module src/ganops/cost.py --tests tests/unit/contracts/test_cost.py [--tests ...]
                                     [--label before|after] [--report reports/mutation] [--timeout 60]

Each mutant is one small change of the module's syntax tree - a comparison's boundary (``<`` → ``<=``), ``==`` ↔
``!=``, ``in`` ↔ ``not in``, ``and`` ↔ ``or``, an arithmetic operator (``+`` ↔ ``-``, ``*`` ↔ ``/``), a dropped
``not`` or unary minus, a number ``n`` → ``n + 1``, ``True`` ↔ ``False``, a string literal → ``"XX…XX"``,
``min`` ↔ ``max``, ``break`` ↔ ``continue`` - and is killed when the tests fail (or time out) with it. What is not
mutated: docstrings, annotations and ``Literal[...]`` types, ``__all__``, f-strings and the arguments of logging
calls (message wording, not behaviour).

Speed on a shared 2-core machine: one parent process imports the tests' third-party dependencies once (torch,
numpy, pydantic, ...), learnt from a baseline run; every mutant then runs ``pytest -x`` in a forked child that
imports ganops and the tests afresh, with an import hook serving the mutated source under the module's real name
and path. The source file itself is never written.

Results go to ``<report>.json`` (per module and label: killed, survived, timed out, score, the survivors) and
``<report>.md``; surviving mutants judged equivalent are listed with the reason from ``<report>_equivalent.json``
(``{"src/ganops/x.py": {"<mutant id>": "why no test can tell"}}``).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
LOCAL_TOP_LEVEL = {"ganops", "tests", "dashboards", "scripts", "benchmarks", "conftest", "__main__"}
LOG_METHODS = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
    ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitOr: ast.BitAnd, ast.BitAnd: ast.BitOr,
}
BOOLOP_SWAPS: dict[type[ast.boolop], type[ast.boolop]] = {ast.And: ast.Or, ast.Or: ast.And}


# ------------------------------------------------------------------------------------------------ mutants
@dataclass(frozen=True)
class Mutant:
    index: int  # the site's position in the walk
    line: int
    col: int
    description: str  # e.g. "Lt -> LtE"

    @property
    def id(self) -> str:
        return f"{self.line}:{self.col}:{self.description.replace(' ', '')}"


def _name(node: ast.AST) -> str:
    return type(node).__name__


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, __all__, f-strings, logging calls (whole subtrees)."""
    roots: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                roots.append(body[0])
        if isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.returns is not None:
            roots.append(node.returns)
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            roots.append(node)
        if isinstance(node, ast.JoinedStr):
            roots.append(node)
        if isinstance(node, ast.Subscript) and (  # Literal["a", "b"]: a type, whatever it is assigned to
                (isinstance(node.value, ast.Name) and node.value.id == "Literal")
                or (isinstance(node.value, ast.Attribute) and node.value.attr == "Literal")):
            roots.append(node)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_METHODS \
                and isinstance(node.func.value, ast.Name) and "log" in node.func.value.id.lower():
            roots.append(node)
    return {id(n) for root in roots for n in ast.walk(root)}


class _Sites:
    """Walks a tree in a fixed order; for each mutable site yields (node, description, apply-function)."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.skip = _skipped_nodes(tree)

    def __iter__(self) -> Iterator[tuple[ast.AST, str, Any]]:
        for node in ast.walk(self.tree):
            if id(node) in self.skip:
                continue
            yield from self._at(node)

    def _at(self, node: ast.AST) -> Iterator[tuple[ast.AST, str, Any]]:
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                swap = COMPARE_SWAPS.get(type(op))
                if swap is not None:
                    def apply(n: ast.Compare = node, i: int = i, swap: type[ast.cmpop] = swap) -> None:
                        n.ops[i] = swap()
                    yield node, f"{_name(op)} -> {swap.__name__}", apply
        elif isinstance(node, ast.BinOp | ast.AugAssign):
            swap_b = BINOP_SWAPS.get(type(node.op))
            if swap_b is not None:
                def apply_b(n: ast.BinOp | ast.AugAssign = node, swap: type[ast.operator] = swap_b) -> None:
                    n.op = swap()
                yield node, f"{_name(node.op)} -> {swap_b.__name__}", apply_b
        elif isinstance(node, ast.BoolOp):
            swap_o = BOOLOP_SWAPS[type(node.op)]

            def apply_o(n: ast.BoolOp = node, swap: type[ast.boolop] = swap_o) -> None:
                n.op = swap()
            yield node, f"{_name(node.op)} -> {swap_o.__name__}", apply_o
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
            def apply_u(n: ast.UnaryOp = node) -> None:
                n.op = ast.UAdd() if isinstance(n.op, ast.USub) else _Identity()
            yield node, f"drop {_name(node.op)}", apply_u
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                def apply_bool(n: ast.Constant = node) -> None:
                    n.value = not n.value
                yield node, f"{value} -> {not value}", apply_bool
            elif isinstance(value, int | float) and not isinstance(value, complex):
                def apply_num(n: ast.Constant = node) -> None:
                    n.value = n.value + 1
                yield node, f"{value!r} -> {value + 1!r}", apply_num
            elif isinstance(value, str):
                def apply_str(n: ast.Constant = node) -> None:
                    n.value = f"XX{n.value}XX"
                yield node, "str -> XXstrXX", apply_str
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            other = "max" if node.func.id == "min" else "min"

            def apply_c(n: ast.Call = node, other: str = other) -> None:
                assert isinstance(n.func, ast.Name)
                n.func.id = other
            yield node, f"{node.func.id} -> {other}", apply_c
        elif isinstance(node, ast.Break | ast.Continue):
            yield node, f"{_name(node)} -> {'Continue' if isinstance(node, ast.Break) else 'Break'}", None


class _Identity(ast.unaryop):
    """Marker: ``not x`` becomes ``x`` (handled in :func:`mutate`)."""


def enumerate_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    return [Mutant(i, getattr(node, "lineno", 0), getattr(node, "col_offset", 0), what)
            for i, (node, what, _) in enumerate(_Sites(tree))]


class _Unwrap(ast.NodeTransformer):
    def visit_UnaryOp(self, node: ast.UnaryOp) -> ast.AST:
        self.generic_visit(node)
        return node.operand if isinstance(node.op, _Identity) else node


class _Swap(ast.NodeTransformer):
    def __init__(self, target: ast.AST) -> None:
        self.target = target

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if node is self.target:
            return ast.Continue() if isinstance(node, ast.Break) else ast.Break()
        return super().generic_visit(node)


def mutate(source: str, mutant: Mutant) -> str:
    """The module's source with one mutant applied (ast.unparse: comments and layout are gone, lines are not
    kept - tracebacks point into the mutant, not the file)."""
    tree = ast.parse(source)
    for i, (node, what, apply) in enumerate(_Sites(tree)):
        if i != mutant.index:
            continue
        assert what == mutant.description, (what, mutant)
        if apply is None:
            tree = _Swap(node).visit(tree)
        else:
            apply()
        tree = _Unwrap().visit(tree)
        return ast.unparse(ast.fix_missing_locations(tree))
    raise ValueError(f"no site {mutant.index} in the module")


# ------------------------------------------------------------------------------------------------ running
class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves `source` for module `name` (with the real file as its origin); everything else imports normally."""

    def __init__(self, name: str, path: Path, source: str) -> None:
        self.name, self.path, self.source = name, path, source

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.name:
            return None
        return importlib.util.spec_from_loader(fullname, self, origin=str(self.path))

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        module.__file__ = str(self.path)
        exec(compile(self.source, str(self.path), "exec"), module.__dict__)  # the mutant under test


def module_name(path: Path) -> str:
    rel = path.resolve().relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _run_child(tests: list[str], name: str, path: Path, source: str | None, modules_out: Path | None,
               log: Path) -> int:
    """In a forked child: import ganops/tests afresh (the mutant through the hook), run pytest, exit."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    for mod in [m for m in sys.modules if m.split(".")[0] in LOCAL_TOP_LEVEL and m != "__main__"]:
        del sys.modules[mod]
    if source is not None:
        sys.meta_path.insert(0, _MutantFinder(name, path, source))
    import pytest

    code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", "--no-header", *tests]))
    if modules_out is not None:
        modules_out.write_text(json.dumps(sorted(sys.modules)))
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run_tests(tests: list[str], name: str, path: Path, source: str | None, timeout: float, log: Path,
              modules_out: Path | None = None) -> str:
    """"passed", "failed" or "timeout" for one run in a forked child."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            code = _run_child(tests, name, path, source, modules_out, log)
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return "passed" if os.waitstatus_to_exitcode(status) == 0 else "failed"
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return "timeout"
        time.sleep(0.02)


def preload(modules: list[str]) -> None:
    """Import the third-party modules the tests needed, once, before forking."""
    for name in modules:
        if name.split(".")[0] in LOCAL_TOP_LEVEL or name in sys.modules:
            continue
        with contextlib.suppress(Exception):  # a module that imports only in some contexts: the child will
            importlib.import_module(name)
    for name in [m for m in sys.modules if m.split(".")[0] in LOCAL_TOP_LEVEL and m != "__main__"]:
        del sys.modules[name]  # nothing of the project may be inherited by the children


# ------------------------------------------------------------------------------------------------ report
def load_report(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"modules": {}}


def markdown(report: dict[str, Any], equivalent: dict[str, dict[str, str]]) -> str:
    lines = ["# Mutation audit", "",
             "`python -m scripts.mutation_audit` (scripts/mutation_audit.py): one AST mutant at a time, each run "
             "against the module's own unit tests (`pytest -x`). Score = killed / (killed + survived); a timeout "
             "counts as killed. `before`: the tests as they were before the audit (a module without a test file "
             "of its own: the tests that exercised it); `after`: with the tests the audit added. Equivalent "
             "mutants (no input can tell them from the original) are judged in `mutation_equivalent.json`.", "",
             "| module | tests | label | mutants | killed | timed out | survived | of them equivalent | score | "
             "score without the equivalent |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for module, entry in sorted(report["modules"].items()):
        for label in ("before", "after"):
            run = entry["runs"].get(label)
            if run is None:
                continue
            judged = sum(1 for s in run["survivors"] if s["id"] in equivalent.get(module, {}))
            tests = "<br>".join(f"`{t}`" for t in run["tests"])
            killed = run["killed"] + run["timeout"]
            clean = killed / (run["total"] - judged) if run["total"] > judged else 1.0
            lines.append(f"| `{module}` | {tests} | {label} | {run['total']} | {run['killed']} | {run['timeout']} | "
                         f"{run['survived']} | {judged} | {run['score']:.1%} | {clean:.1%} |")
    lines += ["", "## Surviving mutants (after)", ""]
    for module, entry in sorted(report["modules"].items()):
        run = entry["runs"].get("after") or entry["runs"].get("before")
        if run is None:
            continue
        lines.append(f"### `{module}`")
        lines.append("")
        if not run["survivors"]:
            lines += ["none", ""]
            continue
        lines += ["| mutant | code | judged |", "|---|---|---|"]
        for s in run["survivors"]:
            reason = equivalent.get(module, {}).get(s["id"], "**not judged**")
            code = s["code"].replace("|", "\\|")
            lines.append(f"| `{s['id']}` | `{code}` | {reason} |")
        lines.append("")
    return "\n".join(lines)


def write_markdown(report: Path) -> None:
    equivalent_path = report.parent / f"{report.name}_equivalent.json"
    equivalent = json.loads(equivalent_path.read_text()) if equivalent_path.is_file() else {}
    report.with_suffix(".md").write_text(markdown(load_report(report.with_suffix(".json")), equivalent) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", type=Path, help="the module under src/ to mutate")
    parser.add_argument("--tests", action="append", help="a test file (repeatable)")
    parser.add_argument("--label", default="after", choices=("before", "after"))
    parser.add_argument("--report", default=REPO / "reports" / "mutation", type=Path,
                        help="path without suffix: writes .json and .md")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per mutant (default: 3 × baseline + 10)")
    parser.add_argument("--only", action="append", default=[], help="run only these mutant ids (repeatable)")
    parser.add_argument("--render", action="store_true", help="only rewrite <report>.md from <report>.json")
    args = parser.parse_args(argv)
    if args.render:
        write_markdown(args.report)
        return 0
    if args.module is None or not args.tests:
        parser.error("--module and --tests are required")

    sys.dont_write_bytecode = True  # children import mutants under real paths: no .pyc may be written
    # this checkout's ganops and tests, whatever the environment's install points at (and for subprocesses too)
    for path_entry in (str(REPO), str(SRC)):
        if path_entry in sys.path:
            sys.path.remove(path_entry)
        sys.path.insert(0, path_entry)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(SRC), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    path = args.module.resolve()
    name = module_name(path)
    rel = str(path.relative_to(REPO))
    source = path.read_text()
    mutants = enumerate_mutants(source)
    if args.only:
        mutants = [m for m in mutants if m.id in set(args.only)]
    os.chdir(REPO)
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        log = Path(tmp) / "pytest.log"
        modules = Path(tmp) / "modules.json"
        started = time.monotonic()
        baseline = run_tests(args.tests, name, path, None, 600, log, modules_out=modules)
        if baseline != "passed":
            print(log.read_text()[-4000:])
            print(f"the tests fail without any mutant ({baseline}): fix them first", file=sys.stderr)
            return 2
        preload(json.loads(modules.read_text()))
        warm = time.monotonic()
        if run_tests(args.tests, name, path, None, 600, log) != "passed":  # the preloaded parent runs it the same
            print(log.read_text()[-4000:])
            return 2
        baseline_s = time.monotonic() - warm
        timeout = args.timeout or 3 * baseline_s + 10
        print(f"{rel}: {len(mutants)} mutants, tests {args.tests}, baseline {baseline_s:.1f} s "
              f"(cold {warm - started:.1f} s), timeout {timeout:.0f} s", flush=True)
        lines = source.splitlines()
        results: dict[str, list[dict[str, Any]]] = {"killed": [], "survived": [], "timeout": []}
        for n, mutant in enumerate(mutants, 1):
            outcome = run_tests(args.tests, name, path, mutate(source, mutant), timeout, log)
            key = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[outcome]
            code = lines[mutant.line - 1].strip() if 0 < mutant.line <= len(lines) else ""
            results[key].append({**asdict(mutant), "id": mutant.id, "code": code[:140]})
            mark = {"survived": "SURVIVED", "killed": "killed", "timeout": "timeout"}[key]
            print(f"[{n}/{len(mutants)}] {mark:8} {mutant.id}  {code[:80]}", flush=True)

    killed = len(results["killed"]) + len(results["timeout"])
    total = killed + len(results["survived"])
    run = {"tests": args.tests, "total": total, "killed": len(results["killed"]),
           "timeout": len(results["timeout"]), "survived": len(results["survived"]),
           "score": killed / total if total else 1.0, "survivors": results["survived"],
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    report_json = args.report.with_suffix(".json")
    report = load_report(report_json)
    if args.only:  # a partial run updates nothing but prints
        print(json.dumps(run, indent=2))
        return 0
    report["modules"].setdefault(rel, {"runs": {}})["runs"][args.label] = run
    report_json.parent.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    write_markdown(args.report)
    print(f"{rel} [{args.label}]: {killed}/{total} killed ({run['score']:.1%}), {run['survived']} survived")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
