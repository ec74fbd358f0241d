"""Training images/s on one GPU: one cell at a time (eager fp32) against packed and fused trainers.

    python benchmarks/gpu_throughput.py --out benchmarks/throughput/    # one H200: 158 s (2026-11-27)
    python benchmarks/gpu_throughput.py --smoke --out /tmp/bench.json   # CPU, tiny cohort: ~20 s
    python benchmarks/gpu_throughput.py --strategies processes,processes-graphs,threads,hybrid  # ~4.5 min
    python benchmarks/gpu_throughput.py --strategies threads,fused --out benchmarks/throughput/  # + fused packs
    python benchmarks/gpu_throughput.py --strategies fused --smoke --out /tmp/bench.json        # CPU, fused only

The device machine has PyTorch but no pydantic: carry its wheels (see README "Packing");
benchmarks/gpu_check.sh runs this with the fused equivalence tests in one call (its --smoke: the tests).

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
(c) Fused (``fused`` in --strategies; benchmarks/fused_throughput.py): K cells of one kind as
    one vmapped model, as ``python -m autolabel.train CELL ... --fused`` trains them, at each K
    of --fused-k for both base models and batch sizes 2, 4, 6, within --fused-budget-s.

The file's figures: each kind's solo images/s (cells_per_gpu 1: the trainer's step alone
under CUDA graphs; on CPU the baseline), per pack size k each kind's mean per-cell
images/s in the mixed pack times k (what a pack of k such cells would reach if they shared
the GPU as in the mix; the note says so), for the best strategy, and each fused
configuration's images/s; every figure names its ``strategy`` and fused ones their
``peak_memory_gib`` (benchmarks/throughput_file.py). The file is rewritten after each phase.

Printed: images/s of each, their ratio, MFU (GFLOP per image fwd+bwd from flows.cost.throughput,
peak from flows.cost.throughput.GPU_PEAK_TFLOPS by device name), and the projected GPU-hours and
dollars of the 1800-cell benson2025 grid with flows.cost.estimate and only this run's figures.
``--out`` writes the throughput file that flows/cost/throughput.py reads (a folder: <gpu>-<date>.json).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import queue
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import fused_throughput as fused_bench  # noqa: E402
from benchmarks.pack_workers import WORKER_TIMEOUT_S, baseline_worker, pack_worker  # noqa: E402
from benchmarks.throughput_file import project_grid, write_out  # noqa: E402
from flows.cost import throughput  # noqa: E402  (pure: no torch)

# (base model, batch size) of cell i is MIX[i % 6]: both models early, so small runs cover both.
MIX = [("resnet18", 4), ("resnet34", 2), ("resnet18", 6), ("resnet34", 4), ("resnet18", 2), ("resnet34", 6)]
FULL = {"subjects": 181, "rows": 128, "cols": 256}
SMOKE = {"subjects": 12, "rows": 32, "cols": 64}
# strategy -> (step mode, cells per process; None: all of the pack's cells in one process)
STRATEGIES = {"processes": ("trainer", 1), "processes-graphs": ("graphs", 1), "threads": ("graphs", None),
              "hybrid": ("graphs", 4)}  # fmt: skip
HOW = {"processes": "one process per cell, eager steps (bf16 autocast, channels_last, fused Adam)",
       "processes-graphs": "one process per cell, steps replayed from CUDA graphs",
       "threads": "one process, a thread and CUDA stream per cell, steps replayed from CUDA graphs",
       "hybrid": "4 cells per process in threads on CUDA streams, steps replayed from CUDA graphs"}  # fmt: skip
BASELINE_S_PER_CELL = 30  # the baseline's allowance per cell on top of WORKER_TIMEOUT_S


def say(line: str) -> None:
    print(line, flush=True)


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


def figures(solo: list[dict], packs: dict[int, list[dict]], strategy: str | None,
            solo_how: str = "eager fp32, one cell at a time") -> list[dict]:  # fmt: skip
    """BenchFigure rows: each kind's solo images/s; per pack size, each kind's mean per-cell images/s x k.

    ``solo`` is what one cell alone runs at: on a GPU the trainer's own step (CUDA graphs),
    which is what a grid with cells_per_gpu 1 would get; on CPU the baseline. Each row names
    its ``strategy`` (benchmarks/throughput_file.py): ``solo``, or the packs' ``strategy``.
    """
    rows = []
    for r in solo:
        if "error" not in r:
            rows.append({"base_model": r["base_model"], "batch_size": r["batch_size"], "cells_per_gpu": 1,
                         "images_per_second": r["images"] / (r["end"] - r["start"]), "note": solo_how,
                         "strategy": "solo"})  # fmt: skip
    for k, results in packs.items():
        ok = [r for r in results if "error" not in r]
        for kind in sorted({(r["base_model"], r["batch_size"]) for r in ok}):
            mine = [r["images"] / (r["end"] - r["start"]) for r in ok if (r["base_model"], r["batch_size"]) == kind]
            note = (f"{k} cells ({HOW.get(strategy, strategy)}), mixed pack (this kind's mean per-cell images/s "
                    f"x {k}); {len(ok)}/{k} cells reported; pack total {aggregate(results, True):.1f} img/s")  # fmt: skip
            rows.append({"base_model": kind[0], "batch_size": kind[1], "cells_per_gpu": k,
                         "images_per_second": k * sum(mine) / len(mine), "note": note, "strategy": strategy})  # fmt: skip
    return rows


# ----------------------------------------------------------------------------- the run


def benchmark(cells: int, steps: int, warmup: int, smoke: bool, budget_s: float, out: str | None,
              strategies: list[str], fused_k: tuple[int, ...], fused_steps: int, fused_budget_s: float,
              time_limit_s: float | None = None) -> int:  # fmt: skip
    """The measurements, the printed report and the throughput file (written after each phase); the exit code."""
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

    # CUDA cannot be forked: on a GPU, spawn gives each worker a clean context. On the CPU (--smoke)
    # a forked worker starts with torch already imported, seconds sooner (nothing here has run a
    # torch op or started a thread yet).
    ctx = mp.get_context("spawn" if device == "cuda" else "fork")
    distinct = sorted(set(kinds), key=kinds.index)
    baseline, solo_graphs = run_baseline(ctx, distinct, dataset, device, steps, warmup)
    base_ips = aggregate(baseline, concurrent=False)
    say(f"{clock()} baseline (eager fp32, one cell at a time): {base_ips:.1f} images/s")
    if solo_graphs:
        say(f"{clock()} solo graphs (the trainer's step, one cell at a time): "
            f"{aggregate(solo_graphs, concurrent=False):.1f} images/s")  # fmt: skip
    run = Run(baseline, solo_graphs, out, gpu, device_name, steps, fused_steps, started)

    for strategy in [s for s in strategies if s != "fused"]:
        results = run_pack(ctx, kinds, dataset, device, steps, warmup, strategy)
        run.tried[strategy] = results
        errors = [r["error"] for r in results if "error" in r]
        failed = f" ({len(errors)} failed: {errors[0]})" if errors else ""
        say(f"{clock()} {strategy} ({cells} cells): {aggregate(results, True):.1f} images/s{failed}")
    complete = {s: r for s, r in run.tried.items() if all("error" not in x for x in r)}
    run.best = max(complete or run.tried, key=lambda s: aggregate(run.tried[s], True)) if run.tried else None
    if run.best:
        run.packs[cells] = run.tried[run.best]
    run.save()
    if "fused" in strategies:
        fused_kinds = distinct if smoke else fused_bench.KINDS
        if time_limit_s is not None:  # what is left of the run's limit, less the report and a stuck worker's grace
            left = time_limit_s - (time.monotonic() - started) - REPORT_RESERVE_S - fused_bench.GRACE_S
            fused_budget_s = max(0.0, min(fused_budget_s, left))
        say(f"{clock()} fused packs: K = {', '.join(map(str, fused_k))}, {len(fused_kinds)} kinds, "
            f"{fused_steps} timed steps each, budget {fused_budget_s:.0f}s")  # fmt: skip
        run.fused = fused_bench.run_fused(ctx, fused_kinds, fused_k, dataset, device, fused_steps, FUSED_WARMUP[smoke],
                                          fused_budget_s, throughput.REF_PIXELS, say)  # fmt: skip
        run.save()
    last = 0.0  # seconds the previous pack took, start-up included: a smaller one takes less
    for k in [k for k in (8, 4) if k < cells and not smoke and run.best]:
        elapsed = time.monotonic() - started
        if elapsed + last > budget_s:
            say(f"{clock()} skipping the {k}-cell pack: the {budget_s:.0f}s budget would be exceeded")
            continue
        run.packs[k] = run_pack(ctx, kinds[:k], dataset, device, steps, warmup, run.best)
        last = time.monotonic() - started - elapsed
        say(f"{clock()} {run.best} ({k} cells): {aggregate(run.packs[k], True):.1f} images/s")
    return report(run, base_ips)


class Run:
    """What one benchmark run measured so far, and its throughput file (rewritten after each phase)."""

    def __init__(self, baseline, solo_graphs, out, gpu, device_name, steps, fused_steps, started):
        self.baseline, self.solo_graphs, self.out = baseline, solo_graphs, out
        self.gpu, self.device_name = gpu, device_name
        self.steps, self.fused_steps, self.started = steps, fused_steps, started
        self.tried: dict[str, list[dict]] = {}
        self.best: str | None = None
        self.packs: dict[int, list[dict]] = {}
        self.fused: list[dict] = []

    def solo_rows(self) -> list[dict]:
        how = "the trainer's step (CUDA graphs), one cell at a time" if self.solo_graphs else None
        return figures(self.solo_graphs or self.baseline, {}, None, *([how] if how else []))

    def rows(self) -> list[dict]:
        """The packed figures of the threads-like strategy (the best one)."""
        return figures([], self.packs, self.best)

    def save(self) -> None:
        """The throughput file with every figure so far: a run cut short keeps what it measured."""
        import torch

        figs = self.solo_rows() + self.rows() + fused_bench.fused_figures(self.fused, self.fused_steps)
        if self.out and figs:
            source = (f"benchmarks/gpu_throughput.py, torch {torch.__version__}, {self.steps} steps per cell "
                      f"(fused: {self.fused_steps}), packed strategy {self.best or 'none'}")  # fmt: skip
            path = write_out(self.out, self.gpu, self.device_name, source, figs)
            say(f"[{time.monotonic() - self.started:5.1f}s] wrote {path}")


# Fused warm-up steps: one eager (Adam's state, cuDNN's search), the capture, then replays.
FUSED_WARMUP = {False: 4, True: 1}
REPORT_RESERVE_S = 30  # the report's grid projections, one per pack size, after the measurements


def report(run: Run, base_ips: float) -> int:
    """The summary lines, the grid projections; the exit code (1 when nothing was measured)."""
    gpu = run.gpu
    fused_ok = [r for r in run.fused if "images" in r]
    if not base_ips or not (run.packs and aggregate(run.packs[max(run.packs)], True)) and not fused_ok:
        say("FAILED: no throughput measured (see the errors above)")
        return 1
    peak = throughput.GPU_PEAK_TFLOPS.get(gpu, (None,))[0]

    def mfu(results, ips):
        return f"{gflop_rate(results, ips) / (peak * 1e3):.1%}" if peak else "n/a (no peak for this device)"

    say("")
    say(f"baseline images/s {base_ips:.5g}  MFU {mfu(run.baseline, base_ips)}  (eager fp32, one cell at a time)")
    if run.solo_graphs:
        ips = aggregate(run.solo_graphs, concurrent=False)
        say(f"solo graphs images/s {ips:.5g}  MFU {mfu(run.solo_graphs, ips)}  (trainer's step, one cell at a time)")
    for strategy, results in run.tried.items():
        ips = aggregate(results, concurrent=True)
        say(f"  {strategy:17} {ips:9.1f} images/s  MFU {mfu(results, ips)}  {ips / base_ips:5.2f}x")
    threads_grid = None
    if run.packs:
        cells = max(run.packs)
        packed_ips = aggregate(run.packs[cells], concurrent=True)
        say(f"packed images/s   {packed_ips:.5g}  MFU {mfu(run.packs[cells], packed_ips)}  "
            f"({cells} cells; {run.best}: {HOW[run.best]})")  # fmt: skip
        say(f"ratio packed/baseline {packed_ips / base_ips:.2f}x (goal >= 6x)")
        threads_grid = say_grid(run.solo_rows() + run.rows(), gpu, cells)
    if run.fused:
        fused_bench.report_fused(run.fused, fused_bench.fused_figures(run.fused, run.fused_steps), run.solo_rows(),
                                 gpu, peak, throughput.GFLOP_PER_IMAGE, threads_grid, say)  # fmt: skip
    run.save()
    say(f"total {time.monotonic() - run.started:.1f}s")
    return 0


def say_grid(rows: list[dict], gpu: str, cells: int) -> dict | None:
    """The grid's projection, solo and packed by ``cells``, said; None when it cannot be made here."""
    try:
        grid = project_grid(rows, gpu, cells)
    except Exception as e:  # noqa: BLE001 - the figures stand without it (a machine without PyYAML, say)
        say(f"grid projection unavailable: {type(e).__name__}: {e}")
        return None
    for name in ("solo", "packed"):
        g = grid[name]
        say(f"grid benson2025 ({grid['cells']} cells) {name:6} ({g['cells_per_gpu']} per GPU): "
            f"{g['gpu_hours']:.2f} GPU-hours, ${g['usd_on_demand']:.2f} on-demand, ${g['usd_spot']:.2f} spot "
            f"(priced as {grid['priced_as']})")  # fmt: skip
    if grid["floor_gpu_hours"] is not None:
        say(f"grid floor at {gpu} peak: {grid['floor_gpu_hours']:.2f} GPU-hours (goal <= 2 GPU-hours packed)")
    return grid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, help="cells in the big pack (default 16; --smoke 2)")
    parser.add_argument("--steps", type=int, help="timed steps per cell (default 150; --smoke 2)")
    parser.add_argument("--warmup", type=int, help="untimed steps per cell first (default 15; --smoke 1)")
    parser.add_argument("--budget-s", type=float, default=170.0, help="start no smaller pack past this (s)")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny cohort, few steps: seconds")
    parser.add_argument("--strategies", help=f"comma-separated, of {', '.join(STRATEGIES)}, fused (default: threads, "
                                             "the trainer's; --smoke: processes,threads)")  # fmt: skip
    parser.add_argument("--fused-k", help=f"fused pack sizes (default {','.join(map(str, fused_bench.FUSED_K))}; "
                                          f"--smoke {','.join(map(str, fused_bench.SMOKE_K))})")  # fmt: skip
    parser.add_argument("--fused-steps", type=int, help="timed steps per fused configuration (default 20; --smoke 2)")
    parser.add_argument("--fused-budget-s", type=float, default=240.0,
                        help="seconds for all fused configurations; larger K are skipped past it")
    parser.add_argument("--time-limit-s", type=float,
                        help="the whole run must end within this: the fused configurations get what is left")
    parser.add_argument("--out", help="throughput JSON to write: a file, or a folder for <gpu>-<date>.json")
    args = parser.parse_args(argv)
    cells = args.cells or (2 if args.smoke else 16)
    steps = args.steps or (2 if args.smoke else 150)
    warmup = args.warmup if args.warmup is not None else (1 if args.smoke else 15)
    fused_steps = args.fused_steps or (2 if args.smoke else 20)
    if min(cells, steps, fused_steps) < 1 or warmup < 0:
        parser.error("--cells, --steps and --fused-steps must be at least 1, --warmup at least 0")
    strategies = (args.strategies or ("processes,threads" if args.smoke else "threads")).split(",")
    unknown = [s for s in strategies if s not in STRATEGIES and s != "fused"]
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)}; choose from {', '.join(STRATEGIES)}, fused")
    try:
        fused_k = tuple(int(k) for k in args.fused_k.split(",")) if args.fused_k else None
    except ValueError:
        parser.error(f"--fused-k: expected comma-separated pack sizes, got {args.fused_k!r}")
    fused_k = fused_k or (fused_bench.SMOKE_K if args.smoke else fused_bench.FUSED_K)
    if min(fused_k) < 1:
        parser.error("--fused-k: pack sizes must be at least 1")
    return benchmark(cells, steps, warmup, args.smoke, args.budget_s, args.out, strategies, fused_k, fused_steps,
                     args.fused_budget_s, args.time_limit_s)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
