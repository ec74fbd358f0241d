"""Training images/s on one GPU: one cell at a time (eager fp32) against the packed trainer.

    python benchmarks/gpu_throughput.py --out benchmarks/throughput/    # one H200: 158 s (2026-11-27)
    python benchmarks/gpu_throughput.py --smoke --out /tmp/bench.json   # CPU, tiny cohort: ~45 s (the tests)
    python benchmarks/gpu_throughput.py --strategies processes,processes-graphs,threads,hybrid  # ~4.5 min

The device machine has PyTorch but no pydantic: carry its wheels (see README "Packing").

Cells are at the published sizes: the full synthetic cohort (181 subjects, 14 channels,
128x256), batch sizes 2/4/6 and both base models, taken in turn from MIX. Every cell
runs the same number of optimizer steps (a launch-bound step costs about the same at any
batch, so the cells of a pack finish together), after untimed warm-up steps; there is no
host sync inside the timed loop, one at its end.

(a) Baseline: one worker process runs the cells one after another with a plain eager
    fp32 loop (no autocast, default memory format, unfused Adam). The same process then
    times each kind alone with the trainer's step under CUDA graphs ("solo graphs"): the
    difference between the two is what kernel launches cost a lone cell.
(b) Packed: the trainer's step (autolabel/step.py: bf16 autocast, channels_last, fused
    Adam, CUDA graphs unless the strategy is eager) for every cell of a pack at once, as
    ``python -m autolabel.train CELL ... --workers W --threads T`` runs them. Strategies:
      processes         one process per cell, eager steps (W = k, T = 1)
      processes-graphs  one process per cell, CUDA graphs (W = k, T = 1)
      threads           one process, a thread and CUDA stream per cell, CUDA graphs (W = 1, T = k)
      hybrid            4 cells per process in threads, CUDA graphs (W = k/4, T = 4)
    The default is ``threads``, the trainer's own way on CUDA; all four took 257 s on an H200.
    Every cell waits at a barrier after its warm-up (and capture); aggregate images/s =
    all images / (last end - first start). The best strategy at k = --cells is then
    measured at smaller packs while the time budget allows (the cost model interpolates).

The file's figures: each kind's solo images/s (cells_per_gpu 1: the trainer's step alone
under CUDA graphs; on CPU the baseline), and per pack size k each kind's mean per-cell
images/s in the mixed pack times k (what a pack of k such cells would reach if they shared
the GPU as in the mix; the note says so), for the best strategy.

Printed: images/s of both, their ratio, MFU (GFLOP per image fwd+bwd from flows.cost.throughput,
peak from flows.cost.throughput.GPU_PEAK_TFLOPS by device name), and the projected GPU-hours and
dollars of the 1800-cell benson2025 grid with flows.cost.estimate and only this run's figures.
``--out`` writes the throughput file that flows/cost/throughput.py reads (a folder: <gpu>-<date>.json).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import queue
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flows.cost import estimate as cost  # noqa: E402  (pure: no torch)

from flows.cost import prices

from flows.cost import throughput

# (base model, batch size) of cell i is MIX[i % 6]: both models early, so small runs cover both.
MIX = [("resnet18", 4), ("resnet34", 2), ("resnet18", 6), ("resnet34", 4), ("resnet18", 2), ("resnet34", 6)]
FULL = {"subjects": 181, "rows": 128, "cols": 256}
SMOKE = {"subjects": 12, "rows": 32, "cols": 64}
GRID_SPEC = ROOT / "grid-search" / "benson2025.yaml"
# The instance whose per-GPU price projects the dollars of each GPU (flows.cost.prices.PRICES).
PRICED_AS = {"H100": "p5.48xlarge", "H200": "p5.48xlarge", "A100": "p4d.24xlarge", "A10G": "g5.xlarge",
             "L4": "g6.xlarge", "L40S": "g6e.xlarge", "T4": "g4dn.xlarge", "V100": "p3.2xlarge"}  # fmt: skip
# strategy -> (step mode, cells per process; None: all of the pack's cells in one process)
STRATEGIES = {"processes": ("trainer", 1), "processes-graphs": ("graphs", 1), "threads": ("graphs", None),
              "hybrid": ("graphs", 4)}  # fmt: skip
HOW = {"processes": "one process per cell, eager steps (bf16 autocast, channels_last, fused Adam)",
       "processes-graphs": "one process per cell, steps replayed from CUDA graphs",
       "threads": "one process, a thread and CUDA stream per cell, steps replayed from CUDA graphs",
       "hybrid": "4 cells per process in threads on CUDA streams, steps replayed from CUDA graphs"}  # fmt: skip
WORKER_TIMEOUT_S = 150  # a pack whose workers have not all reported by then counts them as failed
BASELINE_S_PER_CELL = 30  # the baseline's allowance per cell on top of WORKER_TIMEOUT_S


def say(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- in the workers


def build_cell(base_model: str, batch_size: int, dataset: dict, device_name: str, mode: str, control):
    """One cell's step: the trainer's own set-up and step, or the plain fp32 one (``eager``).

    ``control`` is the worker's autolabel.control.RunControl: its init lock and shared data.
    """
    import torch

    from autolabel.loop import new_model, new_optimizer
    from autolabel.model import build_model
    from autolabel.options import CellOptions, Round
    from autolabel.state import configure_device, load_data
    from autolabel.step import TrainStep

    device = torch.device(device_name)
    configure_device(device)
    options = CellOptions(device=device_name, base_model=base_model, batch_size=batch_size,
                          dataset={"kind": "synthetic", **dataset})  # fmt: skip
    data = load_data(options, device, "benchmark", control)
    if mode == "eager":
        with control.init_lock:
            torch.manual_seed(0)
            model = build_model(base_model, len(data.channels), len(data.labels)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
        x, y = data.x_train.contiguous(), data.y_train.contiguous()
        return EagerStep(model, optimizer, x, y)
    model = new_model(options, data, device, 0, control.init_lock)
    optimizer, _ = new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
    return TrainStep(model, optimizer, data.x_train, data.y_train, 0.75, graphs=mode == "graphs", gate=control.gate)


class EagerStep:
    """The baseline: a plain fp32 eager step, no autocast, default memory format, unfused Adam."""

    def __init__(self, model, optimizer, x, y):
        import torch

        self.model, self.optimizer, self.x, self.y = model, optimizer, x, y
        self.sums = torch.zeros(3, device=x.device)

    def __call__(self, idx) -> None:
        from autolabel.losses import combined_loss

        loss, bce, dice = combined_loss(self.model(self.x[idx]), self.y[idx], 0.75)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.sums.add_(loss.detach())


def run_steps(step, batch_size: int, steps: int, seed: int) -> None:
    """``steps`` optimizer steps on random batches, then the only host sync (reading the loss sums)."""
    import torch

    step.model.train()
    g = torch.Generator().manual_seed(seed)
    batches = torch.randint(len(step.x), (steps, batch_size), generator=g).to(step.x.device)
    for idx in batches:
        step(idx)
    step.sums.sum().item()  # waits for the device: the end of the timed work


def measure(kind: tuple[str, int], dataset: dict, device: str, steps: int, warmup: int, mode: str, control,
            barrier=None):  # fmt: skip
    """One cell: build, warm up (and capture), (wait for the pack,) time ``steps`` steps. A result dict."""
    step = build_cell(*kind, dataset, device, mode, control)
    run_steps(step, kind[1], warmup, seed=1)  # cuDNN search, allocator, graph capture
    if barrier is not None:
        with control.gate.idle():  # a pack-mate in this process may still have to capture
            barrier.wait(timeout=WORKER_TIMEOUT_S)
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of this machine
    run_steps(step, kind[1], steps, seed=2)
    end = time.monotonic()
    # Images count at 128x256, as in the cost model; only --smoke uses smaller ones.
    images = steps * kind[1] * dataset["rows"] * dataset["cols"] / throughput.REF_PIXELS
    return {"base_model": kind[0], "batch_size": kind[1], "images": images, "start": start, "end": end}


def baseline_worker(kinds, dataset, device, steps, warmup, results) -> None:
    """Process entry: the cells one at a time, each freed before the next; eager fp32, then solo graphs."""
    from autolabel.control import RunControl

    control = RunControl()
    modes = ["eager"] + (["graphs"] if device == "cuda" else [])
    for mode in modes:
        for i, kind in enumerate(kinds):
            what = "baseline" if mode == "eager" else "solo-graphs"
            try:
                results.put((what, i, measure(kind, dataset, device, steps, warmup, mode, control)))
            except Exception as e:  # noqa: BLE001 - report and go on with the next cell
                results.put((what, i, {"error": f"{type(e).__name__}: {e}"}))
            if device == "cuda":
                import torch

                torch.cuda.empty_cache()


def pack_worker(cells, dataset, device, steps, warmup, mode, barrier, results) -> None:
    """Process entry: ``cells`` [(index, kind)] of a pack, in threads on CUDA streams when several."""
    import threading

    from autolabel.control import RunControl
    control = RunControl(shared_data={})  # as autolabel.pack.train_threaded: one copy of the data per process

    def one(i, kind) -> None:
        try:
            with control.gate.member():  # captures one at a time, the other threads at a safepoint
                if device == "cuda":
                    import torch

                    with torch.cuda.stream(torch.cuda.Stream()):
                        r = measure(kind, dataset, device, steps, warmup, mode, control, barrier)
                else:
                    r = measure(kind, dataset, device, steps, warmup, mode, control, barrier)
            results.put(("packed", i, r))
        except Exception as e:  # noqa: BLE001 - a broken barrier or OOM: reported, the parent decides
            barrier.abort()
            results.put(("packed", i, {"error": f"{type(e).__name__}: {e}"}))

    threads = [threading.Thread(target=one, args=cell) for cell in cells]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# ----------------------------------------------------------------------------- in the parent


def collect(procs: list, results, expected: int, seconds: float) -> dict[tuple[str, int], dict]:
    """``expected`` results {(what, cell): result or error} within ``seconds``, then the workers ended."""
    got: dict[tuple[str, int], dict] = {}
    deadline = time.monotonic() + seconds
    while len(got) < expected and time.monotonic() < deadline:
        try:
            what, i, r = results.get(timeout=1)
            got[what, i] = r
            shown = r.get("error") or f"{r['images'] / (r['end'] - r['start']):.1f} images/s"
            say(f"    {what} cell {i} ({r.get('base_model', '?')} batch {r.get('batch_size', '?')}): {shown}")
        except queue.Empty:
            if not any(p.is_alive() for p in procs) and results.empty():
                break
    grace = time.monotonic() + 10  # for the workers to exit on their own, all together
    for p in procs:
        p.join(timeout=max(0.1, grace - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
    return got


def aggregate(results: list[dict], concurrent: bool) -> float:
    """Images/s: over the shared window for a pack, over the summed cell times one at a time."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return 0.0
    images = sum(r["images"] for r in ok)
    if concurrent:
        return images / (max(r["end"] for r in ok) - min(r["start"] for r in ok))
    return images / sum(r["end"] - r["start"] for r in ok)


def gflop_rate(results: list[dict], ips: float) -> float:
    """GFLOP/s at ``ips`` images/s with this mix of base models."""
    ok = [r for r in results if "error" not in r]
    images = sum(r["images"] for r in ok)
    return ips * sum(r["images"] * throughput.GFLOP_PER_IMAGE[r["base_model"]] for r in ok) / images if images else 0.0


def run_baseline(ctx, kinds, dataset, device, steps, warmup) -> tuple[list[dict], list[dict]]:
    """(eager fp32 results, solo graph results; empty on CPU) of each kind, one at a time."""
    results = ctx.Queue()
    proc = ctx.Process(target=baseline_worker, args=(kinds, dataset, device, steps, warmup, results))
    proc.start()
    expected = len(kinds) * (2 if device == "cuda" else 1)
    got = collect([proc], results, expected, WORKER_TIMEOUT_S + BASELINE_S_PER_CELL * expected)
    eager = [got.get(("baseline", i), {"error": "no result"}) for i in range(len(kinds))]
    graphs = [got[("solo-graphs", i)] for i in range(len(kinds)) if ("solo-graphs", i) in got]
    return eager, graphs


def run_pack(ctx, kinds, dataset, device, steps, warmup, strategy) -> list[dict]:
    """One pack of ``kinds`` cells under ``strategy``; a result (or error) per cell."""
    mode, per_process = STRATEGIES[strategy]
    per_process = per_process or len(kinds)
    results, barrier = ctx.Queue(), ctx.Barrier(len(kinds))
    cells = list(enumerate(kinds))
    groups = [cells[i : i + per_process] for i in range(0, len(cells), per_process)]
    procs = [ctx.Process(target=pack_worker, args=(g, dataset, device, steps, warmup, mode, barrier, results))
             for g in groups]  # fmt: skip
    for p in procs:
        p.start()
    got = collect(procs, results, len(kinds), WORKER_TIMEOUT_S)
    return [got.get(("packed", i), {"error": "no result (worker died)"}) for i in range(len(kinds))]


def figures(solo: list[dict], packs: dict[int, list[dict]], how: str,
            solo_how: str = "eager fp32, one cell at a time") -> list[dict]:  # fmt: skip
    """BenchFigure rows: each kind's solo images/s; per pack size, each kind's mean per-cell images/s x k.

    ``solo`` is what one cell alone runs at: on a GPU the trainer's own step (CUDA graphs),
    which is what a grid with cells_per_gpu 1 would get; on CPU the baseline.
    """
    rows = []
    for r in solo:
        if "error" not in r:
            rows.append({"base_model": r["base_model"], "batch_size": r["batch_size"], "cells_per_gpu": 1,
                         "images_per_second": r["images"] / (r["end"] - r["start"]), "note": solo_how})  # fmt: skip
    for k, results in packs.items():
        ok = [r for r in results if "error" not in r]
        for kind in sorted({(r["base_model"], r["batch_size"]) for r in ok}):
            mine = [r["images"] / (r["end"] - r["start"]) for r in ok if (r["base_model"], r["batch_size"]) == kind]
            note = (f"{k} cells ({how}), mixed pack (this kind's mean per-cell images/s x {k}); "
                    f"{len(ok)}/{k} cells reported; pack total {aggregate(results, True):.1f} img/s")  # fmt: skip
            rows.append({"base_model": kind[0], "batch_size": kind[1], "cells_per_gpu": k,
                         "images_per_second": k * sum(mine) / len(mine), "note": note})  # fmt: skip
    return rows


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


# ----------------------------------------------------------------------------- the run


def benchmark(cells: int, steps: int, warmup: int, smoke: bool, budget_s: float, out: str | None,
              strategies: list[str]) -> int:  # fmt: skip
    """Both measurements, the printed report and the throughput file; the exit code."""
    started = time.monotonic()
    import torch

    from autolabel.datasets.sources import open_dataset
    from autolabel.options import SyntheticDataset

    if not smoke and not torch.cuda.is_available():
        say("no CUDA GPU here: run on a GPU machine, or use --smoke on CPU")
        return 2
    device = "cpu" if smoke else "cuda"
    dataset = SMOKE if smoke else FULL
    device_name = "cpu" if smoke else torch.cuda.get_device_name(0)
    gpu = "cpu" if smoke else throughput.gpu_key(device_name)
    if smoke:
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers: one core each
    kinds = [MIX[i % len(MIX)] for i in range(cells)]
    say(f"device {device_name}; {cells} cells {dataset['rows']}x{dataset['cols']}, {dataset['subjects']} subjects; "
        f"{steps} timed steps after {warmup} warm-up steps per cell; torch {torch.__version__}")  # fmt: skip

    def clock() -> str:
        return f"[{time.monotonic() - started:5.1f}s]"

    t = time.monotonic()
    open_dataset(SyntheticDataset(**dataset))  # generated once into the cache, before any worker reads it
    say(f"{clock()} synthetic cohort ready ({time.monotonic() - t:.1f}s)")

    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn gives each worker a clean context
    distinct = sorted(set(kinds), key=kinds.index)
    baseline, solo_graphs = run_baseline(ctx, distinct, dataset, device, steps, warmup)
    base_ips = aggregate(baseline, concurrent=False)
    say(f"{clock()} baseline (eager fp32, one cell at a time): {base_ips:.1f} images/s")
    if solo_graphs:
        say(f"{clock()} solo graphs (the trainer's step, one cell at a time): "
            f"{aggregate(solo_graphs, concurrent=False):.1f} images/s")  # fmt: skip

    tried: dict[str, list[dict]] = {}
    for strategy in strategies:
        results = run_pack(ctx, kinds, dataset, device, steps, warmup, strategy)
        tried[strategy] = results
        errors = [r["error"] for r in results if "error" in r]
        failed = f" ({len(errors)} failed: {errors[0]})" if errors else ""
        say(f"{clock()} {strategy} ({cells} cells): {aggregate(results, True):.1f} images/s{failed}")
    complete = {s: r for s, r in tried.items() if all("error" not in x for x in r)}
    best = max(complete or tried, key=lambda s: aggregate(tried[s], True))
    packs: dict[int, list[dict]] = {cells: tried[best]}
    last = 0.0  # seconds the previous pack took, start-up included: a smaller one takes less
    for k in [k for k in (8, 4) if k < cells and not smoke]:
        elapsed = time.monotonic() - started
        if elapsed + last > budget_s:
            say(f"{clock()} skipping the {k}-cell pack: the {budget_s:.0f}s budget would be exceeded")
            continue
        packs[k] = run_pack(ctx, kinds[:k], dataset, device, steps, warmup, best)
        last = time.monotonic() - started - elapsed
        say(f"{clock()} {best} ({k} cells): {aggregate(packs[k], True):.1f} images/s")
    return report(baseline, base_ips, solo_graphs, tried, best, packs, gpu, device_name, steps, out, started)


def report(baseline, base_ips, solo_graphs, tried, best, packs, gpu, device_name, steps, out, started) -> int:
    """The summary lines, the grid projection and the throughput file."""
    import torch

    cells = max(packs)
    full = packs[cells]
    packed_ips = aggregate(full, concurrent=True)
    if not base_ips or not packed_ips:
        say("FAILED: no throughput measured (see the errors above)")
        return 1
    peak = throughput.GPU_PEAK_TFLOPS.get(gpu, (None,))[0]

    def mfu(results, ips):
        return f"{gflop_rate(results, ips) / (peak * 1e3):.1%}" if peak else "n/a (no peak for this device)"

    solo_how = "the trainer's step (CUDA graphs), one cell at a time" if solo_graphs else None
    rows = figures(solo_graphs or baseline, packs, HOW[best], *([solo_how] if solo_how else []))
    say("")
    say(f"baseline images/s {base_ips:.5g}  MFU {mfu(baseline, base_ips)}  (eager fp32, one cell at a time)")
    if solo_graphs:
        ips = aggregate(solo_graphs, concurrent=False)
        say(f"solo graphs images/s {ips:.5g}  MFU {mfu(solo_graphs, ips)}  (trainer's step, one cell at a time)")
    for strategy, results in tried.items():
        ips = aggregate(results, concurrent=True)
        say(f"  {strategy:17} {ips:9.1f} images/s  MFU {mfu(results, ips)}  {ips / base_ips:5.2f}x")
    say(f"packed images/s   {packed_ips:.5g}  MFU {mfu(full, packed_ips)}  ({cells} cells; {best}: {HOW[best]})")
    say(f"ratio packed/baseline {packed_ips / base_ips:.2f}x (goal >= 6x)")
    grid = project_grid(rows, gpu, cells)
    for name in ("solo", "packed"):
        g = grid[name]
        say(f"grid benson2025 ({grid['cells']} cells) {name:6} ({g['cells_per_gpu']} per GPU): "
            f"{g['gpu_hours']:.2f} GPU-hours, ${g['usd_on_demand']:.2f} on-demand, ${g['usd_spot']:.2f} spot "
            f"(priced as {grid['priced_as']})")  # fmt: skip
    if grid["floor_gpu_hours"] is not None:
        say(f"grid floor at {gpu} peak: {grid['floor_gpu_hours']:.2f} GPU-hours (goal <= 2 GPU-hours packed)")
    if out:
        source = f"benchmarks/gpu_throughput.py, torch {torch.__version__}, {steps} steps per cell, strategy {best}"
        say(f"wrote {write_out(out, gpu, device_name, source, rows)}")
    say(f"total {time.monotonic() - started:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, help="cells in the big pack (default 16; --smoke 2)")
    parser.add_argument("--steps", type=int, help="timed steps per cell (default 150; --smoke 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps per cell first (default 15; --smoke 2)")
    parser.add_argument("--budget-s", type=float, default=170.0, help="start no smaller pack past this (s)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny cohort, few steps: seconds")
    parser.add_argument("--strategies", help=f"comma-separated, of {', '.join(STRATEGIES)} (default: threads, "
                                             "the trainer's; --smoke: processes,threads)")  # fmt: skip
    parser.add_argument("--out", help="throughput JSON to write: a file, or a folder for <gpu>-<date>.json")
    args = parser.parse_args(argv)
    cells = args.cells or (2 if args.smoke else 16)
    steps = args.steps or (3 if args.smoke else 150)
    warmup = args.warmup if args.warmup is not None else (2 if args.smoke else 15)
    if min(cells, steps) < 1 or warmup < 0:
        parser.error("--cells and --steps must be at least 1, --warmup at least 0")
    strategies = (args.strategies or ("processes,threads" if args.smoke else "threads")).split(",")
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}")
    return benchmark(cells, steps, warmup, args.smoke, args.budget_s, args.out, strategies)


if __name__ == "__main__":
    sys.exit(main())
