"""The fused strategy of benchmarks/gpu_throughput.py: K cells of one kind trained as one vmapped model.

    python benchmarks/gpu_throughput.py --strategies threads,fused --out benchmarks/throughput/   # one H200
    python benchmarks/gpu_throughput.py --strategies fused --smoke --out /tmp/bench.json          # CPU, seconds

For each kind (base model x the published batch sizes 2, 4, 6) and each K of --fused-k (8, 16,
32, 64), the trainer's fused step (autolabel/fused.py: one TrainStep over a FusedModel of K
cells with the pack's per-cell Adam; bf16 autocast, CUDA graph): untimed warm-up steps (eager,
then the capture), then timed steps with no host sync inside, one at the end. A K cell pack
trains K x batch images per step; aggregate images/s = those images / the timed seconds. Peak
memory is torch.cuda.max_memory_allocated over the configuration (the shared cohort on the GPU
included). The K cells start from one initialisation (the values do not change the speed).

The configurations run in a worker process (spawned on a GPU, forked on a CPU), each kind's K
ascending, so a time budget stops at the larger K: before each configuration the worker
estimates its time from the previous one (x the ratio of K) and skips it if it would end past
the deadline. An error in a
configuration (out of memory included) is reported and ends its worker, since a failed graph
capture can leave CUDA unusable in a process; a fresh worker goes on with the configurations
left, a kind out of memory at one K skipping its larger K.
"""

from __future__ import annotations

import gc
import queue
import time

from benchmarks.throughput_file import project_grid

FUSED_K = (8, 16, 32, 64)
SMOKE_K = (2,)
# (base model, batch size): both models at the published batch sizes, batch 4 first, so that a
# budget that runs short has measured both models' whole K curves before the other batch sizes.
KINDS = [("resnet18", 4), ("resnet34", 4), ("resnet18", 2), ("resnet34", 2), ("resnet18", 6), ("resnet34", 6)]
GRACE_S = 20  # past the budget, how long a configuration in progress may take before its worker is killed


def configurations(kinds: list[tuple[str, int]], ks: tuple[int, ...]) -> list[tuple[str, int, int]]:
    """(base model, batch size, K): kind after kind, each from its smallest K up."""
    return [(model, batch, k) for model, batch in kinds for k in ks]


# ----------------------------------------------------------------------------- in the worker


def build_fused(base_model: str, batch_size: int, cells: int, dataset: dict, device_name: str, control):
    """The trainer's fused step for ``cells`` cells of one kind (autolabel.fused), its data shared."""
    import torch

    from autolabel.adam import StackedAdam
    from autolabel.fused import FusedModel, cell_losses
    from autolabel.loop import new_model
    from autolabel.options import CellOptions
    from autolabel.state import configure_device, load_data
    from autolabel.step import TrainStep

    device = torch.device(device_name)
    configure_device(device)
    options = CellOptions(device=device_name, base_model=base_model, batch_size=batch_size,
                          dataset={"kind": "synthetic", **dataset})  # fmt: skip
    data = load_data(options, device, "benchmark", control)
    model = new_model(options, data, device, 0, control.init_lock)
    fused = FusedModel([model] * cells)
    del model
    adam = StackedAdam(list(fused.stacked.values()), cells)
    adam.lr.fill_(0.003)
    return TrainStep(fused, adam, data.x_train, data.y_train, [0.75] * cells, gate=control.gate, loss_fn=cell_losses)


def run_fused_steps(step, cells: int, batch_size: int, steps: int, seed: int) -> None:
    """``steps`` steps on random batches (a row of indices per cell), then the only host sync."""
    import torch

    step.model.train()
    g = torch.Generator().manual_seed(seed)
    batches = torch.randint(len(step.x), (steps, cells, batch_size), generator=g).to(step.x.device)
    for idx in batches:
        step(idx)
    step.sums.sum().item()


def measure_fused(kind: tuple[str, int, int], dataset: dict, device: str, steps: int, warmup: int, control,
                  ref_pixels: int) -> dict:  # fmt: skip
    """One configuration: build, warm up (and capture), time. A result dict."""
    import torch

    model, batch, cells = kind
    cuda = device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    step = build_fused(model, batch, cells, dataset, device, control)
    run_fused_steps(step, cells, batch, warmup, seed=1)  # cuDNN's search, the allocator, the graph capture
    start = time.monotonic()
    run_fused_steps(step, cells, batch, steps, seed=2)
    end = time.monotonic()
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    images = steps * cells * batch * dataset["rows"] * dataset["cols"] / ref_pixels
    return {"base_model": model, "batch_size": batch, "cells": cells, "images": images, "start": start, "end": end,
            "peak_memory_gib": peak, "graphed": bool(step.captured)}  # fmt: skip


def fused_worker(todo, dataset, device, steps, warmup, deadline, ref_pixels, results) -> None:
    """Process entry: each (index, configuration) of ``todo`` in turn; a result, error or skip for each."""
    import torch

    from autolabel.control import RunControl

    control = RunControl(shared_data={})  # one copy of the cohort for every configuration
    last: tuple[int, float] | None = None  # (K, seconds) of the previous configuration
    for i, kind in todo:
        results.put(("start", i, {}))
        estimate = last[1] * kind[2] / last[0] if last else 0.0
        if time.monotonic() + estimate > deadline:
            r = {"skipped": f"time budget (~{estimate:.0f}s needed)"}
        else:
            t = time.monotonic()
            try:
                r = measure_fused(kind, dataset, device, steps, warmup, control, ref_pixels)
            except Exception as e:  # noqa: BLE001 - reported; a fresh worker goes on with the rest
                oom = isinstance(e, torch.OutOfMemoryError)
                results.put(("fused", i, {"error": "out of memory" if oom else f"{type(e).__name__}: {first_line(e)}"}))
                return  # a failed capture can leave CUDA unusable in this process
            last = (kind[2], time.monotonic() - t)
            gc.collect()  # the step, its graphs and stacked weights, before the next configuration
            if device == "cuda":
                torch.cuda.empty_cache()
        results.put(("fused", i, r))


def first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


# ----------------------------------------------------------------------------- in the parent


def run_fused(ctx, kinds, ks, dataset, device, steps, warmup, budget_s, ref_pixels, say) -> list[dict]:
    """Every configuration's result (or error, or skip), in :func:`configurations` order."""
    configs = configurations(kinds, ks)
    got: dict[int, dict] = {}
    deadline = time.monotonic() + budget_s
    while len(got) < len(configs) and time.monotonic() < deadline:
        for i, c in enumerate(configs):  # a kind out of memory at one K is at every larger K
            if i not in got and any(got.get(j, {}).get("error") == "out of memory" and d[:2] == c[:2] and d[2] < c[2]
                                    for j, d in enumerate(configs)):  # fmt: skip
                got[i] = {"skipped": "out of memory at a smaller K"}
        todo = [(i, c) for i, c in enumerate(configs) if i not in got]
        if not todo:
            break
        results = ctx.Queue()
        proc = ctx.Process(target=fused_worker, args=(todo, dataset, device, steps, warmup, deadline, ref_pixels,
                                                      results))  # fmt: skip
        proc.start()
        current = None
        while len(got) < len(configs):
            try:
                what, i, r = results.get(timeout=1)
            except queue.Empty:
                if not proc.is_alive() and results.empty():
                    break
                if time.monotonic() > deadline + GRACE_S:
                    proc.kill()
                    break
                continue
            if what == "start":
                current = i
                continue
            got[i], current = r, None
            say(f"    fused K={configs[i][2]} {configs[i][0]} batch {configs[i][1]}: {describe(r)}")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        if current is not None:  # the worker died (or was killed) in this one: the others go on
            got[current] = {"error": f"worker ended (exit code {proc.exitcode}) during this configuration"}
            say(f"    fused K={configs[current][2]} {configs[current][0]} batch {configs[current][1]}: "
                f"{got[current]['error']}")  # fmt: skip
    return [got.get(i, {"skipped": "time budget"}) | {"base_model": c[0], "batch_size": c[1], "cells": c[2]}
            for i, c in enumerate(configs)]  # fmt: skip


def images_per_second(r: dict) -> float:
    return r["images"] / (r["end"] - r["start"])


def describe(r: dict) -> str:
    if "error" in r or "skipped" in r:
        return r.get("error") or f"skipped: {r['skipped']}"
    peak = f", peak {r['peak_memory_gib']:.1f} GiB" if r.get("peak_memory_gib") is not None else ""
    return f"{images_per_second(r):.1f} images/s{peak}{'' if r.get('graphed') else ' (eager)'}"


def fused_figures(results: list[dict], steps: int) -> list[dict]:
    """BenchFigure rows (flows/throughput.py) of the measured configurations, marked as fused."""
    return [
        {"base_model": r["base_model"], "batch_size": r["batch_size"], "cells_per_gpu": r["cells"],
         "images_per_second": images_per_second(r), "strategy": "fused",
         "peak_memory_gib": None if r.get("peak_memory_gib") is None else round(r["peak_memory_gib"], 2),
         "note": f"fused: {r['cells']} cells of this kind as one vmapped model (autolabel/fused.py), "
                 f"{'CUDA graph' if r.get('graphed') else 'eager'}, {steps} timed steps"}  # fmt: skip
        for r in results
        if "images" in r
    ]


def report_fused(results: list[dict], rows: list[dict], solo_rows: list[dict], gpu: str, peak_tflops: float | None,
                 gflop: dict[str, float], threads_grid: dict | None, say) -> dict | None:  # fmt: skip
    """The fused lines of the report: per kind and K images/s, MFU, peak memory; the grid per K;
    the best K against ``threads_grid`` (the threads projection). Returns the best K's projection."""
    ks = sorted({r["cells"] for r in results})
    say("fused packs (images/s  MFU  peak GiB per K; K cells of one kind as one vmapped model):")
    for model, batch in sorted({(r["base_model"], r["batch_size"]) for r in results}):
        cells = []
        for k in ks:
            r = next((x for x in results if (x["base_model"], x["batch_size"], x["cells"]) == (model, batch, k)), {})
            if "images" not in r:
                cells.append(f"K={k}: {r.get('error') or 'skipped'}")
                continue
            ips = images_per_second(r)
            mfu = f"{ips * gflop[model] / (peak_tflops * 1e3):.1%}" if peak_tflops else "n/a"
            peak = "n/a" if r.get("peak_memory_gib") is None else f"{r['peak_memory_gib']:.1f}"
            cells.append(f"K={k}: {ips:.1f} {mfu} {peak}")
        say(f"  {model} batch {batch}: " + " | ".join(cells))
    best = None
    for k in sorted({row["cells_per_gpu"] for row in rows}):
        try:
            grid = project_grid(solo_rows + rows, gpu, k)
        except Exception as e:  # noqa: BLE001 - the figures above stand without the projection
            say(f"grid projection unavailable: {type(e).__name__}: {e}")
            return None
        g = grid["packed"]
        say(f"grid benson2025 ({grid['cells']} cells) fused K={k}: {g['gpu_hours']:.2f} GPU-hours, "
            f"${g['usd_on_demand']:.2f} on-demand, ${g['usd_spot']:.2f} spot (priced as {grid['priced_as']})")  # fmt: skip
        if best is None or g["gpu_hours"] < best["gpu_hours"]:
            best = g
    if best and threads_grid:
        t = threads_grid["packed"]
        say(f"fused best (K={best['cells_per_gpu']}) {best['gpu_hours']:.2f} GPU-hours against threads "
            f"({t['cells_per_gpu']} per GPU) {t['gpu_hours']:.2f}: {t['gpu_hours'] / best['gpu_hours']:.2f}x "
            f"(goal >= 2x, <= 2.3 GPU-hours)")  # fmt: skip
    return best
