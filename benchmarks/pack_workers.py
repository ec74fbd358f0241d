"""The worker processes of benchmarks/gpu_throughput.py: one cell's step timed, alone or in a pack.

    python benchmarks/gpu_throughput.py ...   # starts these in worker processes (spawned on a GPU); see its docstring

(a) baseline_worker: the kinds one at a time, a plain eager fp32 step, then (CUDA) the trainer's
step under CUDA graphs; (b) pack_worker: cells of a pack, in threads on CUDA streams when several,
each waiting at the pack's barrier after its warm-up so that all are timed together.
"""

from __future__ import annotations

import time

from flows.cost import throughput  # pure: no torch

WORKER_TIMEOUT_S = 150  # a pack whose workers have not all reported by then counts them as failed



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
