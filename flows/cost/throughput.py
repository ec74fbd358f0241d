"""How fast a GPU trains cells: images/s by (GPU, base model, batch size, cells per GPU).

    python benchmarks/gpu_throughput.py --out benchmarks/throughput/   # measure a GPU; this module reads it

Measured figures where they exist (``benchmarks/throughput/*.json``, read once, and the seed
figures below); elsewhere scaled. One eager cell per GPU ("solo") is bound by kernel launches:
~13 ms a step whatever the batch, so images/s grow with the batch. Several cells per GPU
("packed") share it: aggregate images/s follow the measured curve, at least solo and at most
k x solo. A GPU without figures is scaled from the measured one nearest in dense bf16 peak
TFLOP/s (datasheets), which is conservative for small GPUs. Pure: no torch, no Prefect.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from autolabel.options import BaseModelName
from flows.cost.prices import CostError, gpu_of

REF_PIXELS = 128 * 256  # the published image size; throughput figures are at this size
FUSED = "fused"  # a benchmark figure's strategy for K cells trained as one vmapped model (autolabel/fused.py)
# Forward+backward GFLOP per 128x256 image with 14 inputs: this project's measurement of the
# U-Net on one NVIDIA H200 with PyTorch 2.11, 2026-11-27.
GFLOP_PER_IMAGE = {"resnet18": 73.0, "resnet34": 80.3}
BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput"  # the repository's

# Dense bf16 (fp16 where the GPU has no bf16) tensor-core peak, TFLOP/s: the scaling rule
# for GPUs without measurements. Vendor datasheets; sparsity figures halved.
GPU_PEAK_TFLOPS: dict[str, tuple[float, str]] = {
    "T4": (65.0, "NVIDIA T4 datasheet, FP16 tensor (no bf16: the trainer's autocast may run slower)"),
    "A10G": (70.0, "AWS's A10 variant, less tensor compute than the A10's 125 (baseten.co, A10 vs A10G)"),
    "L4": (121.0, "NVIDIA L4 datasheet, bf16 242 with sparsity"),
    "L40S": (362.0, "NVIDIA L40S datasheet, bf16 733 with sparsity"),
    "V100": (125.0, "NVIDIA V100 SXM2 datasheet, FP16 tensor (no bf16: the trainer's autocast may run slower)"),
    "A100": (312.0, "NVIDIA A100 datasheet, bf16"),
    "H100": (989.0, "NVIDIA H100 SXM datasheet, bf16 1979 with sparsity"),
    "H200": (989.0, "NVIDIA H200 datasheet, bf16 1979 with sparsity"),
}


@dataclass(frozen=True)
class Figure:
    """Aggregate training images/s (forward+backward, 128x256) of one GPU in one setting."""

    gpu: str
    base_model: str
    batch_size: int
    cells_per_gpu: int  # 1: solo (one eager cell per GPU); more: packed
    images_per_second: float
    source: str
    date: str
    strategy: str = ""  # how the cells shared the GPU: "" or "threads", ... ; "fused": one vmapped model


# Timed on one NVIDIA H200 with PyTorch 2.11 (this project, 2026-11-27), before the trainer
# used CUDA graphs; a benchmark file for the H200 replaces them (throughput_table).
SEED_SOURCE = "H200 eager trainer, PyTorch 2.11"
_DAY = "2026-11-27"


def seed_figures() -> list[Figure]:
    """The measured H200 figures the table starts from; benchmark files add to and override them."""
    figs = [
        # Eager solo steps cost 12-14 ms whatever the batch (2, 4, 6): ~305 img/s at batch 4.
        Figure("H200", "resnet18", 4, 1, 305.0, f"{SEED_SOURCE}: measured", _DAY),
        Figure("H200", "resnet18", 2, 1, 2 / 0.013, f"{SEED_SOURCE}: ~13 ms/step at any batch", _DAY),
        Figure("H200", "resnet18", 6, 1, 6 / 0.013, f"{SEED_SOURCE}: ~13 ms/step at any batch", _DAY),
        # ResNet-34: ~19 ms a step, ~200 img/s at batch 4.
        Figure("H200", "resnet34", 4, 1, 200.0, f"{SEED_SOURCE}: measured", _DAY),
        Figure("H200", "resnet34", 2, 1, 2 / 0.019, f"{SEED_SOURCE}: ~19 ms/step at any batch", _DAY),
        Figure("H200", "resnet34", 6, 1, 6 / 0.019, f"{SEED_SOURCE}: ~19 ms/step at any batch", _DAY),
    ]
    # Concurrent processes at batch 4 (bf16, channels_last, as the trainer runs on CUDA).
    for k, ips in ((4, 1045.0), (8, 1060.0), (16, 1530.0)):
        figs.append(Figure("H200", "resnet18", 4, k, ips, f"{SEED_SOURCE}: {k} processes, measured", _DAY))
    return figs


class BenchFigure(BaseModel):
    """One measured setting in a benchmark result file."""

    model_config = ConfigDict(extra="ignore")

    base_model: BaseModelName = Field(description="encoder of the U-Net")
    batch_size: int = Field(ge=1, description="per-cell batch size")
    cells_per_gpu: int = Field(1, ge=1, description="cells sharing the GPU; 1 = solo eager")
    images_per_second: float = Field(gt=0, description="aggregate over the GPU's cells, fwd+bwd at 128x256")
    note: str = Field("", description="how: eager, processes, CUDA graphs, fused ...")
    strategy: str = Field("", description="solo, threads, ...; fused: K cells as one vmapped model")
    peak_memory_gib: float | None = Field(None, description="fused: the GPU memory the pack took at its peak")


class BenchFile(BaseModel):
    """``benchmarks/throughput/<anything>.json``, written by benchmarks/gpu_throughput.py."""

    model_config = ConfigDict(extra="ignore")

    gpu: str = Field(description="table key (H100, A10G, ...) or the CUDA device name")
    device: str = Field("", description="torch.cuda.get_device_name()")
    date: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", description="day of the measurement")
    source: str = Field(description="what measured it: script, versions, commit")
    figures: list[BenchFigure] = Field(min_length=1)


def gpu_key(device_name: str) -> str:
    """``NVIDIA H100 80GB HBM3`` -> ``H100``; ``Tesla T4`` -> ``T4``; unknown names stay as given."""
    for token in re.findall(r"[A-Z]+\d+[A-Z]*", device_name.upper()):
        if token in GPU_PEAK_TFLOPS:
            return token
    return device_name


def load_throughput(path: str | Path) -> list[Figure]:
    """The figures of one benchmark result file (see BenchFile); raises CostError if malformed."""
    try:
        bench = BenchFile.model_validate_json(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CostError(f"{path}: not a throughput file ({str(e).splitlines()[0]})") from None
    gpu = gpu_key(bench.gpu)
    return [
        Figure(gpu, f.base_model, f.batch_size, f.cells_per_gpu, f.images_per_second,
               f"{bench.source}{': ' + f.note if f.note else ''}", bench.date, f.strategy)
        for f in bench.figures
    ]


@dataclass(frozen=True, eq=False)
class Table:
    """The throughput figures in force; compared by identity, so lookups can be memoized."""

    figures: tuple[Figure, ...]

    def of(self, gpu: str, packed: bool) -> list[Figure]:
        """The figures of cells trained as cells (solo, or packed in threads or processes)."""
        return [f for f in self.figures if f.gpu == gpu and (f.cells_per_gpu > 1) == packed and f.strategy != FUSED]

    def fused(self, gpu: str, base_model: str, batch_size: int, cells: int) -> Figure | None:
        """The measured fused pack of exactly this shape, if any (never interpolated: a pack of
        another size may not fit the GPU's memory, or may be slower)."""
        return next((f for f in self.figures if f.strategy == FUSED and (f.gpu, f.base_model, f.batch_size,
                     f.cells_per_gpu) == (gpu, base_model, batch_size, cells)), None)


def throughput_table(paths: list[Path] | None = None) -> Table:
    """Seeds, then every benchmark file by date; a later figure replaces an earlier one.

    A GPU with a benchmark file loses its seed figures: those timed an older trainer
    (eager steps, one process per cell), and a curve must come from one trainer.
    """
    files = sorted(BENCH_DIR.glob("*.json")) if paths is None else paths
    measured = [f for path in files for f in load_throughput(path)]
    covered = {f.gpu for f in measured}
    figs = [f for f in seed_figures() if f.gpu not in covered] + measured
    latest: dict[tuple, Figure] = {}
    for f in sorted(figs, key=lambda f: f.date):  # a fused figure never replaces a threads one, nor the reverse
        latest[(f.gpu, f.base_model, f.batch_size, f.cells_per_gpu, f.strategy == FUSED)] = f
    return Table(tuple(latest.values()))


@lru_cache(maxsize=1)
def default_table() -> Table:
    return throughput_table()


def reference_gpu(table: Table, gpu: str) -> str:
    """The measured GPU to scale ``gpu`` from: the one nearest in peak FLOP/s (then the latest),
    since GPUs of one class are bound by the same things (launches on big ones, math on small)."""
    measured = {f.gpu: f.date for f in table.figures if f.cells_per_gpu > 1 and f.gpu in GPU_PEAK_TFLOPS}
    if not measured:
        raise CostError("no packed throughput figures to scale from; run benchmarks/gpu_throughput.py")
    peak = GPU_PEAK_TFLOPS[gpu][0]
    nearest = min(abs(math.log(GPU_PEAK_TFLOPS[g][0] / peak)) for g in measured)
    return max((g for g in measured if abs(math.log(GPU_PEAK_TFLOPS[g][0] / peak)) == nearest), key=measured.get)


def nearest_batch(figs: list[Figure], batch_size: int) -> int:
    return min({f.batch_size for f in figs}, key=lambda b: (abs(b - batch_size), -b))


def solo_ips(gpu: str, base_model: str, batch_size: int, table: Table) -> tuple[float, str]:
    """(images/s, source) of one cell alone on the GPU (as the trainer runs it: graphed on CUDA)."""
    figs = table.of(gpu, packed=False)
    mine = [f for f in figs if f.base_model == base_model]
    if mine:
        b = nearest_batch(mine, batch_size)
        f = next(f for f in mine if f.batch_size == b)
        # Launch-bound: a step costs the same at any batch, so images/s scale with it,
        # up to what the GPU does with many cells.
        ips = min(f.images_per_second * batch_size / b, max_ips(gpu, base_model, table))
        return ips, f.source if b == batch_size else f"{f.source}; x batch {batch_size}/{b}"
    if figs:
        other = figs[0].base_model
        ips, src = solo_ips(gpu, other, batch_size, table)
        return ips * GFLOP_PER_IMAGE[other] / GFLOP_PER_IMAGE[base_model], f"{src}; x {other}/{base_model} FLOPs"
    pts, _ = packed_points(gpu, base_model, batch_size, table)
    if table.of(gpu, packed=True) and pts:  # measured packed only: one cell's share of the smallest pack
        k, v = pts[0]
        return v / k, f"{gpu}'s {k}-cell figure / {k}"
    if gpu not in GPU_PEAK_TFLOPS:
        raise CostError(f"no throughput figures for GPU {gpu!r}; run benchmarks/gpu_throughput.py on one")
    ref = reference_gpu(table, gpu)
    ips, _ = solo_ips(ref, base_model, batch_size, table)
    cap = max_ips(gpu, base_model, table)
    # The reference's solo figure, capped by this GPU's scaled capacity. An eager step is launch
    # bound, so it costs the same on any GPU; a graphed one is not, so for a GPU slower than the
    # reference this is an upper bound (optimistic) until a benchmark file measures it.
    if ips <= cap:
        return ips, f"estimate: {ref}'s solo figure, at most this GPU's scaled capacity"
    return cap, packed_points(gpu, base_model, batch_size, table)[1]


def packed_points(gpu: str, base_model: str, batch_size: int, table: Table) -> tuple[list[tuple[int, float]], str]:
    """([(cells per GPU, aggregate images/s)], source) for several cells on one GPU."""
    figs = table.of(gpu, packed=True)
    mine = [f for f in figs if f.base_model == base_model]
    if mine:
        # Compute-bound once packed: the nearest batch size's curve stands for this one.
        b = nearest_batch(mine, batch_size)
        pts = sorted((f.cells_per_gpu, f.images_per_second) for f in mine if f.batch_size == b)
        src = next(f.source for f in mine if f.batch_size == b)
        return pts, src if b == batch_size else f"{src}; batch {b} for {batch_size}"
    if figs:
        other = figs[0].base_model
        pts, src = packed_points(gpu, other, batch_size, table)
        ratio = GFLOP_PER_IMAGE[other] / GFLOP_PER_IMAGE[base_model]
        return [(k, v * ratio) for k, v in pts], f"{src}; x {other}/{base_model} FLOPs"
    if table.of(gpu, packed=False) or gpu not in GPU_PEAK_TFLOPS:
        return [], "no packed figures"
    ref = reference_gpu(table, gpu)
    pts, src = packed_points(ref, base_model, batch_size, table)
    ratio = GPU_PEAK_TFLOPS[gpu][0] / GPU_PEAK_TFLOPS[ref][0]
    return [(k, v * ratio) for k, v in pts], (
        f"estimate: {ref} figures x {gpu}/{ref} bf16 peak {GPU_PEAK_TFLOPS[gpu][0]:g}/{GPU_PEAK_TFLOPS[ref][0]:g} "
        f"TFLOP/s ({GPU_PEAK_TFLOPS[gpu][1]})"
    )


def max_ips(gpu: str, base_model: str, table: Table) -> float:
    """The most images/s the GPU reaches packed; unbounded without packed figures."""
    pts, _ = packed_points(gpu, base_model, 4, table)
    return max((v for _, v in pts), default=float("inf"))


@lru_cache(maxsize=4096)
def _throughput(gpu: str, base_model: str, batch_size: int, cells_per_gpu: int, table: Table) -> tuple[float, str]:
    solo, src = solo_ips(gpu, base_model, batch_size, table)
    if cells_per_gpu <= 1:
        return solo, src
    pts, psrc = packed_points(gpu, base_model, batch_size, table)
    if not pts:
        return solo, src
    value = interpolate([(1, solo), *pts], cells_per_gpu)
    # At least one cell's worth, at most k cells each at their solo speed.
    return max(solo, min(value, cells_per_gpu * solo)), psrc


def throughput(
    gpu: str, base_model: str, batch_size: int, cells_per_gpu: int = 1, table: Table | None = None
) -> tuple[float, str]:
    """(aggregate images/s of ``cells_per_gpu`` cells on one ``gpu``, the figure's source)."""
    return _throughput(gpu, base_model, batch_size, cells_per_gpu, table or default_table())


def pack_throughput(gpu: str, base_model: str, batch_size: int, cells: int,
                    table: Table | None = None) -> tuple[float, str, bool]:
    """(aggregate images/s, source, fused) of a pack of ``cells`` such cells on one ``gpu``: fused
    (``--fused``) only where a benchmark measured that very pack faster than the cells side by side."""
    table = table or default_table()
    ips, src = throughput(gpu, base_model, batch_size, cells, table)
    fused = table.fused(gpu, base_model, batch_size, cells) if cells > 1 else None
    if fused is not None and fused.images_per_second > ips:
        return fused.images_per_second, f"{fused.source} (fused, measured faster than {ips:.0f})", True
    return ips, src, False


def interpolate(points: list[tuple[int, float]], k: int) -> float:
    """Piecewise linear through (cells per GPU, images/s); flat past the last point."""
    points = sorted(points)
    if k >= points[-1][0]:
        return points[-1][1]
    for (k0, v0), (k1, v1) in zip(points, points[1:]):
        if k0 <= k <= k1:
            return v0 + (v1 - v0) * (k - k0) / (k1 - k0)
    return points[0][1]


def default_cells_per_gpu(instance_type: str, base_model: str = "resnet18", batch_size: int = 4) -> int:
    """The fewest cells per GPU that reach 95% of the best measured aggregate images/s."""
    gpu = gpu_of(instance_type)
    table = default_table()
    pts, _ = packed_points(gpu, base_model, batch_size, table)
    curve = [(1, throughput(gpu, base_model, batch_size, 1, table)[0])]
    curve += [(k, throughput(gpu, base_model, batch_size, k, table)[0]) for k, _ in pts]
    best = max(v for _, v in curve)
    return min(k for k, v in curve if v >= 0.95 * best)
