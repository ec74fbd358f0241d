"""The cost model on hand-checked numbers; the subset that fits a cap; benchmark files; prices."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from flows import cost
from flows.cells import expand
from flows.spec import check_spec, load_spec

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

# One published cell: 181 subjects, 20% validation -> 145 train / 36 validation,
# until 2 x 3 rounds x 10 epochs = 60 epochs: 8700 training images, 2160 validation passes.
TRAIN, VAL = 8700, 2160
EQUIVALENT = TRAIN + VAL / 3  # 9420 forward+backward-equivalent images
A10G_PACKED = 1530 * 70 / 989  # H200's 16-process figure scaled by bf16 peak: 108.29 images/s


@pytest.fixture(autouse=True)
def seed_table(monkeypatch):
    # The hand-checked numbers below use the seed figures (REFERENCE.md); the measured file in
    # benchmarks/throughput/ is checked on its own (test_the_committed_h200_file_replaces_its_seeds).
    seeds = cost.throughput_table([])
    monkeypatch.setattr(cost, "default_table", lambda: seeds)


def cells_of(hyper: dict, **static) -> list:
    return expand(check_spec({"name": "t", "static": {"until": 2, **static}, "hyper": hyper}))


@pytest.fixture(scope="module")
def benson():
    return expand(load_spec(ROOT / "grid-search/benson2025.yaml"))


def test_work_of_a_published_cell():
    cell = cells_of({"lr": [0.0025]})[0]
    work = cost.work_of(cell)
    assert (work.train_images, work.validation_images) == (TRAIN, VAL)
    assert work.rounds == ((4, 2900, 720),) * 3 and work.pixel_scale == 1.0
    assert cost.cell_work(cell) == pytest.approx(EQUIVALENT * 73.0)  # 687,660 GFLOP
    resnet34 = cells_of({"base_model": ["resnet34"]})[0]
    assert cost.cell_work(resnet34) == pytest.approx(EQUIVALENT * 80.3)


def test_work_scales_with_pixels_partition_and_round_batch():
    small = cells_of({"lr": [0.001]}, dataset={"kind": "synthetic", "subjects": 32, "rows": 64, "cols": 128},
                     partition=0.25)[0]
    work = cost.work_of(small)
    assert work.pixel_scale == 0.25 and (work.train_images, work.validation_images) == (2 * 30 * 24, 2 * 30 * 8)
    resized = cells_of({"lr": [0.001]}, image_size=[64, 256])[0]
    assert cost.work_of(resized).pixel_scale == 0.5
    legacy = expand(load_spec(DATA / "legacy" / "grid-params.json"))[0]  # explicit 130 / 33 subjects
    assert (cost.work_of(legacy).train_images, cost.work_of(legacy).validation_images) == (2 * 30 * 130, 2 * 30 * 33)
    per_round = expand(check_spec({"name": "t", "plan": [{"batch_size": 8}, {}], "hyper": {"lr": [0.001]}}))[0]
    assert [b for b, _, _ in cost.work_of(per_round).rounds] == [8, 4]


def test_gpu_seconds_on_hand_checked_numbers():
    cell = cells_of({"lr": [0.0025]})[0]
    # H200, one eager cell: 305 images/s at batch 4 (measured), plus a 30 s task start.
    assert cost.cell_gpu_seconds(cell, "H200") == pytest.approx(EQUIVALENT / 305 + 30)
    # 16 cells per GPU: 1530 images/s between them; the start-up is shared 16 ways.
    assert cost.cell_gpu_seconds(cell, "H200", cells_per_gpu=16) == pytest.approx(EQUIVALENT / 1530 + 30 / 16)
    # Batch 2 is launch bound too: ~13 ms a step -> 2 / 0.013 images/s.
    b2 = cells_of({"batch_size": [2]})[0]
    assert cost.cell_gpu_seconds(b2, "H200") == pytest.approx(EQUIVALENT / (2 / 0.013) + 30)
    # An instance type names its GPU; the A10G is scaled from the H200 by bf16 peak 70/989.
    assert cost.cell_gpu_seconds(cell, "g5.xlarge") == pytest.approx(EQUIVALENT / A10G_PACKED + 30)
    assert cost.cell_usd(cell, "g5.xlarge") == pytest.approx((EQUIVALENT / A10G_PACKED + 30) / 3600 * 1.006)
    assert cost.cell_usd(cell, "g5.xlarge", spot=True) == pytest.approx((EQUIVALENT / A10G_PACKED + 30) / 3600 * 0.44)


def test_throughput_curve():
    # Between measured points (4: 1045, 8: 1060) it interpolates; never beyond k x solo.
    assert cost.throughput("H200", "resnet18", 4, 6)[0] == pytest.approx(1052.5)
    assert cost.throughput("H200", "resnet18", 4, 2)[0] == pytest.approx(min(305 + (1045 - 305) / 3, 2 * 305))
    assert cost.throughput("H200", "resnet18", 4, 64)[0] == 1530  # flat past the last measurement
    # ResNet-34 has no packed measurement: the ResNet-18 curve x 73.0/80.3 FLOPs.
    assert cost.throughput("H200", "resnet34", 4, 16)[0] == pytest.approx(1530 * 73.0 / 80.3)
    ips, source = cost.throughput("A10G", "resnet18", 4, 1)
    assert ips == pytest.approx(A10G_PACKED) and "70/989" in source
    assert "measured" in cost.throughput("H200", "resnet18", 4, 1)[1]


def test_prices_per_gpu():
    assert cost.hourly_price("g5.xlarge") == 1.006 and cost.hourly_price("g5.xlarge", spot=True) == pytest.approx(0.44)
    assert cost.hourly_price("p5.48xlarge") == pytest.approx(55.04 / 8)
    assert cost.hourly_price("p5.48xlarge", spot=True) == pytest.approx((17.6 + 25.8) / 2 / 8)
    assert cost.hourly_price("p4d.24xlarge") == pytest.approx(21.958 / 8)
    assert set(cost.PRICES) == {"g4dn.xlarge", "g5.xlarge", "g6.xlarge", "g6e.xlarge", "p3.2xlarge",
                                "p4d.24xlarge", "p5.48xlarge"}
    assert all(p.date == "2026-06" and p.source for p in cost.PRICES.values())
    with pytest.raises(cost.CostError, match=r"unknown instance type 'x1.large'; priced: g4dn.xlarge, g5.xlarge"):
        cost.hourly_price("x1.large")


def test_the_committed_h200_file_replaces_its_seeds():
    files = sorted((ROOT / "benchmarks" / "throughput").glob("H200-*.json"))
    assert files, "benchmarks/throughput/ holds the H200 measurement the cost model uses"
    table = cost.throughput_table(files)
    h200 = [f for f in table.figures if f.gpu == "H200"]
    assert h200 and all("REFERENCE" not in f.source for f in h200)  # no seed left for a measured GPU
    assert {f.cells_per_gpu for f in h200} >= {1, 8, 16}
    measured = {(f.base_model, f.batch_size, f.cells_per_gpu): f.images_per_second for f in cost.load_throughput(files[-1])}
    assert cost.throughput("H200", "resnet34", 6, 16, table)[0] == pytest.approx(measured["resnet34", 6, 16])
    assert cost.throughput("H200", "resnet18", 4, 1, table)[0] == pytest.approx(measured["resnet18", 4, 1])
    # A GPU with no file keeps being scaled from the nearest measured one.
    assert "estimate" in cost.throughput("A10G", "resnet18", 4, 16, table)[1]


def test_default_cells_per_gpu_follows_the_table():
    assert cost.default_cells_per_gpu("p5.48xlarge") == 16  # H100 ~ H200: packing pays
    assert cost.default_cells_per_gpu("g5.xlarge") == 1  # an A10G is busy with one cell


def test_estimate_on_hand_checked_numbers():
    cells = cells_of({"lr": [0.001, 0.002]})
    per_cell = EQUIVALENT / A10G_PACKED + 30
    one = cost.estimate(cells, "g5.xlarge", max_parallel=1)
    assert one.cells == 2 and one.packs == 2 and one.cells_per_gpu == 1 and one.gpu == "A10G"
    assert one.gpu_hours_cells == pytest.approx(2 * per_cell / 3600)
    assert one.gpu_hours_overhead == pytest.approx((300 + 900) / 3600)  # one lane: start + idle tail
    assert one.usd_on_demand == pytest.approx(one.gpu_hours * 1.006)
    assert one.usd_spot == pytest.approx(one.gpu_hours * 0.44) and one.usd == one.usd_on_demand
    assert one.wall_hours == pytest.approx((300 + 2 * per_cell) / 3600)
    two = cost.estimate(cells, "g5.xlarge", spot=True, max_parallel=2)
    assert two.wall_hours == pytest.approx((300 + per_cell) / 3600)
    assert two.gpu_hours_overhead == pytest.approx(2 * 1200 / 3600) and two.usd == two.usd_spot
    assert (two.train_images, two.validation_images) == (2 * TRAIN, 2 * VAL)
    assert two.pflop == pytest.approx(2 * EQUIVALENT * 73.0 / 1e6)
    warm = cost.estimate(cells, "g5.xlarge", max_parallel=2, instances=False)  # GPUs already running
    assert warm.gpu_hours_overhead == 0 and warm.wall_hours == pytest.approx(per_cell / 3600)
    assert cost.cells_within(cells, 2 * per_cell / 3600 * 1.006 + 1e-9, "g5.xlarge", instances=False) == 2
    d = two.as_dict()
    assert {"gpu_hours", "usd_on_demand", "usd_spot", "usd", "wall_hours", "sources"} <= set(d)


def test_packed_estimate_shares_start_up(benson):
    est = cost.estimate(benson, "p5.48xlarge", max_parallel=8, cells_per_gpu=16)
    # 24 groups of 75 cells (base model x batch x inputs): 5 packs of 15... at most 16 each.
    assert est.packs == 24 * 5 and est.cells_per_gpu == 16
    work = sum(cost.work_of(c).gflop / cost.GFLOP_PER_IMAGE[c.options.base_model] for c in benson)
    assert est.gpu_hours_cells > work / 1530 / 3600  # the fastest any cell goes, plus start-ups


def test_subset_keeps_every_level_and_fits(benson):
    cap = 20.0
    subset = cost.select_subset(benson, cap, "g5.xlarge")
    assert 0 < len(subset) < len(benson)
    for k, levels in {k: {json.dumps(c.hyper[k]) for c in benson} for k in benson[0].hyper}.items():
        assert {json.dumps(c.hyper[k]) for c in subset} == levels, k
    assert cost.estimate(subset, "g5.xlarge").usd <= cap
    assert [c.id for c in cost.select_subset(benson, cap, "g5.xlarge")] == [c.id for c in subset]  # deterministic
    order = {c.id: i for i, c in enumerate(benson)}
    assert [order[c.id] for c in subset] == sorted(order[c.id] for c in subset)  # grid order
    assert cost.cells_within(benson, cap, "g5.xlarge") == len(subset)
    more = cost.select_subset(benson, 2 * cap, "g5.xlarge")
    assert len(more) > len(subset)


def test_subset_refuses_when_not_even_the_cover_fits(benson):
    with pytest.raises(cost.CostError, match=r"even the 5 cells that cover every level cost \$\d+\.\d\d"):
        cost.select_subset(benson, 2.0, "g5.xlarge")
    assert cost.cells_within(benson, 2.0, "g5.xlarge") == 0


def test_benchmark_file_feeds_the_table(tmp_path):
    bench = {
        "gpu": "NVIDIA A10G", "device": "NVIDIA A10G", "date": "2026-12-01",
        "source": "benchmarks/gpu_throughput.py", "extra": "kept out of the table",
        "figures": [
            {"base_model": "resnet18", "batch_size": 4, "cells_per_gpu": 1, "images_per_second": 250.0,
             "note": "eager"},
            {"base_model": "resnet18", "batch_size": 4, "cells_per_gpu": 4, "images_per_second": 600.0},
        ],
    }
    path = tmp_path / "a10g.json"
    path.write_text(json.dumps(bench))
    assert [f.gpu for f in cost.load_throughput(path)] == ["A10G", "A10G"]
    table = cost.throughput_table([path])
    ips, source = cost.throughput("A10G", "resnet18", 4, 1, table)
    assert ips == 250.0 and source == "benchmarks/gpu_throughput.py: eager"
    assert cost.throughput("A10G", "resnet18", 4, 4, table)[0] == 600.0
    assert cost.throughput("A10G", "resnet18", 4, 2, table)[0] == pytest.approx(250 + 350 / 3)
    # ResNet-34 from ResNet-18 by FLOPs; unmeasured GPUs scale from the measured one nearest in peak.
    assert cost.throughput("A10G", "resnet34", 4, 1, table)[0] == pytest.approx(250 * 73.0 / 80.3)
    assert cost.throughput("L4", "resnet18", 4, 16, table)[0] == pytest.approx(600 * 121 / 70)
    assert cost.throughput("H100", "resnet18", 4, 16, table)[0] == pytest.approx(1530)
    packed16 = bench["figures"][1] | {"cells_per_gpu": 16, "images_per_second": 3000.0}
    newer = {**bench, "gpu": "H200", "date": "2027-01-01", "figures": [packed16]}
    path2 = tmp_path / "h200.json"
    path2.write_text(json.dumps(newer))
    assert cost.throughput("H200", "resnet18", 4, 16, cost.throughput_table([path, path2]))[0] == 3000.0


def test_bad_benchmark_file_names_itself(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"gpu": "H100", "date": "today", "source": "x", "figures": []}))
    with pytest.raises(cost.CostError, match=r"broken.json: not a throughput file"):
        cost.load_throughput(path)


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("Tesla T4", "T4"), ("NVIDIA A10G", "A10G"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"), ("NVIDIA A100-SXM4-40GB", "A100"), ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA H200", "H200"),
    ("Other GPU", "Other GPU"),
])
def test_gpu_key(name, key):
    assert cost.gpu_key(name) == key


def test_every_priced_gpu_has_a_sourced_estimate():
    for price in cost.PRICES.values():
        ips, source = cost.throughput(price.gpu, "resnet18", 4, 1)
        assert ips > 0 and source


def test_refresh_prices_without_credentials_keeps_the_table(monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    prices, notes = cost.refresh_prices(["g5.xlarge"])
    assert prices == cost.PRICES and notes == ["no AWS credentials; using the price table of 2026-06"]


def test_refresh_prices_offline_falls_back_quickly(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.perf_counter()
    prices, notes = cost.refresh_prices(["g5.xlarge"], timeout_s=1.0)
    assert time.perf_counter() - start < 10
    assert prices == cost.PRICES and notes[0].startswith("price refresh failed (") and "2026-06" in notes[0]


def test_parse_on_demand_reads_a_price_list_entry():
    item = {"product": {"attributes": {"instanceType": "g5.xlarge"}},
            "terms": {"OnDemand": {"T1": {"priceDimensions": {
                "D1": {"unit": "Hrs", "pricePerUnit": {"USD": "1.0060000000"}}}}}}}
    assert cost.parse_on_demand(json.dumps(item)) == [1.006]
