"""The platform's policy applied to one job: what a tenant may choose, decided before anything is created.

A user who may create GanTrainingJobs is not trusted with what the operator does on their behalf: the pods it
creates (image, priority class, node selector, tolerations) and the servers it or those pods talk to with
platform or namespace credentials (MLflow, the checkpoint store). The platform admin sets the allowlists
(`settings.JobPolicy`, from the operator's environment); a job outside them gets `InvalidSpec` with one line per
problem, and nothing runs. Pure functions: `Controller` adds `problems()` to the spec's own problems.
"""

from __future__ import annotations

from ganops.api.spec import GanTrainingJobSpec, Toleration
from ganops.api.uris import same_server, within
from ganops.operator.settings import ANY, OperatorConfig, parse_toleration


def tracking_server(requested: str | None, default: str | None, allowed: tuple[str, ...]) -> str | None:
    """The MLflow a job's promotion and rollback go to: the platform's `default` when the job names none
    (`requested`, its spec.tracking.mlflowUri), the platform's own spelling of the server it names when that is
    one of `allowed`, else None: never the URL as the user wrote it, so the operator's credentials only go to
    servers the admin listed."""
    if requested is None:
        return default
    return same_server(requested, allowed)


def _allowed(values: tuple[str, ...], default: str | None = None) -> str:
    shown = ([default] if default else []) + [v for v in values if v != default]
    return ", ".join(shown) if shown else "none"


def image_allowed(image: str, config: OperatorConfig) -> bool:
    """The operator's trainer image, or an entry of GANOPS_ALLOWED_IMAGES: `*`, an exact reference, a prefix
    ending in `/`, `:` or `@`, or a digest `sha256:<hex>` (any repository, those exact bytes)."""
    if image == config.image:
        return True
    for entry in config.policy.allowed_images:
        if entry == ANY or image == entry:
            return True
        if entry.startswith("sha256:") and image.endswith("@" + entry):
            return True
        if entry.endswith(("/", ":", "@")) and image.startswith(entry) and ".." not in image:
            return True
    return False


def node_selector_allowed(key: str, value: str, allowed: tuple[str, ...]) -> bool:
    return ANY in allowed or f"{key}={value}" in allowed or key in allowed


def toleration_allowed(toleration: Toleration, allowed: tuple[str, ...]) -> bool:
    """A toleration is allowed when an entry `key[=value][:effect]` covers it entirely: same key; the entry's value
    (if any) equals it, which an `Exists` toleration (any value) does not; the entry's effect (if any) equals it,
    which a toleration without an effect (every effect) does not. A toleration without a key tolerates every taint:
    only `*` allows it."""
    if ANY in allowed:
        return True
    if not toleration.key:
        return False
    for entry in allowed:
        rule = parse_toleration(entry, [], name="GANOPS_ALLOWED_TOLERATIONS")
        if rule is None or rule.key != toleration.key:
            continue
        if rule.value is not None and (toleration.operator == "Exists" or toleration.value != rule.value):
            continue
        if rule.effect is not None and toleration.effect != rule.effect:
            continue
        return True
    return False


def problems(spec: GanTrainingJobSpec, config: OperatorConfig) -> list[str]:
    """One line per choice of `spec` outside the platform's policy (empty: the job may run)."""
    out: list[str] = []
    policy = config.policy
    uri = spec.tracking.mlflow_uri
    if uri is not None and tracking_server(uri, config.mlflow_uri, config.mlflow_uris) is None:
        out.append(f"spec.tracking.mlflowUri {uri!r} is not an MLflow server of this platform (allowed: "
                   f"{_allowed(config.mlflow_uris)}): leave it unset to use the platform's")
    checkpoint = spec.checkpoint.uri
    if checkpoint is not None and within(checkpoint, config.checkpoint_uris) is None:
        out.append(f"spec.checkpoint.uri {checkpoint!r} is not under a checkpoint store of this platform (allowed: "
                   f"{_allowed(config.checkpoint_uris)}): leave it unset to use the platform's")
    resources = spec.resources
    if resources.image is not None and not image_allowed(resources.image, config):
        out.append(f"spec.resources.image {resources.image!r} is not allowed on this platform (allowed: "
                   f"{_allowed(policy.allowed_images, config.image)}): leave it unset to use the platform's")
    priority = resources.priority_class_name
    if priority is not None and ANY not in policy.allowed_priority_classes and (
            priority not in policy.allowed_priority_classes):
        out.append(f"spec.resources.priorityClassName {priority!r} is not allowed on this platform (allowed: "
                   f"{_allowed(policy.allowed_priority_classes)})")
    refused = [f"{k}={v}" for k, v in sorted(resources.node_selector.items())
               if not node_selector_allowed(k, v, policy.allowed_node_selectors)]
    if refused:
        out.append(f"spec.resources.nodeSelector {', '.join(refused)} is not allowed on this platform (allowed: "
                   f"{_allowed(policy.allowed_node_selectors)})")
    for index, toleration in enumerate(resources.tolerations):
        if not toleration_allowed(toleration, policy.allowed_tolerations):
            shown = toleration.model_dump(by_alias=True, exclude_none=True)
            out.append(f"spec.resources.tolerations[{index}] {shown} is not allowed on this platform (allowed: "
                       f"{_allowed(policy.allowed_tolerations)})")
    return out
