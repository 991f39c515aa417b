"""The status being built by a reconcile: phase and conditions, with the Kubernetes Events their changes call for.

`StatusBuilder` wraps a copy of the job's status; setting a condition says whether it changed (its
`lastTransitionTime` moves only then), so each transition is one Event and a steady state is none.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ganops.operator.observe import format_time

PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed", "BudgetExceeded")
FINISHED = ("Succeeded", "Failed", "BudgetExceeded")

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


def get_condition(status: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in status.get("conditions") or []:
        if condition.get("type") == type_:
            return dict(condition)
    return None


def condition_is(status: Mapping[str, Any], type_: str, value: str = "True") -> bool:
    condition = get_condition(status, type_)
    return condition is not None and condition.get("status") == value


class StatusBuilder:
    """The status being built, with the events its changes call for."""

    def __init__(self, current: Mapping[str, Any], now: dt.datetime) -> None:
        self.data: dict[str, Any] = {k: v for k, v in current.items()}
        self.data["conditions"] = [dict(c) for c in current.get("conditions") or []]
        self.now = now
        self.events: list[Event] = []

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def condition(self, type_: str, value: bool | str, reason: str, message: str = "") -> bool:
        """Set a condition; True when its status changed (lastTransitionTime moves only then)."""
        wanted = value if isinstance(value, str) else ("True" if value else "False")
        conditions: list[dict[str, Any]] = self.data["conditions"]
        for condition in conditions:
            if condition.get("type") == type_:
                changed = condition.get("status") != wanted
                condition.update(status=wanted, reason=reason, message=message)
                if changed or not condition.get("lastTransitionTime"):
                    condition["lastTransitionTime"] = format_time(self.now)
                return changed
        conditions.append({"type": type_, "status": wanted, "reason": reason, "message": message,
                           "lastTransitionTime": format_time(self.now)})
        return True

    def condition_off(self, type_: str, reason: str, message: str = "") -> bool:
        """Set a condition to False only if it exists (absent conditions stay absent)."""
        if get_condition(self.data, type_) is None:
            return False
        return self.condition(type_, False, reason, message)

    def is_(self, type_: str, value: str = "True") -> bool:
        return condition_is(self.data, type_, value)

    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    @property
    def phase(self) -> str | None:
        value = self.data.get("phase")
        return value if isinstance(value, str) else None

    def set_phase(self, phase: str, message: str | None = None) -> bool:
        changed = self.data.get("phase") != phase
        self.data["phase"] = phase
        if message is not None:
            self.data["message"] = message
        if phase in FINISHED:
            self.data.setdefault("completionTime", format_time(self.now))
            if self.data.get("completionTime") is None:
                self.data["completionTime"] = format_time(self.now)
        else:
            self.data.pop("completionTime", None)
        return changed


def apply_action_error(status: Mapping[str, Any], what: str, message: str, now: dt.datetime) -> tuple[
        dict[str, Any], list[Event]]:
    """A child could not be created or changed (the API refused it): say so in status, once."""
    st = StatusBuilder(status, now)
    if st.condition("ChildrenReady", False, "ApiError", f"{what}: {message}"):
        st.event("Warning", "ReconcileError", f"{what}: {message}")
    return st.data, st.events


def clear_action_error(status: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    st = StatusBuilder(status, now)
    st.condition_off("ChildrenReady", "Created", "")
    return st.data
