"""Runs safety filters in order over one batch of samples and decides, per sample, what the user gets.

* Filters run in the order given. A sample blocked by one filter is not sent to later ones.
* Fail-closed: a filter that raises (or answers the wrong number of verdicts) blocks every sample it was
  checking, with outcome ``error`` and reason ``filter <name> failed: <ExceptionType>``; the traceback goes to the
  log, never to users. A verdict of ``error`` returned by a filter blocks too.
* ``mode="withhold"``: blocked samples have no output. ``mode="replace"``: blocked images become a neutral grey
  image of the same shape (``replaced=True``); blocked 2-D points are withheld (there is no neutral point).
* ``on_decision(filter, outcome)`` is called once per verdict (the app counts
  ``ganops_safety_decisions_total{filter,outcome}`` with it); an ``AuditSink`` gets one record per request that had
  a blocked sample (its verdicts counted per filter, each blocked sample listed). Neither may break a request:
  their errors are logged.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from .audit import AuditSink
from .base import RequestContext, SafetyFilter, Sample, Verdict

__all__ = ["DecisionCallback", "Mode", "SafetyPipeline", "SampleDecision", "neutral_image", "sample_sha256"]

logger = logging.getLogger(__name__)

Mode = Literal["withhold", "replace"]
DecisionCallback = Callable[[str, str], None]

NEUTRAL_GREY = 128


@dataclass(frozen=True)
class SampleDecision:
    """The pipeline's decision for one sample.

    ``output`` is what the user gets: the sample's pixels when allowed, a grey image when replaced, else ``None``.
    """

    index: int
    allowed: bool
    verdicts: list[Verdict]
    blocked_by: str | None = None
    reason: str = ""
    replaced: bool = False
    output: np.ndarray | None = field(default=None, repr=False)


def neutral_image(shape: tuple[int, ...]) -> np.ndarray:
    """A mid-grey ``uint8`` image of ``shape`` (HWC); an alpha channel is opaque."""
    image = np.full(shape, NEUTRAL_GREY, dtype=np.uint8)
    if len(shape) == 3 and shape[2] == 4:
        image[..., 3] = 255
    return image


def sample_sha256(sample: Sample) -> str:
    """SHA-256 of the sample's pixel bytes (C order), as audit records identify samples."""
    return hashlib.sha256(np.ascontiguousarray(sample.pixels).tobytes()).hexdigest()


class SafetyPipeline:
    """Filters in order, fail-closed. Call :meth:`run` (or the instance) with a batch and its request context."""

    def __init__(
        self,
        filters: Sequence[SafetyFilter],
        mode: Mode = "withhold",
        *,
        on_decision: DecisionCallback | None = None,
        audit_sink: AuditSink | None = None,
    ) -> None:
        if mode not in ("withhold", "replace"):
            raise ValueError(f"mode must be 'withhold' or 'replace', not {mode!r}")
        names = [f.name for f in filters]
        if len(set(names)) != len(names):
            raise ValueError(f"filter names must be unique: {names}")
        self.filters = list(filters)
        self.mode: Mode = mode
        self.on_decision = on_decision
        self.audit_sink = audit_sink

    @property
    def filter_names(self) -> list[str]:
        return [f.name for f in self.filters]

    def warm_up(self) -> None:
        """Load every filter's model now (call it before reporting ready); errors propagate to the caller."""
        for flt in self.filters:
            warm_up = getattr(flt, "warm_up", None)
            if callable(warm_up):
                warm_up()

    def __call__(self, samples: list[Sample], context: RequestContext) -> list[SampleDecision]:
        return self.run(samples, context)

    def run(self, samples: list[Sample], context: RequestContext) -> list[SampleDecision]:
        return self.run_many([(samples, context)])[0]

    def run_many(self, groups: Sequence[tuple[list[Sample], RequestContext]]) -> list[list[SampleDecision]]:
        """Decisions for several requests' samples at once (a micro-batch), one list per request, in order.

        Each filter sees every request's still-unblocked samples in one call when it has ``check_groups``
        (vectorised across the batch; per-request checks such as near-duplicates stay within a request), else one
        ``check`` per request. Verdicts, audit records and counts are the same as running each request alone.
        """
        verdicts: list[list[list[Verdict]]] = [[[] for _ in samples] for samples, _ in groups]
        blocked: list[dict[int, Verdict]] = [{} for _ in groups]
        contexts = [context for _, context in groups]
        for flt in self.filters:
            positions = [
                [pos for pos in range(len(samples)) if pos not in blocked[g]] for g, (samples, _) in enumerate(groups)
            ]
            if not any(positions):
                break
            batches = [[groups[g][0][p] for p in pos] for g, pos in enumerate(positions)]
            results = self._check_groups(flt, batches, contexts)
            for g, (pos_list, result) in enumerate(zip(positions, results, strict=True)):
                for pos, verdict in zip(pos_list, result, strict=True):
                    verdicts[g][pos].append(verdict)
                    self._count(verdict)
                    if verdict.blocks:
                        blocked[g][pos] = verdict

        out: list[list[SampleDecision]] = []
        for g, (samples, context) in enumerate(groups):
            decisions = [
                self._decide(pos, sample, verdicts[g][pos], blocked[g].get(pos)) for pos, sample in enumerate(samples)
            ]
            if blocked[g]:
                self._audit(samples, decisions, context)
            out.append(decisions)
        return out

    def _check_groups(
        self, flt: SafetyFilter, batches: list[list[Sample]], contexts: list[RequestContext]
    ) -> list[list[Verdict]]:
        """One verdict list per request. A vectorised ``check_groups`` that fails is retried request by request,
        so one request's trouble blocks only that request's samples (still fail-closed: never unchecked)."""
        check_groups = getattr(flt, "check_groups", None)
        live = [g for g, batch in enumerate(batches) if batch]
        if callable(check_groups) and len(live) > 1:
            try:
                result = check_groups([batches[g] for g in live], [contexts[g] for g in live])
                if len(result) != len(live):
                    raise FilterContractError(f"{flt.name} returned {len(result)} groups for {len(live)}")
                grouped: list[list[Verdict]] = [[] for _ in batches]
                for g, verdict_list in zip(live, result, strict=True):
                    grouped[g] = self._validated(flt, verdict_list, len(batches[g]))
                return grouped
            except Exception:
                logger.exception("safety filter %s failed on a batch of %d requests: checking them one by one",
                                 flt.name, len(live))
        return [self._check(flt, batch, contexts[g]) if batch else [] for g, batch in enumerate(batches)]

    def _validated(self, flt: SafetyFilter, result: list[Verdict], expected: int) -> list[Verdict]:
        name = flt.name
        if len(result) != expected:
            raise FilterContractError(f"{name} returned {len(result)} verdicts for {expected} samples")
        for verdict in result:
            if not isinstance(verdict, Verdict):
                raise FilterContractError(f"{name} returned {type(verdict).__name__}, not Verdict")
        return [v if v.filter == name else Verdict(name, v.outcome, v.reason, v.score) for v in result]

    def _check(self, flt: SafetyFilter, batch: list[Sample], context: RequestContext) -> list[Verdict]:
        name = flt.name
        try:
            return self._validated(flt, flt.check(batch, context), len(batch))
        except Exception as exc:
            logger.exception(
                "safety filter %s failed on %d sample(s) of request %s: blocking them (fail-closed)",
                name,
                len(batch),
                context.request_id,
            )
            reason = f"filter {name} failed: {type(exc).__name__}"
            return [Verdict(name, "error", reason) for _ in batch]

    def _count(self, verdict: Verdict) -> None:
        if self.on_decision is None:
            return
        try:
            self.on_decision(verdict.filter, verdict.outcome)
        except Exception:
            logger.exception("safety decision callback failed for %s/%s", verdict.filter, verdict.outcome)

    def _decide(self, pos: int, sample: Sample, verdicts: list[Verdict], blocker: Verdict | None) -> SampleDecision:
        if blocker is None:
            return SampleDecision(sample.index, True, verdicts, output=sample.pixels)
        reason = blocker.reason or f"blocked by {blocker.filter}"
        if self.mode == "replace" and sample.is_image:
            return SampleDecision(
                sample.index,
                False,
                verdicts,
                blocker.filter,
                reason,
                replaced=True,
                output=neutral_image(sample.pixels.shape),
            )
        return SampleDecision(sample.index, False, verdicts, blocker.filter, reason)

    def _audit(self, samples: list[Sample], decisions: list[SampleDecision], context: RequestContext) -> None:
        """One record for the request: every filter's verdicts counted, and each blocked sample (index, label,
        SHA-256 of its pixels, the verdict that blocked it). The sink queues it; nothing here waits for storage."""
        if self.audit_sink is None:
            return
        try:
            counts: dict[str, dict[str, int]] = {}
            blocked: list[dict[str, Any]] = []
            for sample, decision in zip(samples, decisions, strict=True):
                for verdict in decision.verdicts:
                    per_filter = counts.setdefault(verdict.filter, {})
                    per_filter[verdict.outcome] = per_filter.get(verdict.outcome, 0) + 1
                if decision.allowed:
                    continue
                blocker = decision.verdicts[-1]
                blocked.append({
                    "index": sample.index,
                    "label": sample.label,
                    "sha256": sample_sha256(sample),
                    "shape": list(sample.pixels.shape),
                    "filter": blocker.filter,
                    "outcome": blocker.outcome,
                    "reason": blocker.reason,
                    "score": blocker.score,
                    "replaced": decision.replaced,
                    "pixels": sample.pixels,
                })
            record: dict[str, Any] = {
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "request_id": context.request_id,
                "model": context.model_name,
                "version": context.model_version,
                "api_key_id": context.api_key_id,
                "request_label": context.label,
                "mode": self.mode,
                "samples": len(samples),
                "blocked": len(blocked),
                "verdicts": counts,
                "blocked_samples": blocked,
            }
            self.audit_sink.write(record)
        except Exception:
            logger.exception("safety audit write failed for request %s", context.request_id)


class FilterContractError(RuntimeError):
    """A filter answered something other than one :class:`Verdict` per sample."""
