"""What benchmarks/gpu_throughput.py hands on: the throughput file the cost model reads, and the grid it projects.

    from benchmarks.throughput_file import project_grid, write_out
    write_out("benchmarks/throughput/", "H200", "NVIDIA H200", "how", rows)   # -> H200-<date>.json
    project_grid(rows, "H200", 16)   # GPU-hours and dollars of the 1800-cell grid from these rows alone

A row is a flows.cost.throughput.BenchFigure: base_model, batch_size, cells_per_gpu,
images_per_second, note, and two fields the cost model of today ignores (BenchFigure has
extra="ignore"): ``strategy`` (solo, threads, processes, processes-graphs, hybrid, fused) and, for
fused packs, ``peak_memory_gib`` (torch.cuda.max_memory_allocated; null on a CPU).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from flows.cost import estimate as cost  # pure: no torch
from flows.cost import prices, throughput

ROOT = Path(__file__).resolve().parent.parent
GRID_SPEC = ROOT / "grid-search" / "benson2025.yaml"
# The instance whose per-GPU price projects the dollars of each GPU (flows.cost.prices.PRICES).
PRICED_AS = {"H100": "p5.48xlarge", "H200": "p5.48xlarge", "A100": "p4d.24xlarge", "A10G": "g5.xlarge",
             "L4": "g6.xlarge", "L40S": "g6e.xlarge", "T4": "g4dn.xlarge", "V100": "p3.2xlarge"}  # fmt: skip


def project_grid(rows: list[dict], gpu: str, k: int) -> dict:
    """GPU-hours and dollars of the benson2025 grid, solo and packed by k, from these figures only."""
    from flows.spec.cells import expand
    from flows.spec.parse import load_spec

    cells = expand(load_spec(GRID_SPEC))
    table = throughput.Table(tuple(throughput.Figure(gpu, r["base_model"], r["batch_size"], r["cells_per_gpu"],
                                         r["images_per_second"], "this run", "") for r in rows))  # fmt: skip
    instance = PRICED_AS.get(gpu, "p5.48xlarge")
    price = prices.price_of(instance)
    out = {"cells": len(cells), "priced_as": instance}
    for name, per_gpu in (("solo", 1), ("packed", k)):
        seconds = sum(cost.train_seconds(cost.work_of(c), gpu, per_gpu, table) for c in cells)
        hours = (seconds + cost.TASK_START_S * len(cells) / per_gpu) / 3600
        out[name] = {"cells_per_gpu": per_gpu, "gpu_hours": hours, "usd_on_demand": hours * price.per_gpu(False),
                     "usd_spot": hours * price.per_gpu(True)}  # fmt: skip
    out["floor_gpu_hours"] = None
    if gpu in throughput.GPU_PEAK_TFLOPS:
        pflop = sum(cost.work_of(c).gflop for c in cells) / 1e6
        out["floor_gpu_hours"] = pflop * 1e6 / (throughput.GPU_PEAK_TFLOPS[gpu][0] * 1e3) / 3600
    return out


def write_out(out: str, gpu: str, device_name: str, source: str, rows: list[dict]) -> Path:
    """The throughput file (flows.cost.throughput.BenchFile); a folder gets ``<gpu>-<date>.json``."""
    day = dt.date.today().isoformat()
    path = Path(out)
    if out.endswith("/") or path.is_dir():
        path = path / f"{gpu.replace(' ', '_')}-{day}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"gpu": gpu, "device": device_name, "date": day, "source": source, "figures": rows}
    throughput.BenchFile.model_validate(doc)  # the cost model must be able to read what we write
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
