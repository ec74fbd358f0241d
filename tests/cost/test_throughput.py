"""Images/s by GPU, base model, batch and cells per GPU: seeds, benchmark files, interpolation, scaling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cost import prices, throughput

ROOT = Path(__file__).resolve().parents[2]
A10G_PACKED = 1530 * 70 / 989  # H200's 16-process figure scaled by bf16 peak: 108.29 images/s


def test_throughput_curve(seed_throughput):
    # Between measured points (4: 1045, 8: 1060) it interpolates; never beyond k x solo.
    assert throughput.throughput("H200", "resnet18", 4, 6)[0] == pytest.approx(1052.5)
    assert throughput.throughput("H200", "resnet18", 4, 2)[0] == pytest.approx(min(305 + (1045 - 305) / 3, 2 * 305))
    assert throughput.throughput("H200", "resnet18", 4, 64)[0] == 1530  # flat past the last measurement
    # ResNet-34 has no packed measurement: the ResNet-18 curve x 73.0/80.3 FLOPs.
    assert throughput.throughput("H200", "resnet34", 4, 16)[0] == pytest.approx(1530 * 73.0 / 80.3)
    ips, source = throughput.throughput("A10G", "resnet18", 4, 1)
    assert ips == pytest.approx(A10G_PACKED) and "70/989" in source
    assert "measured" in throughput.throughput("H200", "resnet18", 4, 1)[1]


def test_the_committed_h200_file_replaces_its_seeds():
    files = sorted((ROOT / "benchmarks" / "throughput").glob("H200-*.json"))
    assert files, "benchmarks/throughput/ holds the H200 measurement the cost model uses"
    assert throughput.BENCH_DIR == ROOT / "benchmarks" / "throughput", "the folder the cost model reads by default"
    table = throughput.throughput_table(files)
    h200 = [f for f in table.figures if f.gpu == "H200"]
    seeds = {(f.base_model, f.batch_size, f.cells_per_gpu) for f in throughput.seed_figures()}
    assert h200 and all(not f.source.startswith(throughput.SEED_SOURCE) for f in h200)  # no seed left
    assert seeds - {(f.base_model, f.batch_size, f.cells_per_gpu) for f in h200}  # some would have stayed
    assert {f.cells_per_gpu for f in h200} >= {1, 8, 16}
    measured = {(f.base_model, f.batch_size, f.cells_per_gpu): f.images_per_second
                for f in throughput.load_throughput(files[-1])}
    assert throughput.throughput("H200", "resnet34", 6, 16, table)[0] == pytest.approx(measured["resnet34", 6, 16])
    assert throughput.throughput("H200", "resnet18", 4, 1, table)[0] == pytest.approx(measured["resnet18", 4, 1])
    # A GPU with no file keeps being scaled from the nearest measured one.
    assert "estimate" in throughput.throughput("A10G", "resnet18", 4, 16, table)[1]


def test_default_cells_per_gpu_follows_the_table(seed_throughput):
    assert throughput.default_cells_per_gpu("p5.48xlarge") == 16  # H100 ~ H200: packing pays
    assert throughput.default_cells_per_gpu("g5.xlarge") == 1  # an A10G is busy with one cell


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
    assert [f.gpu for f in throughput.load_throughput(path)] == ["A10G", "A10G"]
    table = throughput.throughput_table([path])
    ips, source = throughput.throughput("A10G", "resnet18", 4, 1, table)
    assert ips == 250.0 and source == "benchmarks/gpu_throughput.py: eager"
    assert throughput.throughput("A10G", "resnet18", 4, 4, table)[0] == 600.0
    assert throughput.throughput("A10G", "resnet18", 4, 2, table)[0] == pytest.approx(250 + 350 / 3)
    # ResNet-34 from ResNet-18 by FLOPs; unmeasured GPUs scale from the measured one nearest in peak.
    assert throughput.throughput("A10G", "resnet34", 4, 1, table)[0] == pytest.approx(250 * 73.0 / 80.3)
    assert throughput.throughput("L4", "resnet18", 4, 16, table)[0] == pytest.approx(600 * 121 / 70)
    assert throughput.throughput("H100", "resnet18", 4, 16, table)[0] == pytest.approx(1530)
    packed16 = bench["figures"][1] | {"cells_per_gpu": 16, "images_per_second": 3000.0}
    newer = {**bench, "gpu": "H200", "date": "2027-01-01", "figures": [packed16]}
    path2 = tmp_path / "h200.json"
    path2.write_text(json.dumps(newer))
    assert throughput.throughput("H200", "resnet18", 4, 16, throughput.throughput_table([path, path2]))[0] == 3000.0


def test_bad_benchmark_file_names_itself(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps({"gpu": "H100", "date": "today", "source": "x", "figures": []}))
    with pytest.raises(prices.CostError, match=r"broken.json: not a throughput file"):
        throughput.load_throughput(path)


@pytest.mark.parametrize("name,key", [
    ("NVIDIA H100 80GB HBM3", "H100"), ("Tesla T4", "T4"), ("NVIDIA A10G", "A10G"), ("NVIDIA L40S", "L40S"),
    ("NVIDIA L4", "L4"), ("NVIDIA A100-SXM4-40GB", "A100"), ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA H200", "H200"),
    ("Other GPU", "Other GPU"),
])
def test_gpu_key(name, key):
    assert throughput.gpu_key(name) == key


def test_every_priced_gpu_has_a_sourced_estimate(seed_throughput):
    for price in prices.PRICES.values():
        ips, source = throughput.throughput(price.gpu, "resnet18", 4, 1)
        assert ips > 0 and source


def test_fused_figures_price_fused_packs_only_where_measured_faster(tmp_path, monkeypatch):
    """A benchmark's fused rows never stand in for threads rows; a pack fuses (--fused) only at
    a size a fused figure measured faster, and is priced at that figure."""
    from flows.cost.cap import make_pricing
    from flows.cost.estimate import price_packs
    from tests.conftest import grid_cells

    threads = {"strategy": "threads", "base_model": "resnet18", "batch_size": 4, "images_per_second": 1400.0}
    bench = {"gpu": "NVIDIA H100 80GB HBM3", "date": "2027-01-02", "source": "benchmarks/gpu_throughput.py", "figures": [
        {"base_model": "resnet18", "batch_size": 4, "cells_per_gpu": 1, "images_per_second": 800.0, "strategy": "solo"},
        threads | {"cells_per_gpu": 4}, threads | {"cells_per_gpu": 8},
        {**threads, "strategy": "fused", "cells_per_gpu": 4, "images_per_second": 3000.0, "peak_memory_gib": 9.5},
        {**threads, "strategy": "fused", "cells_per_gpu": 8, "images_per_second": 1000.0, "peak_memory_gib": 18.0},
    ]}
    path = tmp_path / "h100.json"
    path.write_text(json.dumps(bench))
    table = throughput.throughput_table([path])
    monkeypatch.setattr(throughput, "default_table", lambda: table)
    throughput._throughput.cache_clear()
    assert throughput.throughput("H100", "resnet18", 4, 4, table)[0] == 1400.0  # the threads figure stays
    assert throughput.pack_throughput("H100", "resnet18", 4, 4, table)[:1] + \
        throughput.pack_throughput("H100", "resnet18", 4, 4, table)[2:] == (3000.0, True)
    assert throughput.pack_throughput("H100", "resnet18", 4, 8, table)[2] is False  # slower fused: threads
    assert throughput.pack_throughput("H100", "resnet18", 4, 6, table)[2] is False  # never interpolated

    cells = grid_cells({"lr": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]}, batch_size=4)
    packs = {k: price_packs(cells, make_pricing("ecs", "p5.48xlarge", cells_per_gpu=k)) for k in (4, 8)}  # H100s
    assert [p.fused for p in packs[4]] == [True, True] and [p.fused for p in packs[8]] == [False]
    assert packs[4][0].flags(force=False) == ["--fused"] and packs[8][0].flags(force=True) == ["--force"]
    from flows.cost.estimate import TASK_START_S

    fused_s = sum(p.gpu_seconds - TASK_START_S for p in packs[4])
    threads_s = packs[8][0].gpu_seconds - TASK_START_S
    assert fused_s == pytest.approx(threads_s * 1400 / 3000)  # priced at the faster, measured figure
