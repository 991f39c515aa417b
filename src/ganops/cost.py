"""What a job costs: GPU-hours × price, with a spot discount. Shared by the trainer, the operator and dashboards.

Prices are USD per GPU-hour. The embedded table holds typical on-demand list prices; a platform sets its own
with `GANOPS_PRICE_TABLE` (JSON `{"a100-80gb": 3.67, ...}`, handed over by the Helm chart), and a job can pin
`spec.budget.pricePerGPUHour`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ganops.api.spec import GanTrainingJobSpec

DEFAULT_PRICE_TABLE: dict[str, float] = {
    "t4": 0.35,
    "l4": 0.70,
    "a10g": 1.01,
    "v100": 2.48,
    "a100-40gb": 2.93,
    "a100-80gb": 3.67,
    "h100-80gb": 6.98,
    "default": 2.00,
}


def price_table() -> dict[str, float]:
    table = dict(DEFAULT_PRICE_TABLE)
    raw = os.environ.get("GANOPS_PRICE_TABLE")
    if raw:
        try:
            table.update({str(k): float(v) for k, v in json.loads(raw).items()})
        except (ValueError, AttributeError, TypeError) as exc:
            raise ValueError(f"GANOPS_PRICE_TABLE must be a JSON object of GPU type → USD per hour: {exc}") from exc
    return table


def price_per_gpu_hour(spec: GanTrainingJobSpec, table: dict[str, float] | None = None) -> float:
    """Effective USD per GPU-hour for this job, spot discount applied."""
    budget = spec.budget
    if budget.price_per_gpu_hour is not None:
        base = budget.price_per_gpu_hour
    else:
        prices = table if table is not None else price_table()
        base = prices.get(spec.resources.gpu_type or "default", prices.get("default", 0.0))
    return base * (1.0 - budget.spot_discount) if spec.resources.spot else base


def gpus(spec: GanTrainingJobSpec) -> int:
    return spec.resources.replicas * spec.resources.gpus_per_replica


@dataclass(frozen=True)
class CostFigures:
    gpu_hours: float
    usd: float

    def as_wire(self) -> dict[str, float]:
        return {"usd": round(self.usd, 6), "gpuHours": round(self.gpu_hours, 6)}


def cost_of(spec: GanTrainingJobSpec, running_seconds: float, table: dict[str, float] | None = None) -> CostFigures:
    gpu_hours = gpus(spec) * running_seconds / 3600.0
    return CostFigures(gpu_hours=gpu_hours, usd=gpu_hours * price_per_gpu_hour(spec, table))


def budget_fraction(spec: GanTrainingJobSpec, figures: CostFigures) -> float | None:
    """How much of the budget is spent (1.0 = all of it); None when the job has no budget."""
    shares = []
    if spec.budget.max_cost_usd is not None:
        shares.append(figures.usd / spec.budget.max_cost_usd)
    if spec.budget.max_gpu_hours is not None:
        shares.append(figures.gpu_hours / spec.budget.max_gpu_hours)
    return max(shares) if shares else None
