"""Read a job file (the same YAML a user would `kubectl apply`) into a validated GanTrainingJob."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ganops.api.errors import format_validation_error
from ganops.api.spec import GanTrainingJob, GanTrainingJobSpec

MAX_JOB_FILE_BYTES = 1 << 20  # a job file is a page of YAML; anything near this is a mistake or an attack


class JobFileError(ValueError):
    """A job file that cannot be used; `problems` holds one line per problem, each naming the field."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


MAX_NESTING = 64  # a job file is a few levels deep; deeper is a bomb that would exhaust the parser's recursion
MAX_PROBLEMS = 20  # lines reported per file; a file of 20 000 unknown keys gets a summary, not 20 000 lines


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases (how YAML bombs expand; job files never need them), nesting deeper
    than MAX_NESTING and duplicate keys (the API server refuses them too; silently keeping the last one hides
    half of a job)."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.constructor.ConstructorError(
                None, None, "YAML aliases (*name) are not allowed in job files", event.start_mark
            )
        if self._depth >= MAX_NESTING:
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_NESTING} levels: not a job file", event.start_mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}: each field may appear once", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str = "<job>") -> Any:
    if len(text.encode()) > MAX_JOB_FILE_BYTES:
        raise JobFileError(source, [f"file is larger than {MAX_JOB_FILE_BYTES} bytes: a job file is a page of YAML"])
    try:
        docs = [d for d in yaml.load_all(text, Loader=_NoAliasLoader) if d is not None]
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise JobFileError(source, [f"not valid YAML{line}: {problem}"]) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (int_max_str_digits)
        raise JobFileError(source, [f"not valid YAML: a value cannot be read ({str(exc).split(';')[0]})"]) from None
    if len(docs) != 1:
        raise JobFileError(source, [f"expected exactly one YAML document, found {len(docs)}"])
    return docs[0]


def _capped(problems: list[str]) -> list[str]:
    if len(problems) <= MAX_PROBLEMS:
        return problems
    return [*problems[:MAX_PROBLEMS], f"... and {len(problems) - MAX_PROBLEMS} more problems"]


def job_from_object(obj: Any, source: str = "<job>") -> GanTrainingJob:
    if not isinstance(obj, dict):
        raise JobFileError(source, ["expected a GanTrainingJob mapping (apiVersion, kind, metadata, spec)"])
    try:
        return GanTrainingJob.model_validate(obj)
    except ValidationError as err:
        raise JobFileError(source, _capped(format_validation_error(err, root=GanTrainingJob))) from None


def spec_from_object(spec: Any, source: str = "<spec>") -> GanTrainingJobSpec:
    """Validate a bare spec (what the operator reads off the resource); errors are prefixed with `spec`."""
    try:
        return GanTrainingJobSpec.model_validate(spec)
    except ValidationError as err:
        raise JobFileError(
            source, _capped(format_validation_error(err, prefix="spec", root=GanTrainingJobSpec))
        ) from None


def load_job(path: str | Path) -> GanTrainingJob:
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise JobFileError(source, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise JobFileError(source, ["file is not UTF-8 text"]) from None
    return job_from_object(parse_yaml(text, source), source)


def dump_job(job: GanTrainingJob) -> str:
    """The job as wire-format YAML (camelCase, defaults filled in), e.g. for the ConfigMap the pods read."""
    data = job.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False)
