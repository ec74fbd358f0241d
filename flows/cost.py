"""What a grid would cost: GPU-seconds and dollars per cell, from the work each cell implies.

    python -m flows.grid grid-search/benson2025.yaml --dry-run                      # g5.xlarge, 8 at once
    python -m flows.grid grid-search/benson2025.yaml --dry-run --instance-type p5.48xlarge --spot
    python -m flows.grid grid-search/benson2025.yaml --dry-run --refresh-prices     # on-demand/spot from AWS

Pure functions: no torch, no Prefect. The only reads are the GPU benchmark's result files
(``benchmarks/throughput/*.json``, once) and, when asked, AWS's price APIs.

The model, step by step:

1. **Work.** A cell trains ``until x sum(num_epochs)`` epochs over its training subjects
   (forward+backward) and validates its validation subjects after each epoch (forward
   only, 1/3 of a training image's FLOPs). Images count relative to 128x256 pixels.
2. **Throughput.** Images/s for (GPU, base model, batch size, cells per GPU), from
   measured figures where they exist. One eager cell per GPU ("solo") is bound by kernel
   launches: ~13 ms a step whatever the batch, so images/s grow with the batch. Several
   cells per GPU ("packed") share it: aggregate images/s follow the measured curve, at
   least solo and at most k x solo. A GPU without figures is scaled from the measured one
   by dense bf16 peak TFLOP/s (datasheets), which is conservative for small GPUs.
3. **GPU-seconds.** A cell's share of its GPU: its images / the pack's aggregate
   images/s, plus its share of the task's start-up (TASK_START_S). A grid adds, per
   parallel lane, an instance start and an idle tail before scale-in.
4. **Dollars.** GPU-hours x the instance's price per GPU-hour (on-demand, or the middle
   of the spot range), us-east-1, from PRICES (dated) or refresh_prices().
"""

from __future__ import annotations

import heapq
import json
import math
import re
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from autolabel.options import BaseModelName, SyntheticDataset, split_counts

if TYPE_CHECKING:
    from flows.cells import Cell

REF_PIXELS = 128 * 256  # the published image size; throughput figures are at this size
# Forward+backward GFLOP per 128x256 image, 14 inputs (REFERENCE.md "GPU measurements", 2026-11-27).
GFLOP_PER_IMAGE = {"resnet18": 73.0, "resnet34": 80.3}
FORWARD_SHARE = 1 / 3  # a forward pass is ~1/3 of forward+backward (backward ~2x forward)
HCP_SUBJECTS = 181  # a path dataset's size is unknown before it is opened: assume the HCP 7T cohort

# Overheads, assumptions until the ECS backend measures them (its ledger records real time):
TASK_START_S = 30.0  # per pack: container start, torch import, CUDA init, dataset load
INSTANCE_START_S = 300.0  # per lane: boot the ECS GPU AMI, register, pull the image
IDLE_TAIL_S = 900.0  # per lane: managed scaling removes an idle instance after ~15 min
DEFAULT_MAX_PARALLEL = 8

BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "throughput"


class CostError(ValueError):
    """Unknown instance type or GPU, or a cap that not even the covering cells fit."""


# ----------------------------------------------------------------------------- prices


@dataclass(frozen=True)
class Price:
    """An instance type's hourly price; the per-GPU figures are what a cell pays."""

    instance_type: str
    gpu: str  # table key of its GPU (see GPU_PEAK_TFLOPS)
    gpus: int
    on_demand: float  # $/hour, whole instance
    spot_low: float  # $/hour, cheapest zone
    spot_high: float  # $/hour, dearest zone
    date: str
    source: str

    @property
    def spot(self) -> float:
        """The middle of the spot range: zones differ and the launch picks none in particular."""
        return (self.spot_low + self.spot_high) / 2

    def per_gpu(self, spot: bool = False) -> float:
        return (self.spot if spot else self.on_demand) / self.gpus


_CATALOGUE = "public price catalogue, us-east-1 Linux (REFERENCE.md)"
PRICES: dict[str, Price] = {
    p.instance_type: p
    for p in (
        Price("g4dn.xlarge", "T4", 1, 0.526, 0.20, 0.22, "2026-06", _CATALOGUE),
        Price("g5.xlarge", "A10G", 1, 1.006, 0.43, 0.45, "2026-06", _CATALOGUE),
        Price("g6.xlarge", "L4", 1, 0.805, 0.35, 0.40, "2026-06", _CATALOGUE),
        Price("g6e.xlarge", "L40S", 1, 1.861, 0.92, 1.20, "2026-06", _CATALOGUE),
        Price("p3.2xlarge", "V100", 1, 3.06, 0.37, 0.43, "2026-06", _CATALOGUE),
        Price("p4d.24xlarge", "A100", 8, 21.958, 2.47, 8.19, "2026-06", _CATALOGUE),
        Price("p5.48xlarge", "H100", 8, 55.04, 17.6, 25.8, "2026-06", _CATALOGUE),
    )
}


def price_of(instance_type: str, prices: dict[str, Price] | None = None) -> Price:
    prices = prices or PRICES
    if instance_type not in prices:
        raise CostError(f"unknown instance type {instance_type!r}; priced: {', '.join(prices)}")
    return prices[instance_type]


def hourly_price(instance_type: str, spot: bool = False, prices: dict[str, Price] | None = None) -> float:
    """$ per GPU-hour on this instance type (a multi-GPU instance's price / its GPUs)."""
    return price_of(instance_type, prices).per_gpu(spot)


def gpu_of(instance_type: str, prices: dict[str, Price] | None = None) -> str:
    return price_of(instance_type, prices).gpu


# ----------------------------------------------------------------------------- throughput

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

    @property
    def mode(self) -> str:
        return "solo" if self.cells_per_gpu == 1 else "packed"


_REF = "REFERENCE.md GPU measurements (one H200, PyTorch 2.11)"
_DAY = "2026-11-27"


def seed_figures() -> list[Figure]:
    """The measured H200 figures the table starts from; benchmark files add to and override them."""
    figs = [
        # Eager solo steps cost 12-14 ms whatever the batch (2, 4, 6): ~305 img/s at batch 4.
        Figure("H200", "resnet18", 4, 1, 305.0, f"{_REF}: measured", _DAY),
        Figure("H200", "resnet18", 2, 1, 2 / 0.013, f"{_REF}: ~13 ms/step at any batch", _DAY),
        Figure("H200", "resnet18", 6, 1, 6 / 0.013, f"{_REF}: ~13 ms/step at any batch", _DAY),
        # ResNet-34: ~19 ms a step, ~200 img/s at batch 4.
        Figure("H200", "resnet34", 4, 1, 200.0, f"{_REF}: measured", _DAY),
        Figure("H200", "resnet34", 2, 1, 2 / 0.019, f"{_REF}: ~19 ms/step at any batch", _DAY),
        Figure("H200", "resnet34", 6, 1, 6 / 0.019, f"{_REF}: ~19 ms/step at any batch", _DAY),
    ]
    # Concurrent processes at batch 4 (bf16, channels_last, as the trainer runs on CUDA).
    for k, ips in ((4, 1045.0), (8, 1060.0), (16, 1530.0)):
        figs.append(Figure("H200", "resnet18", 4, k, ips, f"{_REF}: {k} processes, measured", _DAY))
    return figs


class BenchFigure(BaseModel):
    """One measured setting in a benchmark result file."""

    model_config = ConfigDict(extra="ignore")

    base_model: BaseModelName = Field(description="encoder of the U-Net")
    batch_size: int = Field(ge=1, description="per-cell batch size")
    cells_per_gpu: int = Field(1, ge=1, description="cells sharing the GPU; 1 = solo eager")
    images_per_second: float = Field(gt=0, description="aggregate over the GPU's cells, fwd+bwd at 128x256")
    note: str = Field("", description="how: eager, processes, CUDA graphs, fused ...")


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
               f"{bench.source}{': ' + f.note if f.note else ''}", bench.date)
        for f in bench.figures
    ]


@dataclass(frozen=True, eq=False)
class Table:
    """The throughput figures in force; compared by identity, so lookups can be memoized."""

    figures: tuple[Figure, ...]

    def of(self, gpu: str, packed: bool) -> list[Figure]:
        return [f for f in self.figures if f.gpu == gpu and (f.cells_per_gpu > 1) == packed]


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
    for f in sorted(figs, key=lambda f: f.date):
        latest[(f.gpu, f.base_model, f.batch_size, f.cells_per_gpu)] = f
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


# ----------------------------------------------------------------------------- work


@dataclass(frozen=True)
class Work:
    """What one cell trains, summed over its repeats (``until``)."""

    base_model: str
    pixel_scale: float  # image pixels / 128x256
    rounds: tuple[tuple[int, int, int], ...]  # per round: (batch size, training images, validation images)

    @property
    def train_images(self) -> int:
        return sum(t for _, t, _ in self.rounds)

    @property
    def validation_images(self) -> int:
        return sum(v for _, _, v in self.rounds)

    @property
    def gflop(self) -> float:
        equivalent = self.train_images + FORWARD_SHARE * self.validation_images
        return equivalent * self.pixel_scale * GFLOP_PER_IMAGE[self.base_model]


def split_sizes(options: Any) -> tuple[int, int]:
    """(training, validation) subjects, as autolabel.data.split_subjects divides them."""
    n = options.dataset.subjects if isinstance(options.dataset, SyntheticDataset) else HCP_SUBJECTS
    return split_counts(options.partition, n)


def image_pixels(options: Any) -> int:
    if options.image_size:
        return options.image_size[0] * options.image_size[1]
    if isinstance(options.dataset, SyntheticDataset):
        return options.dataset.rows * options.dataset.cols
    return REF_PIXELS


def work_of(cell: Cell) -> Work:
    """The images a cell trains and validates, round by round, all repeats."""
    o = cell.options
    n_train, n_val = split_sizes(o)
    rounds = tuple(
        (r.batch_size or o.batch_size, o.until * r.num_epochs * n_train, o.until * r.num_epochs * n_val)
        for r in cell.plan.root
    )
    return Work(o.base_model, image_pixels(o) / REF_PIXELS, rounds)


def cell_work(cell: Cell) -> float:
    """A cell's work in GFLOP: how the ledger splits a pack's cost among its cells."""
    return work_of(cell).gflop


def train_seconds(work: Work, gpu: str, cells_per_gpu: int = 1, table: Table | None = None) -> float:
    """The cell's share of GPU time for its images (start-up excluded)."""
    total = 0.0
    for batch, train, val in work.rounds:
        ips, _ = throughput(gpu, work.base_model, batch, cells_per_gpu, table)
        total += (train + FORWARD_SHARE * val) * work.pixel_scale / ips
    return total


def resolve_gpu(gpu_or_instance: str) -> str:
    if gpu_or_instance in PRICES:
        return PRICES[gpu_or_instance].gpu
    if gpu_or_instance in GPU_PEAK_TFLOPS:
        return gpu_or_instance
    raise CostError(f"unknown GPU or instance type {gpu_or_instance!r}; GPUs: {', '.join(GPU_PEAK_TFLOPS)}")


def cell_gpu_seconds(cell: Cell, gpu: str, cells_per_gpu: int = 1, table: Table | None = None) -> float:
    """GPU-seconds a cell costs on ``gpu`` (a GPU like ``A10G`` or an instance type),
    with its share of its pack's start-up."""
    gpu = resolve_gpu(gpu)
    return train_seconds(work_of(cell), gpu, cells_per_gpu, table) + TASK_START_S / max(1, cells_per_gpu)


def cell_usd(
    cell: Cell, instance_type: str, spot: bool = False, cells_per_gpu: int = 1, prices: dict | None = None
) -> float:
    """Dollars a cell costs on this instance type: what the flow reserves before launching it."""
    return cell_gpu_seconds(cell, gpu_of(instance_type, prices), cells_per_gpu) / 3600 * hourly_price(
        instance_type, spot, prices
    )


# ----------------------------------------------------------------------------- whole grid


@dataclass(frozen=True)
class Estimate:
    """GPU-hours, dollars and wall-clock for a set of cells on one instance type."""

    cells: int
    instance_type: str
    gpu: str
    spot: bool
    cells_per_gpu: int
    max_parallel: int
    packs: int  # GPU tasks (one pack of cells each)
    train_images: int  # forward+backward, all cells, all repeats
    validation_images: int  # forward only
    pflop: float
    gpu_hours_cells: float  # the cells' own GPU time, task start-ups included
    gpu_hours_overhead: float  # instance start and idle tail, per parallel lane
    usd_per_gpu_hour_on_demand: float
    usd_per_gpu_hour_spot: float
    spot_range: tuple[float, float]  # $/GPU-hour, cheapest and dearest zone
    wall_hours: float
    price_date: str
    throughput: dict[str, float] = field(default_factory=dict)  # "resnet18 b4" -> images/s per GPU
    sources: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> float:
        return self.gpu_hours_cells + self.gpu_hours_overhead

    @property
    def usd_on_demand(self) -> float:
        return self.gpu_hours * self.usd_per_gpu_hour_on_demand

    @property
    def usd_spot(self) -> float:
        return self.gpu_hours * self.usd_per_gpu_hour_spot

    @property
    def usd(self) -> float:
        """At the price the run would pay (spot or on-demand)."""
        return self.usd_spot if self.spot else self.usd_on_demand

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(gpu_hours=self.gpu_hours, usd_on_demand=self.usd_on_demand, usd_spot=self.usd_spot, usd=self.usd)
        return d


def lane_overhead_s(instances: bool) -> float:
    """GPU-seconds each parallel lane pays besides its packs: an instance's start and idle tail.
    ``instances=False`` is for GPUs already running (the local backend), which pay neither."""
    return INSTANCE_START_S + IDLE_TAIL_S if instances else 0.0


def make_packs(cells: list[Cell], cells_per_gpu: int) -> list[list[Cell]]:
    """Cells grouped as the runners pack them: same base model, batch size and inputs."""
    if cells_per_gpu <= 1:
        return [[c] for c in cells]
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.options.base_model, c.options.batch_size, c.options.inputs), []).append(c)
    return [g[i : i + cells_per_gpu] for g in groups.values() for i in range(0, len(g), cells_per_gpu)]


def estimate(
    cells: list[Cell],
    instance_type: str = "g5.xlarge",
    spot: bool = False,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    cells_per_gpu: int | None = None,
    prices: dict[str, Price] | None = None,
    instances: bool = True,
) -> Estimate:
    """Price ``cells`` on ``instance_type`` with ``max_parallel`` GPUs at once.

    Wall-clock: instance start, then packs placed greedily on the first free GPU.
    ``instances=False`` leaves out instance start and idle tail (GPUs already running).
    """
    price = price_of(instance_type, prices)
    k = cells_per_gpu or default_cells_per_gpu(instance_type)
    packs = make_packs(cells, k)
    works = {c.id: work_of(c) for c in cells}
    durations = [TASK_START_S + sum(train_seconds(works[c.id], price.gpu, len(p)) for c in p) for p in packs]
    lanes = min(max_parallel, len(packs))
    finish = [0.0] * lanes
    for d in durations:  # list scheduling: each pack goes to the lane that frees first
        heapq.heapreplace(finish, finish[0] + d)
    models = sorted({(c.options.base_model, b) for c in cells for b, _, _ in works[c.id].rounds})
    rates = {f"{m} b{b}": throughput(price.gpu, m, b, k) for m, b in models}
    return Estimate(
        cells=len(cells),
        instance_type=instance_type,
        gpu=price.gpu,
        spot=spot,
        cells_per_gpu=k,
        max_parallel=max_parallel,
        packs=len(packs),
        train_images=sum(w.train_images for w in works.values()),
        validation_images=sum(w.validation_images for w in works.values()),
        pflop=sum(w.gflop for w in works.values()) / 1e6,
        gpu_hours_cells=sum(durations) / 3600,
        gpu_hours_overhead=lanes * lane_overhead_s(instances) / 3600,
        usd_per_gpu_hour_on_demand=price.per_gpu(False),
        usd_per_gpu_hour_spot=price.per_gpu(True),
        spot_range=(price.spot_low / price.gpus, price.spot_high / price.gpus),
        wall_hours=((INSTANCE_START_S * instances + max(finish)) / 3600) if lanes else 0.0,
        price_date=price.date,
        throughput={name: round(v, 1) for name, (v, _) in rates.items()},
        sources=sorted({src for _, src in rates.values()} | {f"prices: {price.source}, {price.date}"}),
    )


def select_subset(
    cells: list[Cell],
    cap_usd: float,
    instance_type: str = "g5.xlarge",
    spot: bool = False,
    cells_per_gpu: int | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    prices: dict[str, Price] | None = None,
    instances: bool = True,
) -> list[Cell]:
    """The cells to run under ``cap_usd``, every level of every factor still represented.

    1. Cover: greedily add the cell that covers the most unseen (factor, level) pairs,
       cheapest first on ties; 2. fill: add the rest in id order (ids are hashes, so this
       is a fixed pseudo-random sample, unchanged when the grid grows) while they fit.
    Returns cells in grid order; raises CostError when even the covering cells do not fit.
    """
    k = cells_per_gpu or default_cells_per_gpu(instance_type)
    usd = {c.id: cell_usd(c, instance_type, spot, k, prices) for c in cells}
    lanes_usd = min(max_parallel, len(cells)) * lane_overhead_s(instances) / 3600
    budget = cap_usd - lanes_usd * hourly_price(instance_type, spot, prices)
    chosen = cover(cells, usd)
    spent = sum(usd[c.id] for c in chosen)
    if spent > budget:
        raise CostError(
            f"even the {len(chosen)} cells that cover every level cost ${spent + cap_usd - budget:.2f} "
            f"with start-up, over the cap ${cap_usd:.2f}; raise the cap or drop levels"
        )
    taken = {c.id for c in chosen}
    fill = []  # in the order added, so the last added goes first if the total runs over
    for c in sorted(cells, key=lambda c: c.id):
        if c.id not in taken and spent + usd[c.id] <= budget:
            fill.append(c.id)
            spent += usd[c.id]
    # Part-filled packs make the whole a little dearer than the sum of cells: trim the fill.
    while True:
        keep = taken | set(fill)
        subset = [c for c in cells if c.id in keep]
        excess = estimate(subset, instance_type, spot, max_parallel, k, prices, instances).usd - cap_usd
        if excess <= 0:
            return subset
        if not fill:
            raise CostError(f"even the {len(chosen)} cells that cover every level exceed the cap ${cap_usd:.2f}")
        while fill and excess > 0:
            excess -= usd[fill.pop()]


def cover(cells: list[Cell], usd: dict[str, float]) -> list[Cell]:
    """Few cells that between them show every level of every hyper factor."""
    missing = {(k, json.dumps(v, sort_keys=True)) for c in cells for k, v in c.hyper.items()}
    pairs = {c.id: {(k, json.dumps(v, sort_keys=True)) for k, v in c.hyper.items()} for c in cells}
    chosen: list[Cell] = []
    while missing:
        best = max(cells, key=lambda c: (len(pairs[c.id] & missing), -usd[c.id]))
        chosen.append(best)
        missing -= pairs[best.id]
    return chosen


def cells_within(
    cells: list[Cell],
    cap_usd: float,
    instance_type: str = "g5.xlarge",
    spot: bool = False,
    cells_per_gpu: int | None = None,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    prices: dict[str, Price] | None = None,
    instances: bool = True,
) -> int:
    """How many cells ``select_subset`` would run under the cap (0 if not even the covering ones fit)."""
    try:
        subset = select_subset(cells, cap_usd, instance_type, spot, cells_per_gpu, max_parallel, prices, instances)
        return len(subset)
    except CostError:
        return 0


# ----------------------------------------------------------------------------- price refresh


def refresh_prices(
    instance_types: list[str] | None = None, timeout_s: float = 3.0
) -> tuple[dict[str, Price], list[str]]:
    """On-demand (pricing.get_products) and spot (describe_spot_price_history) prices from AWS.

    Falls back to PRICES, with a note saying why, when boto3 has no credentials or AWS
    cannot be reached; each call gives up after ``timeout_s`` and is not retried.
    """
    table = dict(PRICES)
    types = instance_types or list(PRICES)
    fallback = f"using the price table of {PRICES['g5.xlarge'].date}"
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        return table, [f"boto3 is not installed; {fallback}"]
    session = boto3.Session()
    if session.get_credentials() is None:
        return table, [f"no AWS credentials; {fallback}"]
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 1})
    try:
        pricing = session.client("pricing", region_name="us-east-1", config=config)
        ec2 = session.client("ec2", region_name="us-east-1", config=config)
        for it in types:
            old = price_of(it)
            on_demand = on_demand_price(pricing, it) or old.on_demand
            low, high = spot_range(ec2, it) or (old.spot_low, old.spot_high)
            table[it] = Price(it, old.gpu, old.gpus, on_demand, low, high, today(), "AWS pricing API, us-east-1")
    except Exception as e:  # noqa: BLE001 - any failure means: keep the table, say why
        return dict(PRICES), [f"price refresh failed ({type(e).__name__}: {str(e)[:120]}); {fallback}"]
    return table, [f"prices refreshed from AWS for {', '.join(types)}"]


def on_demand_price(pricing: Any, instance_type: str) -> float | None:
    filters = {
        "instanceType": instance_type,
        "location": "US East (N. Virginia)",
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
    }
    reply = pricing.get_products(
        ServiceCode="AmazonEC2",
        Filters=[{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in filters.items()],
        MaxResults=10,
    )
    prices = [p for item in reply.get("PriceList", []) for p in parse_on_demand(item)]
    return min(prices) if prices else None


def parse_on_demand(item: str | dict) -> list[float]:
    """$/hour figures of one PriceList entry (a JSON document per product)."""
    doc = json.loads(item) if isinstance(item, str) else item
    out = []
    for term in doc.get("terms", {}).get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            usd = float(dim.get("pricePerUnit", {}).get("USD", 0) or 0)
            if usd > 0 and dim.get("unit", "Hrs") == "Hrs":
                out.append(usd)
    return out


def spot_range(ec2: Any, instance_type: str) -> tuple[float, float] | None:
    """(lowest, highest) current spot price across zones."""
    import datetime as dt

    reply = ec2.describe_spot_price_history(
        InstanceTypes=[instance_type],
        ProductDescriptions=["Linux/UNIX"],
        StartTime=dt.datetime.now(dt.timezone.utc),
        MaxResults=100,
    )
    latest: dict[str, float] = {}
    for p in sorted(reply.get("SpotPriceHistory", []), key=lambda p: p["Timestamp"]):
        latest[p["AvailabilityZone"]] = float(p["SpotPrice"])
    return (min(latest.values()), max(latest.values())) if latest else None


def today() -> str:
    import datetime as dt

    return dt.date.today().isoformat()
