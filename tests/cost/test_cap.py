"""The cost pre-flight that the dry run and the flow share: pricing from flags, the cap, the subset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cost import cap as plan
from flows.cost import estimate as cost
from flows.cost.prices import CostError, Price
from flows.spec.cells import expand
from flows.spec.parse import load_spec
from tests.conftest import grid_cells

ROOT = Path(__file__).resolve().parents[2]
EQUIVALENT = 8700 + 2160 / 3  # one published cell's forward+backward-equivalent images
A10G_PACKED = 1530 * 70 / 989

pytestmark = pytest.mark.usefixtures("seed_throughput")


@pytest.fixture(scope="module")
def benson():
    return expand(load_spec(ROOT / "grid-search/benson2025.yaml"))


def test_pricing_is_what_the_ledger_charges():
    ecs = plan.make_pricing("ecs", "g5.xlarge", spot=True)
    assert (ecs.usd_per_gpu_hour, ecs.instances, ecs.max_parallel) == (pytest.approx(0.45), True, 8)
    gpus = plan.make_pricing("local", "p5.48xlarge", local_gpus=True)
    assert (gpus.usd_per_gpu_hour, gpus.instances, gpus.max_parallel) == (pytest.approx(55.04 / 8), False, 2)
    assert gpus.cells_per_gpu == 16  # from the throughput table, as the flow packs
    cpu = plan.make_pricing("local", "p5.48xlarge", cells_per_gpu=1, max_parallel=3)
    assert (cpu.usd_per_gpu_hour, cpu.instances, cpu.cells_per_gpu, cpu.max_parallel) == (0.0, False, 1, 3)
    assert plan.make_pricing("local", "g5.xlarge", local_usd_per_hour=2.5).usd_per_gpu_hour == 2.5
    assert plan.make_pricing("local", "g5.xlarge", local_gpus=True, local_usd_per_hour=0).usd_per_gpu_hour == 0
    mine = {"g5.xlarge": Price("g5.xlarge", "A10G", 1, 2.0, 1.0, 1.0, "2026-12-01", "test")}
    assert plan.make_pricing("ecs", "g5.xlarge", prices=mine).usd_per_gpu_hour == 2.0
    with pytest.raises(CostError, match="unknown instance type 'm5.large'"):
        plan.make_pricing("ecs", "m5.large")


def test_within_the_cap_everything_runs():
    cells = grid_cells({"lr": [0.001, 0.002]})
    pricing = plan.make_pricing("ecs", "g5.xlarge", max_parallel=1)
    d = plan.plan_run(cells, pricing, max_cost_usd=100.0, spent_usd=1.0)
    assert d.fits and d.runs and d.subset is None and d.cells_within is None and d.message() == ""
    assert d.estimate.usd == pytest.approx(cost.estimate(cells, pricing).usd)
    assert d.total_usd == pytest.approx(1.0 + d.estimate.usd)
    assert plan.verdict(d) == f"fits, ${1.0 + d.estimate.usd:,.2f} of $100.00"
    assert plan.plan_run(cells, pricing, None).fits and "none set" in plan.verdict(plan.plan_run(cells, pricing, None))
    assert plan.plan_run([], pricing, 0.0, spent_usd=5.0).fits  # nothing to train: nothing to refuse


def test_over_the_cap_refuses_or_runs_the_subset(benson):
    pricing = plan.make_pricing("ecs", "g5.xlarge")
    refused = plan.plan_run(benson, pricing, 20.0, on_cap="refuse")
    assert not refused.fits and not refused.runs and 0 < refused.cells_within < 1800
    assert refused.message() == (f"cost cap: estimated ${refused.estimate.usd:.2f} (+$0.00 already spent) exceeds "
                                 f"the cap $20.00; {refused.cells_within} of 1800 cells would fit "
                                 "(--on-cap subset runs them)")
    assert plan.verdict(refused).endswith("cells fit with every level kept (--on-cap subset runs them)")
    subset = plan.plan_run(benson, pricing, 20.0, on_cap="subset")
    assert subset.runs and subset.message() == "" and [c.id for c in subset.subset] == [c.id for c in refused.subset]
    assert plan.verdict(subset).endswith("(this run (--on-cap subset) trains them)")
    # Earlier spend leaves less room.
    assert plan.plan_run(benson, pricing, 20.0, spent_usd=10.0).cells_within < refused.cells_within
    none = plan.plan_run(benson, pricing, 1.0, on_cap="subset")
    assert not none.runs and none.cells_within == 0 and "even the 5 cells that cover every level cost" in none.message()


def test_subset_keeps_every_level_and_fits(benson):
    cap = 20.0
    pricing = plan.make_pricing("ecs", "g5.xlarge")
    subset = plan.select_subset(benson, cap, pricing)
    assert 0 < len(subset) < len(benson)
    for k, levels in {k: {json.dumps(c.hyper[k]) for c in benson} for k in benson[0].hyper}.items():
        assert {json.dumps(c.hyper[k]) for c in subset} == levels, k
    assert cost.estimate(subset, pricing).usd <= cap
    assert [c.id for c in plan.select_subset(benson, cap, pricing)] == [c.id for c in subset]  # deterministic
    order = {c.id: i for i, c in enumerate(benson)}
    assert [order[c.id] for c in subset] == sorted(order[c.id] for c in subset)  # grid order
    assert plan.plan_run(benson, pricing, cap).cells_within == len(subset)
    more = plan.select_subset(benson, 2 * cap, pricing)
    assert len(more) > len(subset)


def test_subset_refuses_when_not_even_the_cover_fits(benson):
    pricing = plan.make_pricing("ecs", "g5.xlarge")
    with pytest.raises(CostError, match=r"even the 5 cells that cover every level cost \$\d+\.\d\d"):
        plan.select_subset(benson, 2.0, pricing)
    assert plan.plan_run(benson, pricing, 2.0).cells_within == 0


def test_local_gpus_pay_no_instance_start_so_more_cells_fit():
    cells = grid_cells({"lr": [0.001, 0.002]})
    per_cell = EQUIVALENT / A10G_PACKED + 30
    warm = plan.make_pricing("local", "g5.xlarge", local_gpus=True)
    assert len(plan.select_subset(cells, 2 * per_cell / 3600 * 1.006 + 1e-9, warm)) == 2
    with pytest.raises(CostError):  # on ECS the same cap does not even pay for an instance's start
        plan.select_subset(cells, 2 * per_cell / 3600 * 1.006 + 1e-9, plan.make_pricing("ecs", "g5.xlarge"))
