"""The status being built by a reconcile: phase and conditions, with the Kubernetes Events their changes call for.

`StatusBuilder` wraps a copy of the job's status (the typed `GanTrainingJobStatus`); setting a condition says
whether it changed (its `lastTransitionTime` moves only then), so each transition is one Event and a steady state is
none.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal, get_args

from ganops.api.spec import Condition, ConditionStatus, GanTrainingJobStatus, Phase
from ganops.operator.observe import format_time

PHASES: tuple[Phase, ...] = get_args(Phase)
FINISHED: tuple[Phase, ...] = ("Succeeded", "Failed", "BudgetExceeded")

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


def get_condition(status: GanTrainingJobStatus, type_: str) -> Condition | None:
    """A copy of the condition of that type, or None."""
    for condition in status.conditions:
        if condition.type == type_:
            return condition.model_copy()
    return None


def condition_is(status: GanTrainingJobStatus, type_: str, value: ConditionStatus = "True") -> bool:
    condition = get_condition(status, type_)
    return condition is not None and condition.status == value


class StatusBuilder:
    """The status being built (a copy of the current one), with the events its changes call for."""

    def __init__(self, current: GanTrainingJobStatus, now: dt.datetime) -> None:
        self.status = current.model_copy(deep=True)
        self.status.conditions = list(self.status.conditions)  # always written, as it always was
        self.now = now
        self.events: list[Event] = []
        self.reason_changed = False  # whether the last condition() call changed that condition's reason

    def condition(self, type_: str, value: bool | ConditionStatus, reason: str, message: str = "") -> bool:
        """Set a condition; True when its status changed (lastTransitionTime moves only then)."""
        wanted: ConditionStatus = value if isinstance(value, str) else ("True" if value else "False")
        self.reason_changed = False
        for condition in self.status.conditions:
            if condition.type == type_:
                changed = condition.status != wanted
                self.reason_changed = condition.reason != reason
                condition.status, condition.reason, condition.message = wanted, reason, message
                if changed or not condition.last_transition_time:
                    condition.last_transition_time = format_time(self.now)
                return changed
        self.status.conditions.append(Condition(type=type_, status=wanted, reason=reason, message=message,
                                                last_transition_time=format_time(self.now)))
        return True

    def condition_off(self, type_: str, reason: str, message: str = "") -> bool:
        """Set a condition to False only if it exists (absent conditions stay absent)."""
        if get_condition(self.status, type_) is None:
            return False
        return self.condition(type_, False, reason, message)

    def is_(self, type_: str, value: ConditionStatus = "True") -> bool:
        return condition_is(self.status, type_, value)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    @property
    def phase(self) -> Phase | None:
        return self.status.phase

    def set_phase(self, phase: Phase, message: str | None = None) -> bool:
        changed = self.status.phase != phase
        self.status.phase = phase
        if message is not None:
            self.status.message = message
        if phase in FINISHED:
            if self.status.completion_time is None:
                self.status.completion_time = format_time(self.now)
        else:
            self.status.completion_time = None
        return changed


def apply_action_error(status: GanTrainingJobStatus, what: str, message: str, now: dt.datetime) -> tuple[
        GanTrainingJobStatus, list[Event]]:
    """A child could not be created or changed (the API refused it): say so in status, once."""
    st = StatusBuilder(status, now)
    if st.condition("ChildrenReady", False, "ApiError", f"{what}: {message}"):
        st.event("Warning", "ReconcileError", f"{what}: {message}")
    return st.status, st.events


def apply_name_in_use(status: GanTrainingJobStatus, what: str, why: str, now: dt.datetime) -> tuple[
        GanTrainingJobStatus, list[Event]]:
    """A child's name is taken by an object that is not this job's (a deleted namesake's, until the garbage
    collector removes it): wait, and say so once."""
    st = StatusBuilder(status, now)
    message = f"{what} exists but {why}; waiting for it to go"
    if st.condition("ChildrenReady", False, "NameInUse", message):
        st.event("Normal", "NameInUse", message)
    st.status.message = message
    return st.status, st.events


def clear_action_error(status: GanTrainingJobStatus, now: dt.datetime) -> GanTrainingJobStatus:
    st = StatusBuilder(status, now)
    st.condition_off("ChildrenReady", "Created", "")
    return st.status
