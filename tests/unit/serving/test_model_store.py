"""Model store logic with a fake resolver and loader (the real registry is in tests/integration/test_serving_registry):
swaps, reuse, failures that keep the old version, outages, canary routing; truncation and the canary hash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ganops import storage
from ganops.serving.metrics import ServingMetrics
from ganops.serving.model_store import (
    MEMORIZATION_TAG,
    ModelRef,
    ModelStore,
    NotReady,
    canary_bucket,
    find_memorization_index,
)


def test_the_canary_bucket_is_stable_and_uniform() -> None:
    assert canary_bucket(42) == canary_bucket(42)
    buckets = np.array([canary_bucket(s) for s in range(20000)])
    assert buckets.min() >= 0 and buckets.max() < 10000
    assert abs(float((buckets < 3000).mean()) - 0.3) < 0.015
    assert abs(float((buckets < 500).mean()) - 0.05) < 0.006


# ----------------------------------------------------------------------------------------------------- store


class FakeResolver:
    def __init__(self) -> None:
        self.primary: ModelRef | None = None
        self.canary: ModelRef | None = None
        self.error: Exception | None = None

    def resolve(self) -> tuple[ModelRef | None, ModelRef | None]:
        if self.error is not None:
            raise self.error
        return self.primary, self.canary


class FakeModel:
    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.model_id = f"{ref.name}:{ref.version}"


class FakeLoader:
    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.broken: set[str] = set()

    def __call__(self, ref: ModelRef) -> Any:
        if ref.version in self.broken:
            raise ValueError(f"version {ref.version} is broken")
        self.loaded.append(ref.version)
        return FakeModel(ref)


def ref(version: str, alias: str = "production") -> ModelRef:
    return ModelRef("m", version, alias, f"file:///ckpt/{version}")


def metric(metrics: ServingMetrics, name: str, labels: dict[str, str]) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def make_store(percent: float = 0.0) -> tuple[ModelStore, FakeResolver, FakeLoader, ServingMetrics]:
    resolver, loader, metrics = FakeResolver(), FakeLoader(), ServingMetrics(process=False)
    store = ModelStore(resolver, loader, metrics, model_name="m", canary_percent=percent)
    return store, resolver, loader, metrics


def test_swaps_keep_old_deployments_intact_and_do_not_reload_unchanged_versions() -> None:
    store, resolver, loader, metrics = make_store()
    assert not store.ready
    with pytest.raises(NotReady):
        store.route(1)
    store.poll()
    assert not store.ready  # the alias does not exist yet
    resolver.primary = ref("1")
    store.poll()
    store.poll()
    assert store.ready and loader.loaded == ["1"]
    held = store.route(1)  # a request in flight holds this
    resolver.primary = ref("2")
    store.poll()
    assert store.route(1).ref.version == "2" and held.ref.version == "1" and held.model.ref.version == "1"
    assert metric(metrics, "ganops_model_info", {"model": "m", "version": "2", "alias": "production"}) == 1
    assert metric(metrics, "ganops_model_info", {"model": "m", "version": "1", "alias": "production"}) == 0
    assert metric(metrics, "ganops_model_swaps_total", {"model": "m", "alias": "production"}) == 2
    assert store.known_model_ids == {"m:1", "m:2"}
    resolver.primary = ref("1")  # rollback: the replaced version is still loaded, no second load
    store.poll()
    assert store.route(1).model is held.model and loader.loaded == ["1", "2"]


def test_failure_counters_exist_at_zero_before_the_first_failure() -> None:
    store, _, _, metrics = make_store()
    for name in ("ganops_model_load_failures_total", "ganops_model_store_errors_total"):
        assert metrics.registry.get_sample_value(name, {"model": "m"}) == 0.0, name  # not None: the series exists
    assert store.model_name == "m"


def test_a_version_that_fails_to_load_leaves_the_old_one_serving() -> None:
    store, resolver, loader, metrics = make_store()
    resolver.primary = ref("1")
    store.poll()
    loader.broken.add("2")
    resolver.primary = ref("2")
    store.poll()
    store.poll()  # retried at every poll, counted every time
    assert store.route(0).ref.version == "1"
    assert metric(metrics, "ganops_model_load_failures_total", {"model": "m"}) == 2
    assert metric(metrics, "ganops_model_info", {"model": "m", "version": "1", "alias": "production"}) == 1
    loader.broken.clear()
    store.poll()
    assert store.route(0).ref.version == "2"


def test_an_unreachable_registry_keeps_serving_and_is_counted() -> None:
    store, resolver, _, metrics = make_store()
    resolver.primary = ref("1")
    store.poll()
    resolver.error = ConnectionError("registry down")
    store.poll()
    store.poll()
    assert store.ready and store.route(0).ref.version == "1"
    assert metric(metrics, "ganops_model_store_errors_total", {"model": "m"}) == 2
    assert store.last_error is not None and "registry down" in store.last_error
    resolver.error = None
    store.poll()
    assert store.last_error is None


def test_canary_routing_reuses_loaded_versions() -> None:
    store, resolver, loader, metrics = make_store(percent=25)
    resolver.primary, resolver.canary = ref("1"), ref("2", "canary")
    store.poll()
    assert loader.loaded == ["1", "2"]
    sides = {seed: store.route(seed).ref.version for seed in range(2000)}
    share = sum(v == "2" for v in sides.values()) / len(sides)
    assert abs(share - 0.25) < 0.04
    assert all((canary_bucket(seed) < 2500) == (version == "2") for seed, version in sides.items())
    assert store.route(7).ref.version == sides[7]  # sticky
    # Promotion: production moves to the canary's version → no second load, the same model object.
    canary_model = store.route(next(s for s, v in sides.items() if v == "2")).model
    resolver.primary = ref("2")
    store.poll()
    assert loader.loaded == ["1", "2"] and store.primary is not None and store.primary.model is canary_model
    resolver.canary = None
    store.poll()
    assert store.canary is None and {store.route(s).ref.version for s in range(50)} == {"2"}
    assert metric(metrics, "ganops_model_info", {"model": "m", "version": "2", "alias": "canary"}) == 0


# --------------------------------------------------------------------------------------------- memorization index


def test_the_memorization_index_is_found_by_tag_or_beside_the_weights(tmp_path: Path) -> None:
    step = (tmp_path / "job" / "step-000000010").as_uri()
    assert find_memorization_index(step, {}) is None
    beside = storage.join(step, "memorization.safetensors")
    storage.open_store(beside).put_bytes(beside, b"x")
    assert find_memorization_index(step, {}) == beside
    preferred = storage.join(step, "memorization_index.safetensors")
    storage.open_store(preferred).put_bytes(preferred, b"x")
    assert find_memorization_index(step, {}) == preferred
    elsewhere = (tmp_path / "indexes" / "digits.safetensors").as_uri()
    storage.open_store(elsewhere).put_bytes(elsewhere, b"x")
    assert find_memorization_index(step, {MEMORIZATION_TAG: elsewhere}) == elsewhere
    assert find_memorization_index(step, {MEMORIZATION_TAG: "memorization.safetensors"}) == beside
    with pytest.raises(FileNotFoundError):
        find_memorization_index(step, {MEMORIZATION_TAG: "missing.safetensors"})
