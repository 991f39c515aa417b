"""What a job costs (`ganops.cost`): the price table, the spot discount, GPU-hours and the budget share."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from ganops.api.loader import spec_from_object
from ganops.api.spec import GanTrainingJobSpec
from ganops.cost import CostFigures, budget_fraction, cost_of, gpus, price_per_gpu_hour, price_table
from tests.support.jobs import grid_job


def spec_of(**spec: Any) -> GanTrainingJobSpec:
    return spec_from_object(grid_job("g", **spec)["spec"])


# The embedded list prices (USD per GPU-hour): what a job without pricePerGPUHour is charged by GPU type.
LIST_PRICES = {"t4": 0.35, "l4": 0.70, "a10g": 1.01, "v100": 2.48, "a100-40gb": 2.93, "a100-80gb": 3.67,
               "h100-80gb": 6.98, "default": 2.00}


def test_the_embedded_table_holds_the_list_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANOPS_PRICE_TABLE", raising=False)
    assert price_table() == LIST_PRICES
    for gpu_type, price in LIST_PRICES.items():
        assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1, "gpuType": gpu_type})) == price
    # no GPU type, or one the table does not know: the "default" row
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1})) == 2.00
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1, "gpuType": "tpu-v9"})) == 2.00


def test_the_platform_table_from_the_environment_overrides_and_extends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANOPS_PRICE_TABLE", '{"a100-80gb": 3.2, "mi300x": "4.5"}')
    assert price_table() == {**LIST_PRICES, "a100-80gb": 3.2, "mi300x": 4.5}
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1, "gpuType": "mi300x"})) == 4.5
    monkeypatch.setenv("GANOPS_PRICE_TABLE", "[1, 2]")
    with pytest.raises(ValueError, match="GANOPS_PRICE_TABLE must be a JSON object"):
        price_table()


def test_a_table_without_a_default_row_charges_unknown_types_nothing() -> None:
    spec = spec_of(resources={"gpusPerReplica": 1, "gpuType": "l4"})
    assert price_per_gpu_hour(spec, {"a100": 3.0}) == 0.0
    assert price_per_gpu_hour(spec, {"a100": 3.0, "default": 1.5}) == 1.5
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1}), {"default": 1.5, "l4": 9.0}) == 1.5


def test_the_jobs_own_price_wins_and_spot_takes_the_discount() -> None:
    own = {"pricePerGPUHour": 4.0, "spotDiscount": 0.25}
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1, "gpuType": "t4"}, budget=own)) == 4.0
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1, "spot": True}, budget=own)) == 3.0
    assert price_per_gpu_hour(spec_of(resources={"gpusPerReplica": 1, "gpuType": "t4", "spot": True},
                                      budget={"spotDiscount": 0.5}), {"t4": 0.4}) == pytest.approx(0.2)


def test_cost_is_gpu_hours_times_price_over_every_replica() -> None:
    spec = spec_of(resources={"replicas": 2, "gpusPerReplica": 4}, budget={"pricePerGPUHour": 3.0})
    assert gpus(spec) == 8
    figures = cost_of(spec, 1800.0)  # half an hour on 8 GPUs
    assert figures == CostFigures(gpu_hours=4.0, usd=12.0)
    assert cost_of(spec_of(), 3600.0) == CostFigures(gpu_hours=0.0, usd=0.0)  # a CPU job costs nothing
    assert cost_of(spec, 1.0).as_wire() == {"usd": 0.006667, "gpuHours": 0.002222}  # 6 decimals on the wire
    with pytest.raises(dataclasses.FrozenInstanceError):
        figures.usd = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(("budget", "figures", "share"), [
    ({}, CostFigures(gpu_hours=5.0, usd=50.0), None),
    ({"maxCostUSD": 10.0}, CostFigures(gpu_hours=5.0, usd=2.5), 0.25),
    ({"maxGPUHours": 4.0}, CostFigures(gpu_hours=5.0, usd=2.5), 1.25),
    ({"maxCostUSD": 10.0, "maxGPUHours": 4.0}, CostFigures(gpu_hours=1.0, usd=5.0), 0.5),  # the larger share
    ({"maxCostUSD": 10.0, "maxGPUHours": 4.0}, CostFigures(gpu_hours=3.0, usd=5.0), 0.75),
])
def test_budget_fraction_is_the_larger_share(budget: dict[str, float], figures: CostFigures,
                                             share: float | None) -> None:
    assert budget_fraction(spec_of(budget=budget), figures) == share
