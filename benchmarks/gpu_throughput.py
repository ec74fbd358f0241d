"""Training images/s on one GPU: one cell at a time (eager fp32) against the packed trainer's workers.

    python benchmarks/gpu_throughput.py --out benchmarks/throughput/    # one H100/H200: ~2-3 minutes
    python benchmarks/gpu_throughput.py --smoke --out /tmp/bench.json   # CPU, tiny cohort: ~25 s (the tests)
    python benchmarks/gpu_throughput.py --graphs --cells 8              # packed workers under CUDA graphs

The device machine has PyTorch but no pydantic: carry its wheels (see README "Packing").

Cells are at the published sizes: the full synthetic cohort (181 subjects, 14 channels,
128x256), batch sizes 2/4/6 and both base models, taken in turn from MIX. Every cell
runs the same number of optimizer steps (a launch-bound step costs about the same at any
batch, so the cells of a pack finish together), after untimed warm-up steps; there is no
host sync inside the timed loop, one at its end.

(a) Baseline: one worker process runs the cells one after another with a plain eager
    fp32 loop (no autocast, default memory format, unfused Adam).
(b) Packed: k worker processes, one cell each, start together (a barrier) and run
    autolabel.train.train_step, the trainer's own step (bf16 autocast and channels_last
    on CUDA, fused Adam), as ``python -m autolabel.train CELL ... --workers k`` does.
    Aggregate images/s = all images / (last end - first start). k = --cells first, then
    smaller packs while the time budget allows (the cost model interpolates this curve).
    ``--graphs`` puts each packed worker's model under torch.compile(mode="reduce-overhead").

The file's figures: each kind's solo images/s (cells_per_gpu 1), and per pack size k each
kind's mean per-cell images/s in the mixed pack times k (what a pack of k such cells would
reach if they shared the GPU as in the mix; the note says so).

Printed: images/s of both, their ratio, MFU (GFLOP per image fwd+bwd from flows.cost,
peak from flows.cost.GPU_PEAK_TFLOPS by device name), and the projected GPU-hours and
dollars of the 1800-cell benson2025 grid with flows.cost and only this run's figures.
``--out`` writes the throughput file that flows/cost.py reads (a folder: <gpu>-<date>.json).
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

from flows import cost  # noqa: E402  (pure: no torch)

# (base model, batch size) of cell i is MIX[i % 6]: both models early, so small runs cover both.
MIX = [("resnet18", 4), ("resnet34", 2), ("resnet18", 6), ("resnet34", 4), ("resnet18", 2), ("resnet34", 6)]
FULL = {"subjects": 181, "rows": 128, "cols": 256}
SMOKE = {"subjects": 12, "rows": 32, "cols": 64}
GRID_SPEC = ROOT / "grid-search" / "benson2025.yaml"
# The instance whose per-GPU price projects the dollars of each GPU (flows.cost.PRICES).
PRICED_AS = {"H100": "p5.48xlarge", "H200": "p5.48xlarge", "A100": "p4d.24xlarge", "A10G": "g5.xlarge",
             "L4": "g6.xlarge", "L40S": "g6e.xlarge", "T4": "g4dn.xlarge", "V100": "p3.2xlarge"}  # fmt: skip
HOW = {"trainer": "the trainer's step: bf16 autocast, channels_last, fused Adam on CUDA",
       "graphs": "the trainer's step, model under torch.compile(mode='reduce-overhead')"}
WORKER_TIMEOUT_S = 120  # a pack whose workers have not all reported by then counts them as failed
GRAPHS_TIMEOUT_FACTOR = 2  # compiling 16 models at once on 16 cores takes a while
BASELINE_S_PER_CELL = 30  # the baseline's allowance per cell on top of WORKER_TIMEOUT_S


def say(line: str) -> None:
    print(line, flush=True)


# ----------------------------------------------------------------------------- in the workers


def build_cell(base_model: str, batch_size: int, dataset: dict, device_name: str, mode: str):
    """(model, optimizer, data) of one cell: the trainer's own set-up, or the plain fp32 one (``eager``)."""
    import torch

    from autolabel import train
    from autolabel.model import build_model
    from autolabel.options import CellOptions, Round

    device = torch.device(device_name)
    train.configure_device(device)
    options = CellOptions(device=device_name, base_model=base_model, batch_size=batch_size,
                          dataset={"kind": "synthetic", **dataset})  # fmt: skip
    data = train.load_data(options, device, "benchmark")
    if mode != "eager":
        model = train.new_model(options, data, device, repeat=0)
        optimizer, _ = train.new_optimizer(model, Round(lr=0.003, bce_weight=0.75, num_epochs=1))
        if mode == "graphs":  # CUDA graphs replay the whole forward and backward with one launch each
            model = torch.compile(model, mode="reduce-overhead")
    else:
        torch.manual_seed(0)
        model = build_model(base_model, len(data.channels), len(data.labels)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.003)
        data.x_train, data.y_train = data.x_train.contiguous(), data.y_train.contiguous()
    return model, optimizer, data


def run_steps(model, optimizer, data, batch_size: int, steps: int, mode: str, seed: int) -> float:
    """``steps`` optimizer steps on random batches; returns the summed loss (the only host sync)."""
    import torch

    from autolabel import train
    from autolabel.losses import combined_loss

    model.train()
    g = torch.Generator().manual_seed(seed)
    batches = torch.randint(len(data.x_train), (steps, batch_size), generator=g).to(data.x_train.device)
    total = torch.zeros((), device=data.x_train.device)
    for idx in batches:
        x, y = data.x_train[idx], data.y_train[idx]
        if mode == "graphs":
            torch.compiler.cudagraph_mark_step_begin()  # the previous step's graph outputs are dead
        if mode != "eager":
            total += train.train_step(model, optimizer, x, y, 0.75)[2]
        else:  # plain eager fp32
            loss, _, _ = combined_loss(model(x), y, 0.75)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach()
    return float(total)  # waits for the device: the end of the timed work


def measure(kind: tuple[str, int], dataset: dict, device: str, steps: int, warmup: int, mode: str, barrier=None):
    """One cell: build, warm up, (wait for the pack,) time ``steps`` steps. A result dict."""
    model, optimizer, data = build_cell(*kind, dataset, device, mode)
    run_steps(model, optimizer, data, kind[1], warmup, mode, seed=1)  # cuDNN search, allocator, compile
    if barrier is not None:
        barrier.wait(timeout=WORKER_TIMEOUT_S * (GRAPHS_TIMEOUT_FACTOR if mode == "graphs" else 1))
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of this machine
    loss = run_steps(model, optimizer, data, kind[1], steps, mode, seed=2)
    end = time.monotonic()
    # Images count at 128x256, as in the cost model; only --smoke uses smaller ones.
    images = steps * kind[1] * dataset["rows"] * dataset["cols"] / cost.REF_PIXELS
    return {"base_model": kind[0], "batch_size": kind[1], "images": images, "start": start, "end": end,
            "finite": loss == loss and abs(loss) != float("inf")}  # fmt: skip


def baseline_worker(kinds, dataset, device, steps, warmup, results) -> None:
    """Process entry: the cells one at a time, each freed before the next."""
    for i, kind in enumerate(kinds):
        try:
            results.put(("baseline", i, measure(kind, dataset, device, steps, warmup, "eager")))
        except Exception as e:  # noqa: BLE001 - report and go on with the next cell
            results.put(("baseline", i, {"error": f"{type(e).__name__}: {e}"}))
        if device == "cuda":
            import torch

            torch.cuda.empty_cache()


def packed_worker(i, kind, dataset, device, steps, warmup, mode, barrier, results) -> None:
    """Process entry: one cell of a pack; waits for its pack-mates before timing."""
    try:
        results.put(("packed", i, measure(kind, dataset, device, steps, warmup, mode, barrier)))
    except Exception as e:  # noqa: BLE001 - a broken barrier or OOM: reported, the parent decides
        barrier.abort()
        results.put(("packed", i, {"error": f"{type(e).__name__}: {e}"}))


# ----------------------------------------------------------------------------- in the parent


def collect(procs: list, results, expected: int, seconds: float) -> list[dict]:
    """Results of ``expected`` cells (errors included) within ``seconds``, then the workers ended."""
    got: dict[int, dict] = {}
    deadline = time.monotonic() + seconds
    while len(got) < expected and time.monotonic() < deadline:
        try:
            what, i, r = results.get(timeout=1)
            got[i] = r
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
    return [got.get(i, {"error": "no result (worker died)"}) for i in range(expected)]


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
    return ips * sum(r["images"] * cost.GFLOP_PER_IMAGE[r["base_model"]] for r in ok) / images if images else 0.0


def run_baseline(ctx, kinds, dataset, device, steps, warmup) -> list[dict]:
    results = ctx.Queue()
    proc = ctx.Process(target=baseline_worker, args=(kinds, dataset, device, steps, warmup, results))
    proc.start()
    return collect([proc], results, len(kinds), WORKER_TIMEOUT_S + BASELINE_S_PER_CELL * len(kinds))


def run_pack(ctx, kinds, dataset, device, steps, warmup, mode) -> list[dict]:
    results, barrier = ctx.Queue(), ctx.Barrier(len(kinds))
    procs = [ctx.Process(target=packed_worker, args=(i, k, dataset, device, steps, warmup, mode, barrier, results))
             for i, k in enumerate(kinds)]  # fmt: skip
    for p in procs:
        p.start()
    return collect(procs, results, len(kinds), WORKER_TIMEOUT_S * (GRAPHS_TIMEOUT_FACTOR if mode == "graphs" else 1))


def figures(baseline: list[dict], packs: dict[int, list[dict]], how: str) -> list[dict]:
    """BenchFigure rows: each kind's solo images/s; per pack size, each kind's mean per-cell images/s x k."""
    rows = []
    for r in baseline:
        if "error" not in r:
            rows.append({"base_model": r["base_model"], "batch_size": r["batch_size"], "cells_per_gpu": 1,
                         "images_per_second": r["images"] / (r["end"] - r["start"]),
                         "note": "eager fp32, one cell at a time"})  # fmt: skip
    for k, results in packs.items():
        ok = [r for r in results if "error" not in r]
        for kind in sorted({(r["base_model"], r["batch_size"]) for r in ok}):
            mine = [r["images"] / (r["end"] - r["start"]) for r in ok if (r["base_model"], r["batch_size"]) == kind]
            note = (f"{k} worker processes ({how}), mixed pack (this kind's mean per-cell images/s x {k}); "
                    f"{len(ok)}/{k} cells reported; pack total {aggregate(results, True):.1f} img/s")  # fmt: skip
            rows.append({"base_model": kind[0], "batch_size": kind[1], "cells_per_gpu": k,
                         "images_per_second": k * sum(mine) / len(mine), "note": note})  # fmt: skip
    return rows


def project_grid(rows: list[dict], gpu: str, k: int) -> dict:
    """GPU-hours and dollars of the benson2025 grid, solo and packed by k, from these figures only."""
    from flows.cells import expand
    from flows.spec import load_spec

    cells = expand(load_spec(GRID_SPEC))
    table = cost.Table(tuple(cost.Figure(gpu, r["base_model"], r["batch_size"], r["cells_per_gpu"],
                                         r["images_per_second"], "this run", "") for r in rows))  # fmt: skip
    instance = PRICED_AS.get(gpu, "p5.48xlarge")
    price = cost.price_of(instance)
    out = {"cells": len(cells), "priced_as": instance}
    for name, per_gpu in (("solo", 1), ("packed", k)):
        seconds = sum(cost.train_seconds(cost.work_of(c), gpu, per_gpu, table) for c in cells)
        hours = (seconds + cost.TASK_START_S * len(cells) / per_gpu) / 3600
        out[name] = {"cells_per_gpu": per_gpu, "gpu_hours": hours, "usd_on_demand": hours * price.per_gpu(False),
                     "usd_spot": hours * price.per_gpu(True)}  # fmt: skip
    out["floor_gpu_hours"] = None
    if gpu in cost.GPU_PEAK_TFLOPS:
        pflop = sum(cost.work_of(c).gflop for c in cells) / 1e6
        out["floor_gpu_hours"] = pflop * 1e6 / (cost.GPU_PEAK_TFLOPS[gpu][0] * 1e3) / 3600
    return out


def write_out(out: str, gpu: str, device_name: str, source: str, rows: list[dict]) -> Path:
    """The throughput file (flows.cost.BenchFile); a folder gets ``<gpu>-<date>.json``."""
    day = dt.date.today().isoformat()
    path = Path(out)
    if out.endswith("/") or path.is_dir():
        path = path / f"{gpu.replace(' ', '_')}-{day}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"gpu": gpu, "device": device_name, "date": day, "source": source, "figures": rows}
    cost.BenchFile.model_validate(doc)  # the cost model must be able to read what we write
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# ----------------------------------------------------------------------------- the run


def benchmark(cells: int, steps: int, warmup: int, smoke: bool, budget_s: float, out: str | None, graphs: bool) -> int:
    """Both measurements, the printed report and the throughput file; the exit code."""
    started = time.monotonic()
    import torch

    from autolabel.data import open_dataset
    from autolabel.options import SyntheticDataset

    if not smoke and not torch.cuda.is_available():
        say("no CUDA GPU here: run on a GPU machine, or use --smoke on CPU")
        return 2
    device = "cpu" if smoke else "cuda"
    dataset = SMOKE if smoke else FULL
    device_name = "cpu" if smoke else torch.cuda.get_device_name(0)
    gpu = "cpu" if smoke else cost.gpu_key(device_name)
    if smoke:
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers: one core each
    kinds = [MIX[i % len(MIX)] for i in range(cells)]
    mode = "graphs" if graphs else "trainer"
    say(f"device {device_name}; {cells} cells {dataset['rows']}x{dataset['cols']}, {dataset['subjects']} subjects; "
        f"{steps} timed steps after {warmup} warm-up steps per cell; torch {torch.__version__}")  # fmt: skip

    t = time.monotonic()
    open_dataset(SyntheticDataset(**dataset))  # generated once into the cache, before any worker reads it
    say(f"[{time.monotonic() - started:5.1f}s] synthetic cohort ready ({time.monotonic() - t:.1f}s)")

    ctx = mp.get_context("spawn")  # CUDA cannot be forked; spawn gives each worker a clean context
    distinct = sorted(set(kinds), key=kinds.index)
    baseline = run_baseline(ctx, distinct, dataset, device, steps, warmup)
    base_ips = aggregate(baseline, concurrent=False)
    say(f"[{time.monotonic() - started:5.1f}s] baseline (eager fp32, one cell at a time): {base_ips:.1f} images/s")

    packs: dict[int, list[dict]] = {}
    sizes = [cells] + [k for k in (8, 4) if k < cells and not smoke]
    last = 0.0  # seconds the previous pack took, start-up included: a smaller one takes less
    for k in sizes:
        elapsed = time.monotonic() - started
        if packs and elapsed + last > budget_s:
            say(f"[{elapsed:5.1f}s] skipping the {k}-cell pack: the {budget_s:.0f}s budget would be exceeded")
            continue
        results = run_pack(ctx, kinds[:k], dataset, device, steps, warmup, mode)
        last = time.monotonic() - started - elapsed
        packs[k] = results
        errors = [r["error"] for r in results if "error" in r]
        failed = f" ({len(errors)} failed: {errors[0]})" if errors else ""
        say(f"[{time.monotonic() - started:5.1f}s] packed ({mode}), {k} worker processes: "
            f"{aggregate(results, True):.1f} images/s{failed}")  # fmt: skip

    return report(baseline, base_ips, packs, gpu, device_name, steps, out, started, HOW[mode])


def report(baseline, base_ips, packs, gpu, device_name, steps, out, started, how) -> int:
    """The summary lines, the grid projection and the throughput file."""
    import torch

    # The biggest pack that ran (a bigger one may have failed, out of memory say).
    cells = max((k for k, results in packs.items() if aggregate(results, True)), default=0)
    full = packs.get(cells, [])
    packed_ips = aggregate(full, concurrent=True)
    if not base_ips or not packed_ips:
        say("FAILED: no throughput measured (see the errors above)")
        return 1
    peak = cost.GPU_PEAK_TFLOPS.get(gpu, (None,))[0]

    def mfu(results, ips):
        return f"{gflop_rate(results, ips) / (peak * 1e3):.1%}" if peak else "n/a (no peak for this device)"

    rows = figures(baseline, packs, how)
    say("")
    say(f"baseline images/s {base_ips:.5g}  MFU {mfu(baseline, base_ips)}")
    say(f"packed images/s   {packed_ips:.5g}  MFU {mfu(full, packed_ips)}  ({cells} processes; {how})")
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
        source = f"benchmarks/gpu_throughput.py, torch {torch.__version__}, {steps} steps per cell"
        say(f"wrote {write_out(out, gpu, device_name, source, rows)}")
    say(f"total {time.monotonic() - started:.1f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, help="cells in the big pack (default 16; --smoke 2)")
    parser.add_argument("--steps", type=int, help="timed steps per cell (default 150; --smoke 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps per cell first (default 15; --smoke 1)")
    parser.add_argument("--budget-s", type=float, default=130.0, help="start no smaller pack past this (s)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny cohort, few steps: seconds")
    parser.add_argument("--graphs", action="store_true",
                        help="packed workers use CUDA graphs (torch.compile reduce-overhead; ~20 s compile each)")
    parser.add_argument("--out", help="throughput JSON to write: a file, or a folder for <gpu>-<date>.json")
    args = parser.parse_args(argv)
    cells = args.cells or (2 if args.smoke else 16)
    steps = args.steps or (3 if args.smoke else 150)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 15)
    if min(cells, steps) < 1 or warmup < 0:
        parser.error("--cells and --steps must be at least 1, --warmup at least 0")
    return benchmark(cells, steps, warmup, args.smoke, args.budget_s, args.out, args.graphs)


if __name__ == "__main__":
    sys.exit(main())
