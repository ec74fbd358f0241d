"""A run's settings, bundled: what the command line's flags and the Prefect form's fields both say.

    settings = RunSettings(backend="ecs", max_cost_usd=50, spot=True, ecs={"cluster": "...", ...})
    plan = flows.plan.prepare.prepare("grid-search/demo.yaml", settings)

One frozen model, as :class:`flows.ecs.settings.EcsSettings` is for the stack: the CLI builds it
from its flags, the flow from its parameters, and everything after reads it (the plan, the
launch window, the retries). ``ecs`` stays as given (a dict, or the form's model): the plan
checks it, so a dry run can price a cloud run whose settings are still incomplete.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flows.cost.cap import OnCap
from flows.cost.estimate import Backend


class RunSettings(BaseModel):
    """How to run a grid: backend, parallelism, cap, prices, retries (every field has a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Backend = Field("local", description="local subprocesses here, or ECS GPU tasks")
    max_parallel: int | None = Field(None, ge=1, description="packs at once; None: 2 local, 8 on ECS")
    max_cost_usd: float | None = Field(None, ge=0, description="hard cap on the grid's dollars, earlier runs included")
    instance_type: str = Field("g5.xlarge", description="the GPU the cells are timed on and priced at")
    spot: bool = Field(False, description="spot rates (the capacity provider must launch spot)")
    on_cap: OnCap = Field("refuse", description="over the cap: refuse, or run the subset that fits")
    cells_per_gpu: int | None = Field(None, ge=1, description="cells trained together on one GPU; None: benchmark's")
    out_dir: str | None = Field(None, description="the grid's folder; None: <spec folder>/<name>/")
    force: bool = Field(False, description="retrain cells that are already complete")
    retries: int = Field(3, ge=0, description="retries of a transiently failed pack")
    retry_delay_s: float = Field(30.0, ge=0, description="first retry delay; doubles, with jitter")
    local_usd_per_hour: float | None = Field(None, ge=0, description="local backend: what an hour here costs")
    ecs: dict[str, Any] | None = Field(None, description="the stack's outputs (EcsSettings' fields), as given")
    trainer: list[str] | None = Field(None, description="local backend: the command that trains cells")
    refresh_prices: bool = Field(False, description="dry run: read prices from AWS for the region")
    halving: bool = Field(False, description="successive halving with the default rule (a spec's halving key wins)")
