"""The GPU benchmark on CPU (gpu_check.sh --smoke): every strategy measured, a file the cost model reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.cost import prices, throughput

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_throughput.py"


def figure(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in the output:\n{text}"
    return float(match.group(1))


def test_without_a_gpu_the_full_run_says_what_to_do():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "use --smoke on CPU" in done.stdout and "Traceback" not in done.stderr


def load_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_figures_and_grid_projection_from_gpu_like_results(tmp_path):
    # What a GPU run's workers report, made up: solo cells at ~13 ms a step, a pack of 4 at 4x.
    bench = load_benchmark()

    def result(model: str, batch: int, seconds: float) -> dict:
        return {"base_model": model, "batch_size": batch, "images": 100.0 * batch, "start": 10.0, "end": 10 + seconds}

    baseline = [result("resnet18", 4, 1.3), result("resnet34", 2, 1.9)]
    pack = [result("resnet18", 4, 1.3), result("resnet34", 2, 1.9)] * 2
    assert bench.aggregate(baseline, concurrent=False) == pytest.approx(600 / 3.2)
    assert bench.aggregate(pack, concurrent=True) == pytest.approx(1200 / 1.9)
    rows = bench.figures(baseline, {4: pack}, "processes")
    assert [(r["base_model"], r["batch_size"], r["cells_per_gpu"]) for r in rows] == [
        ("resnet18", 4, 1), ("resnet34", 2, 1), ("resnet18", 4, 4), ("resnet34", 2, 4)
    ]  # fmt: skip
    assert rows[2]["images_per_second"] == pytest.approx(4 * 400 / 1.3)  # the kind's per-cell rate x 4

    grid = bench.project_grid(rows, "H100", 4)
    assert grid["cells"] == 1800 and grid["priced_as"] == "p5.48xlarge"
    assert grid["packed"]["gpu_hours"] < grid["solo"]["gpu_hours"]
    assert grid["packed"]["usd_on_demand"] == pytest.approx(grid["packed"]["gpu_hours"] * 55.04 / 8)
    assert 0.2 < grid["floor_gpu_hours"] < 0.5  # ~1240 PFLOP at 989 TFLOP/s (dense bf16 peak of an H100/H200) is ~0.35 h

    path = bench.write_out(f"{tmp_path}/", "H100", "NVIDIA H100 80GB HBM3", "test", rows)
    assert path.name.startswith("H100-") and len(throughput.load_throughput(path)) == 4


GPU_CHECK = SCRIPT.parent / "gpu_check.sh"


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_strategy_prints_every_figure_and_keeps_its_files(tmp_path):
    # What a GPU machine runs in one call (benchmarks/gpu_check.sh), here at CPU sizes: the
    # benchmark's baseline, packs as processes and as threads, and fused packs.
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(GPU_CHECK), "--smoke", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"== tests: exit (0|5) ", out) and "== benchmark: exit 0" in out  # 5: no CUDA, nothing ran
    logs = list(tmp_path.glob("gpu-check-*.log"))
    assert len(logs) == 1 and "== done in" in logs[0].read_text()

    # The printed figures: images/s, their ratio, MFU, the grid's projected GPU-hours and dollars.
    base = figure(r"baseline images/s ([\d.]+)", out)
    packed = figure(r"packed images/s\s+([\d.]+)", out)
    assert base > 0 and packed > 0
    assert figure(r"ratio packed/baseline ([\d.]+)x", out) == pytest.approx(packed / base, rel=0.01)
    assert re.search(r"^  processes\s+[\d.]+ images/s", out, re.M) and re.search(r"^  threads\s+[\d.]+ images/s", out, re.M)
    assert "MFU n/a" in out  # no peak FLOP/s for a CPU
    solo_h = figure(r"\(1800 cells\) solo\s+\(1 per GPU\): ([\d.]+) GPU-hours", out)
    packed_h = figure(r"\(1800 cells\) packed \(2 per GPU\): ([\d.]+) GPU-hours", out)
    assert solo_h > 0 and packed_h > 0
    assert figure(r"solo .* \$([\d.]+) on-demand", out) == pytest.approx(
        solo_h * prices.hourly_price("p5.48xlarge"), rel=0.01)  # fmt: skip
    assert "fused K=2 resnet18 batch 4: " in out and "fused packs (images/s" in out

    # The throughput file: both base models solo, packed 2 at a time (the best strategy) and fused.
    files = list(tmp_path.glob("cpu-*.json"))
    assert len(files) == 1
    doc = json.loads(files[0].read_text())
    assert doc["gpu"] == "cpu" and re.fullmatch(r"\d{4}-\d{2}-\d{2}", doc["date"])
    figures = doc["figures"]
    by = {}
    for f in figures:
        by.setdefault(f["strategy"], set()).add((f["base_model"], f["batch_size"], f["cells_per_gpu"]))
    (best,) = set(by) - {"solo", "fused"}  # the packed figures: of the faster strategy alone
    assert best in ("processes", "threads")
    assert by == {"solo": {("resnet18", 4, 1), ("resnet34", 2, 1)}, best: {("resnet18", 4, 2), ("resnet34", 2, 2)},
                  "fused": {("resnet18", 4, 2), ("resnet34", 2, 2)}}  # fmt: skip
    fused = [f for f in figures if f["strategy"] == "fused"]
    assert all(f["images_per_second"] > 0 and f["peak_memory_gib"] is None for f in fused)  # no GPU memory on a CPU
    figs = throughput.load_throughput(files[0])  # as the cost model reads it
    assert len(figs) == len(figures) and all(f.images_per_second > 0 and f.gpu == "cpu" for f in figs)


def test_fused_figures_and_their_grid_projection_from_gpu_like_results(tmp_path):
    # What the fused worker reports, made up: K cells of a kind at 20 steps, faster per image as K grows.
    bench = load_benchmark()
    fused = bench.fused_bench

    def result(model: str, batch: int, k: int, seconds: float) -> dict:
        return {"base_model": model, "batch_size": batch, "cells": k, "images": 20.0 * k * batch, "start": 1.0,
                "end": 1.0 + seconds, "peak_memory_gib": 0.5 * k, "graphed": True}  # fmt: skip

    results = [result(m, b, k, 0.2 + 0.01 * k) for k in (8, 16) for m, b in (("resnet18", 4), ("resnet34", 2))]
    results.append({"base_model": "resnet18", "batch_size": 4, "cells": 32, "error": "out of memory"})
    rows = fused.fused_figures(results, steps=20)
    assert [(r["base_model"], r["cells_per_gpu"], r["strategy"]) for r in rows] == [
        ("resnet18", 8, "fused"), ("resnet34", 8, "fused"), ("resnet18", 16, "fused"), ("resnet34", 16, "fused")
    ]  # fmt: skip
    assert rows[2]["images_per_second"] == pytest.approx(20 * 16 * 4 / 0.36) and rows[2]["peak_memory_gib"] == 8.0
    solo = [{"base_model": m, "batch_size": b, "cells_per_gpu": 1, "images_per_second": 900.0, "strategy": "solo"}
            for m, b in (("resnet18", 4), ("resnet34", 2))]  # fmt: skip
    lines: list[str] = []
    best = fused.report_fused(results, rows, solo, "H200", 989.0, throughput.GFLOP_PER_IMAGE, None, lines.append)
    assert best["cells_per_gpu"] == 16 and best["gpu_hours"] > 0  # the faster of the two pack sizes
    assert any("K=32: out of memory" in line for line in lines)
    assert any(line.startswith("grid benson2025 (1800 cells) fused K=16:") for line in lines)

    path = bench.write_out(f"{tmp_path}/", "H200", "NVIDIA H200", "test", solo + rows)
    doc = json.loads(path.read_text())
    assert {f["strategy"] for f in doc["figures"]} == {"solo", "fused"} and len(throughput.load_throughput(path)) == 6
