"""MLflow access for the whole platform: one run per job, lineage tags, and the model registry.

Two kinds of callers, two failure policies:

* **Training-time logging** (:class:`Tracker`, :mod:`ganops.tracking.run`) never stops or slows training: it
  buffers, retries in the background and reports at the end what could not be sent.
* **Registry calls** (:func:`register_version`, :func:`get_alias`, …, :mod:`ganops.tracking.registry`) are used by
  promotion and serving, which need an answer: they retry briefly and then raise :class:`TrackingUnavailable`.

The package, by responsibility:

=====================================  ========================================================================
:mod:`ganops.tracking.errors`          TrackingError / TrackingUnavailable, transient or not, :func:`redact`
:mod:`ganops.tracking.connection`      the MlflowClient factory (:func:`client`) and MLflow's HTTP defaults
:mod:`ganops.tracking.lineage`         :func:`job_key`, :func:`flatten_spec`, :func:`lineage_tags`
:mod:`ganops.tracking.ops`             what a tracker buffers (counts, limits) and the request each item becomes
:mod:`ganops.tracking.run`             :class:`Tracker`: the buffered, outage-tolerant run
:mod:`ganops.tracking.registry`        model versions, aliases, :func:`ping`
=====================================  ========================================================================

Tag and environment variable names are :mod:`ganops.contracts`.
"""

from __future__ import annotations

from ganops.tracking.connection import client as client
from ganops.tracking.errors import TrackingError as TrackingError
from ganops.tracking.errors import TrackingUnavailable as TrackingUnavailable
from ganops.tracking.errors import is_transient as is_transient
from ganops.tracking.errors import redact as redact
from ganops.tracking.lineage import MAX_PARAM_VALUE_CHARS as MAX_PARAM_VALUE_CHARS
from ganops.tracking.lineage import flatten_spec as flatten_spec
from ganops.tracking.lineage import job_key as job_key
from ganops.tracking.lineage import lineage_tags as lineage_tags
from ganops.tracking.ops import RESUMABLE_STATUSES as RESUMABLE_STATUSES
from ganops.tracking.ops import BufferLimits as BufferLimits
from ganops.tracking.ops import TrackingCounts as TrackingCounts
from ganops.tracking.registry import ModelVersionInfo as ModelVersionInfo
from ganops.tracking.registry import delete_alias as delete_alias
from ganops.tracking.registry import get_alias as get_alias
from ganops.tracking.registry import get_version as get_version
from ganops.tracking.registry import list_versions as list_versions
from ganops.tracking.registry import ping as ping
from ganops.tracking.registry import register_version as register_version
from ganops.tracking.registry import set_alias as set_alias
from ganops.tracking.run import TERMINAL_STATUSES as TERMINAL_STATUSES
from ganops.tracking.run import RunStatus as RunStatus
from ganops.tracking.run import Tracker as Tracker

__all__ = [
    "MAX_PARAM_VALUE_CHARS",
    "RESUMABLE_STATUSES",
    "TERMINAL_STATUSES",
    "BufferLimits",
    "ModelVersionInfo",
    "RunStatus",
    "Tracker",
    "TrackingCounts",
    "TrackingError",
    "TrackingUnavailable",
    "client",
    "delete_alias",
    "flatten_spec",
    "get_alias",
    "get_version",
    "is_transient",
    "job_key",
    "lineage_tags",
    "list_versions",
    "ping",
    "redact",
    "register_version",
    "set_alias",
]
