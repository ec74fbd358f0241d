"""The cost model on hand-checked numbers: work, GPU-seconds, a run's estimate under its pricing."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cost import cap as plan
from flows.cost import estimate as cost
from flows.cost import throughput
from flows.spec.cells import expand
from flows.spec.parse import check_spec, load_spec
from tests.conftest import grid_cells

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data"

# One published cell: 181 subjects, 20% validation -> 145 train / 36 validation,
# until 2 x 3 rounds x 10 epochs = 60 epochs: 8700 training images, 2160 validation passes.
TRAIN, VAL = 8700, 2160
EQUIVALENT = TRAIN + VAL / 3  # 9420 forward+backward-equivalent images
A10G_PACKED = 1530 * 70 / 989  # H200's 16-process figure scaled by bf16 peak: 108.29 images/s

pytestmark = pytest.mark.usefixtures("seed_throughput")


@pytest.fixture(scope="module")
def benson():
    return expand(load_spec(ROOT / "grid-search/benson2025.yaml"))


def ecs(instance_type: str = "g5.xlarge", **kw) -> cost.Pricing:
    return plan.make_pricing("ecs", instance_type, **kw)


def test_work_of_a_published_cell():
    cell = grid_cells({"lr": [0.0025]})[0]
    work = cost.work_of(cell)
    assert (work.train_images, work.validation_images) == (TRAIN, VAL)
    assert work.rounds == ((4, 2900, 720),) * 3 and work.pixel_scale == 1.0
    assert cost.cell_work(cell) == pytest.approx(EQUIVALENT * 73.0)  # 687,660 GFLOP
    resnet34 = grid_cells({"base_model": ["resnet34"]})[0]
    assert cost.cell_work(resnet34) == pytest.approx(EQUIVALENT * 80.3)


def test_work_scales_with_pixels_partition_and_round_batch():
    small = grid_cells({"lr": [0.001]}, dataset={"kind": "synthetic", "subjects": 32, "rows": 64, "cols": 128},
                       partition=0.25)[0]
    work = cost.work_of(small)
    assert work.pixel_scale == 0.25 and (work.train_images, work.validation_images) == (2 * 30 * 24, 2 * 30 * 8)
    resized = grid_cells({"lr": [0.001]}, image_size=[64, 256])[0]
    assert cost.work_of(resized).pixel_scale == 0.5
    legacy = expand(load_spec(DATA / "legacy" / "grid-params.json"))[0]  # explicit 130 / 33 subjects
    assert (cost.work_of(legacy).train_images, cost.work_of(legacy).validation_images) == (2 * 30 * 130, 2 * 30 * 33)
    per_round = expand(check_spec({"name": "t", "plan": [{"batch_size": 8}, {}], "hyper": {"lr": [0.001]}}))[0]
    assert [b for b, _, _ in cost.work_of(per_round).rounds] == [8, 4]


def test_gpu_seconds_on_hand_checked_numbers():
    cell = grid_cells({"lr": [0.0025]})[0]
    # H200, one eager cell: 305 images/s at batch 4 (measured), plus a 30 s task start.
    assert cost.cell_gpu_seconds(cell, "H200") == pytest.approx(EQUIVALENT / 305 + 30)
    # 16 cells per GPU: 1530 images/s between them; the start-up is shared 16 ways.
    assert cost.cell_gpu_seconds(cell, "H200", cells_per_gpu=16) == pytest.approx(EQUIVALENT / 1530 + 30 / 16)
    # Batch 2 is launch bound too: ~13 ms a step -> 2 / 0.013 images/s.
    b2 = grid_cells({"batch_size": [2]})[0]
    assert cost.cell_gpu_seconds(b2, "H200") == pytest.approx(EQUIVALENT / (2 / 0.013) + 30)
    # An instance type names its GPU; the A10G is scaled from the H200 by bf16 peak 70/989.
    assert cost.cell_gpu_seconds(cell, "g5.xlarge") == pytest.approx(EQUIVALENT / A10G_PACKED + 30)
    assert cost.cell_usd(cell, ecs()) == pytest.approx((EQUIVALENT / A10G_PACKED + 30) / 3600 * 1.006)
    assert cost.cell_usd(cell, ecs(spot=True)) == pytest.approx((EQUIVALENT / A10G_PACKED + 30) / 3600 * 0.45)
    with pytest.raises(cost.CostError, match="unknown GPU or instance type 'Z80'"):
        cost.cell_gpu_seconds(cell, "Z80")


def test_estimate_on_hand_checked_numbers(monkeypatch):
    cells = grid_cells({"lr": [0.001, 0.002]})
    per_cell = EQUIVALENT / A10G_PACKED + 30
    with monkeypatch.context() as mp:
        mp.setattr(cost, "MAX_PACK_CELLS", 1)  # a task per cell
        one = cost.estimate(cells, ecs(max_parallel=1))
    assert one.cells == 2 and one.packs == 2 and one.cells_per_gpu == 1 and one.gpu == "A10G"
    assert one.gpu_hours_cells == pytest.approx(2 * per_cell / 3600)
    assert one.gpu_hours_overhead == pytest.approx((300 + 900) / 3600)  # one lane: start + idle tail
    assert one.usd_on_demand == pytest.approx(one.gpu_hours * 1.006)
    assert one.usd_spot == pytest.approx(one.gpu_hours * 0.45) and one.usd == one.usd_on_demand
    assert one.wall_hours == pytest.approx((300 + 2 * per_cell) / 3600)
    two = cost.estimate(cells, ecs(spot=True, max_parallel=2))
    assert two.wall_hours == pytest.approx((300 + per_cell) / 3600)
    assert two.gpu_hours_overhead == pytest.approx(2 * 1200 / 3600) and two.usd == two.usd_spot
    assert (two.train_images, two.validation_images) == (2 * TRAIN, 2 * VAL)
    assert two.pflop == pytest.approx(2 * EQUIVALENT * 73.0 / 1e6)
    # Local GPUs are already running: no instance start or idle tail, the instance type's rate, and
    # a process starts in 6 s where a container took 30.
    warm = cost.estimate(cells, plan.make_pricing("local", "g5.xlarge", max_parallel=2, local_gpus=True))
    local_cell = per_cell - 30 + 6
    assert warm.gpu_hours_overhead == 0 and warm.wall_hours == pytest.approx(local_cell / 3600)
    assert warm.usd == pytest.approx(2 * local_cell / 3600 * 1.006)
    # A CPU-only machine is charged nothing unless told what an hour of it costs.
    cpu = cost.estimate(cells, plan.make_pricing("local", "g5.xlarge"))
    assert cpu.usd == 0 and cpu.usd_on_demand == pytest.approx(warm.usd)  # the instance's rates, for reference
    billed = cost.estimate(cells, plan.make_pricing("local", "g5.xlarge", local_usd_per_hour=3.0))
    assert billed.usd == pytest.approx(2 * local_cell / 3600 * 3.0)
    d = two.as_dict()
    assert {"gpu_hours", "usd_on_demand", "usd_spot", "usd", "wall_hours", "sources", "backend"} <= set(d)


def test_filled_packs_pay_one_start_for_several_waves(monkeypatch):
    cells = grid_cells({"lr": [0.001, 0.002, 0.003, 0.004]})
    train = EQUIVALENT / A10G_PACKED  # 87 s each, less than the 300 s that makes a 30 s start 10%
    # One lane: every cell in one task, one at a time (--threads 1 --workers 1), one start.
    (pack,) = cost.price_packs(cells, ecs(max_parallel=1))
    assert len(pack.cells) == 4 and pack.at_once == 1
    assert pack.gpu_seconds == pytest.approx(30 + 4 * train)
    assert pack.flags(False) == ["--threads", "1", "--workers", "1"]
    # Two lanes: never fewer packs than lanes, so half each.
    assert [len(p.cells) for p in cost.price_packs(cells, ecs(max_parallel=2))] == [2, 2]
    # Eight lanes: a task per cell, as without filling; its flags leave the trainer's defaults.
    packs = cost.price_packs(cells, ecs(max_parallel=8))
    assert [len(p.cells) for p in packs] == [1] * 4 and packs[0].flags(True) == ["--force"]
    with monkeypatch.context() as mp:
        mp.setattr(cost, "MAX_PACK_CELLS", 1)  # a task per cell, filling nothing
        assert packs == cost.price_packs(cells, ecs(max_parallel=8))
    # A long cell fills its task alone: 4 repeats make each cell 348 s of training, past 300.
    long = grid_cells({"lr": [0.001, 0.002]}, until=8)
    assert [len(p.cells) for p in cost.price_packs(long, ecs(max_parallel=1))] == [1, 1]
    # Forced cells never share a task with the others (--force holds for all of a trainer's cells).
    forced = cost.price_packs(cells, ecs(max_parallel=1), frozenset({cells[0].id}))
    assert [(len(p.cells), p.force) for p in forced] == [(1, True), (3, False)]


def test_packed_estimate_shares_start_up(benson, monkeypatch):
    p5 = ecs("p5.48xlarge", max_parallel=8, cells_per_gpu=16)
    with monkeypatch.context() as mp:
        mp.setattr(cost, "MAX_PACK_CELLS", 16)  # one wave a task, filling nothing
        est = cost.estimate(benson, p5)
    # 24 groups of 75 cells (base model x batch x inputs): 5 packs of 15... at most 16 each.
    assert est.packs == 24 * 5 and est.cells_per_gpu == 16 and est.cells_per_pack == 16
    work = sum(cost.work_of(c).gflop / throughput.GFLOP_PER_IMAGE[c.options.base_model] for c in benson)
    assert est.gpu_hours_cells > work / 1530 / 3600  # the fastest any cell goes, plus start-ups
    # Filled: a task trains waves of 16 until its 30 s start is at most 10% of it.
    packs = cost.price_packs(benson, p5)
    filled = cost.estimate(benson, p5, packs)
    assert 8 <= filled.packs < est.packs and sorted(c.id for p in packs for c in p.cells) == sorted(c.id for c in benson)
    assert all(p.at_once == 16 and p.flags(False) == ["--threads", "16", "--workers", "1"]
               for p in packs if len(p.cells) > 16)
    target = min(300, sum(p.gpu_seconds - 30 for p in packs) / 8)  # its training, or a lane's share
    assert all(p.gpu_seconds - 30 >= target for p in packs[:-1])
    assert filled.gpu_hours_cells == pytest.approx(est.gpu_hours_cells - (est.packs - filled.packs) * 30 / 3600)


def test_packs_group_cells_the_trainer_can_share():
    cells = grid_cells({"lr": [0.001, 0.002, 0.003], "batch_size": [2, 4]})
    packs = cost.make_packs(cells, 2)
    assert sorted(len(p) for p in packs) == [1, 1, 2, 2]
    assert all(len({c.options.batch_size for c in p}) == 1 for p in packs)
    assert cost.make_packs(cells, 1) == [[c] for c in cells]
