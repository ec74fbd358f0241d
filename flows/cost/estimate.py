"""What cells cost: the work each cell implies, its GPU-seconds, and a whole run's estimate.

    python -m flows.grid grid-search/benson2025.yaml --dry-run $ECS      # g5.xlarge, 8 at once ($ECS: flows/grid.py)
    python -m flows.grid grid-search/benson2025.yaml --dry-run $ECS --instance-type p5.48xlarge --spot

Pure functions: no torch, no Prefect, no I/O (prices: flows/cost/prices.py; images/s:
flows/cost/throughput.py; the cap and the subset that fits it: flows/cost/cap.py). The model:

1. **Work.** A cell trains ``until x sum(num_epochs)`` epochs over its training subjects
   (forward+backward) and validates its validation subjects after each epoch (forward
   only, 1/3 of a training image's FLOPs). Images count relative to 128x256 pixels.
2. **GPU-seconds.** A cell's share of its GPU: its images / the pack's aggregate
   images/s (flows.cost.throughput), plus its share of the task's start-up (an ECS task's
   TASK_START_S, a local process's LOCAL_START_S). A run on instances it starts adds, per
   parallel lane, an instance start and an idle tail before scale-in.
3. **Packs.** A pack is one GPU task or local process: ``cells_per_gpu`` cells train at once (a
   wave). A pack holds waves, one after another, until its start-up is at most START_SHARE of its
   time (:func:`fill_packs`), but never so few packs that a parallel lane would idle.
4. **Dollars.** GPU-hours x what the run pays per GPU-hour (``Pricing.usd_per_gpu_hour``).
"""

from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from autolabel.options import SyntheticDataset, split_counts
from flows.cost.prices import CostError, Price, price_of
from flows.cost.throughput import (
    GFLOP_PER_IMAGE,
    GPU_PEAK_TFLOPS,
    REF_PIXELS,
    Table,
    pack_throughput,
    throughput,
)

if TYPE_CHECKING:
    from flows.spec.cells import Cell

FORWARD_SHARE = 1 / 3  # a forward pass is ~1/3 of forward+backward (backward ~2x forward)
HCP_SUBJECTS = 181  # a path dataset's size is unknown before it is opened: the HCP 7T cohort has 181

# Overheads, assumptions until the ECS backend measures them (its ledger records real time):
TASK_START_S = 30.0  # per ECS pack: container start, torch import, CUDA init, dataset load
# Per local pack: a new Python process importing torch and the trainer and loading the cohort, no
# container. Measured on this project's 2-core CPU machine, 2026-12-05: 5.8 to 6.4 s (imports 2.9 s, reading
# the 181-subject fsaverage cohort from its cache 2.9 s), with no CUDA to initialise.
LOCAL_START_S = 6.0
START_SHARE = 0.1  # a filled pack holds waves of cells until its start-up is at most this share of it
# The most cells a filled pack holds: an ECS task's command lists its cells' S3 URIs (~85 characters
# each), and RunTask takes at most 8192 characters of overrides (AWS ECS API reference, RunTask).
MAX_PACK_CELLS = 64
INSTANCE_START_S = 300.0  # per lane: boot the ECS GPU AMI, register, pull the image
IDLE_TAIL_S = 900.0  # per lane: managed scaling removes an idle instance after ~15 min

Backend = Literal["local", "ecs"]
# A stretch of a cell's training: (from, to) rounds trained, repeats counted; to None: the plan's end.
Span = tuple[int, "int | None"]


@dataclass(frozen=True)
class Pricing:
    """How a run is priced: what the ledger will charge, and how its packs are laid out.

    Built from the run's flags by flows.cost.cap.make_pricing, for the dry run and the flow alike.
    """

    backend: Backend  # local subprocesses or ECS tasks
    instance_type: str  # whose GPU the throughput model times the cells on
    spot: bool  # spot rates (ECS capacity on spot instances)
    cells_per_gpu: int  # cells packed in one GPU task
    max_parallel: int  # packs running at once: the parallel lanes
    instances: bool  # the run starts instances: it pays their start and idle tail per lane
    usd_per_gpu_hour: float  # what the ledger charges per GPU-hour of this run
    prices: dict[str, Price] | None = None  # a refreshed price table; None: flows.cost.prices.PRICES

    @property
    def price(self) -> Price:
        return price_of(self.instance_type, self.prices)

    @property
    def task_start_s(self) -> float:
        """GPU-seconds a pack pays before its first cell trains: an ECS task or a local process."""
        return TASK_START_S if self.backend == "ecs" else LOCAL_START_S


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
    """(training, validation) subjects, as autolabel.datasets.format.split_subjects divides them."""
    n = options.dataset.subjects if isinstance(options.dataset, SyntheticDataset) else HCP_SUBJECTS
    return split_counts(options.partition, n)


def image_pixels(options: Any) -> int:
    if options.image_size:
        return options.image_size[0] * options.image_size[1]
    if isinstance(options.dataset, SyntheticDataset):
        return options.dataset.rows * options.dataset.cols
    return REF_PIXELS


def work_of(cell: Cell, rounds: Span | None = None) -> Work:
    """The images a cell trains and validates, round by round, all repeats; or, with ``rounds``
    (from, to), only the stretch between those rounds (counted across repeats, to None: the end)."""
    o = cell.options
    n_train, n_val = split_sizes(o)
    plan = cell.plan.root
    start, stop = rounds or (0, None)
    stop = len(plan) * o.until if stop is None else min(stop, len(plan) * o.until)
    times = [0] * len(plan)  # how often each plan round falls in the stretch (once per repeat when whole)
    for g in range(start, stop):
        times[g % len(plan)] += 1
    per_round = tuple(
        (r.batch_size or o.batch_size, k * r.num_epochs * n_train, k * r.num_epochs * n_val)
        for r, k in zip(plan, times)
    )
    return Work(o.base_model, image_pixels(o) / REF_PIXELS, per_round)


def cell_work(cell: Cell) -> float:
    """A cell's work in GFLOP: how the ledger splits a pack's cost among its cells."""
    return work_of(cell).gflop


def train_seconds(work: Work, gpu: str, cells_per_gpu: int = 1, table: Table | None = None,
                  fused: bool = False) -> float:
    """The cell's share of GPU time for its images (start-up excluded); ``fused``: as one of a
    fused pack of ``cells_per_gpu`` (its measured figure)."""
    total = 0.0
    for batch, train, val in work.rounds:
        if fused:
            ips = pack_throughput(gpu, work.base_model, batch, cells_per_gpu, table)[0]
        else:
            ips, _ = throughput(gpu, work.base_model, batch, cells_per_gpu, table)
        total += (train + FORWARD_SHARE * val) * work.pixel_scale / ips
    return total


def resolve_gpu(gpu_or_instance: str) -> str:
    try:
        return price_of(gpu_or_instance).gpu
    except CostError:
        pass
    if gpu_or_instance in GPU_PEAK_TFLOPS:
        return gpu_or_instance
    raise CostError(f"unknown GPU or instance type {gpu_or_instance!r}; GPUs: {', '.join(GPU_PEAK_TFLOPS)}")


def cell_gpu_seconds(cell: Cell, gpu: str, cells_per_gpu: int = 1, table: Table | None = None,
                     start_s: float = TASK_START_S) -> float:
    """GPU-seconds a cell costs on ``gpu`` (a GPU like ``A10G`` or an instance type),
    with its share of its pack's start-up (``start_s``: an ECS task's by default)."""
    gpu = resolve_gpu(gpu)
    return train_seconds(work_of(cell), gpu, cells_per_gpu, table) + start_s / max(1, cells_per_gpu)


def cell_usd(cell: Cell, pricing: Pricing) -> float:
    """Dollars a cell costs as ``pricing`` runs it (its share of one wave's start-up): what the
    cap's subset search weighs it by."""
    seconds = cell_gpu_seconds(cell, pricing.price.gpu, pricing.cells_per_gpu, start_s=pricing.task_start_s)
    return seconds / 3600 * pricing.usd_per_gpu_hour


# ----------------------------------------------------------------------------- whole grid


@dataclass(frozen=True)
class Estimate:
    """GPU-hours, dollars and wall-clock for a set of cells on one instance type."""

    cells: int
    backend: str
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
    gpu_hours_overhead: float  # instance start and idle tail, per billed lane (0 without instances)
    usd_per_gpu_hour: float  # what this run pays: the ledger's rate
    usd_per_gpu_hour_on_demand: float
    usd_per_gpu_hour_spot: float
    spot_range: tuple[float, float]  # $/GPU-hour, cheapest and dearest zone
    wall_hours: float
    price_date: str
    price_where: str  # region (and zones) the prices hold for
    throughput: dict[str, float] = field(default_factory=dict)  # "resnet18 b4" -> images/s per GPU
    sources: list[str] = field(default_factory=list)
    cells_per_pack: int = 0  # the most cells one pack (GPU task) trains, in waves of cells_per_gpu
    task_start_s: float = 0.0  # each pack's start-up, in gpu_hours_cells

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
        """What this run would pay, as its ledger charges it."""
        return self.gpu_hours * self.usd_per_gpu_hour

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(gpu_hours=self.gpu_hours, usd_on_demand=self.usd_on_demand, usd_spot=self.usd_spot, usd=self.usd)
        return d


def lane_overhead_s(instances: bool) -> float:
    """GPU-seconds each parallel lane pays besides its packs: an instance's start and idle tail.
    ``instances=False`` is for GPUs already running (the local backend), which pay neither."""
    return INSTANCE_START_S + IDLE_TAIL_S if instances else 0.0


def billed_lanes(pricing: Pricing, packs: int) -> int:
    """GPUs a run pays for at once: its parallel lanes, rounded up to whole instances (AWS bills a
    p4d's 8 GPUs whether or not 8 tasks run on it)."""
    lanes = min(pricing.max_parallel, packs)
    if not pricing.instances:
        return lanes
    gpus = pricing.price.gpus
    return -(-lanes // gpus) * gpus


def lane_usd(pricing: Pricing, index: int, packs: int) -> float:
    """What the ``index``-th pack must reserve besides its cells: the start and idle tail of the
    instance it opens (a lane's first pack; on a multi-GPU instance the first of its GPUs, for the
    whole instance), else 0. The in-run cap holds it until the instances are charged."""
    if not pricing.instances or index >= min(pricing.max_parallel, packs) or index % pricing.price.gpus:
        return 0.0
    return pricing.price.gpus * lane_overhead_s(True) / 3600 * pricing.usd_per_gpu_hour


def make_packs(cells: list[Cell], cells_per_gpu: int) -> list[list[Cell]]:
    """Cells grouped as the runners pack them: same base model, batch size and inputs."""
    if cells_per_gpu <= 1:
        return [[c] for c in cells]
    groups: dict[tuple, list[Cell]] = {}
    for c in cells:
        groups.setdefault((c.options.base_model, c.options.batch_size, c.options.inputs), []).append(c)
    return [g[i : i + cells_per_gpu] for g in groups.values() for i in range(0, len(g), cells_per_gpu)]


@dataclass(frozen=True)
class Pack:
    """One GPU task's cells as the plan priced them: what a runner trains and the cap reserves."""

    index: int  # launch order; the first packs open the parallel lanes
    cells: tuple[Cell, ...]
    gpu_seconds: float  # the task's start-up plus its cells' training, at the pack's own size
    usd: float  # what its launch reserves under the cap: gpu_seconds at the run's rate
    lane_usd: float = 0.0  # (ECS) the start and idle tail of the instance it opens; else 0
    force: bool = False  # its cells are retrained (--force) rather than skipped when complete or resumed
    fused: bool = False  # trained as one vmapped model (--fused): a benchmark measured that faster
    rounds: Span | None = None  # halving: the stretch it trains (the trainer's --until-round); None: all
    at_once: int = 0  # cells training at a time when the pack holds waves of them; 0: all of them

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cells]

    def flags(self, force: bool) -> list[str]:
        """The trainer's flags for this pack (``python -m autolabel.train CELL ... FLAGS``), on
        either backend; ``force``: this launch retrains its cells (a retry resumes instead)."""
        waves = 0 < self.at_once < len(self.cells)
        return [*(["--force"] if force else []), *(["--fused"] if self.fused else []),
                *(["--threads", str(self.at_once), "--workers", "1"] if waves else []),
                *(["--until-round", str(self.until_round)] if self.until_round is not None else [])]

    @property
    def until_round(self) -> int | None:
        """Where its trainer stops each cell (``--until-round``); None: the end."""
        return self.rounds[1] if self.rounds else None

    @property
    def name(self) -> str:
        """How logs and task runs name it: the cell's label, or pack-<i>-<k>-cells."""
        return self.cells[0].label if len(self.cells) == 1 else f"pack-{self.index}-{len(self.cells)}-cells"


@dataclass
class _Wave:
    """Cells that train at once (make_packs), priced: what price_packs fills packs with."""

    cells: list[Cell]
    force: bool
    fused: bool
    train_s: float  # its cells' training, start-up excluded


def price_packs(cells: list[Cell], pricing: Pricing, forced: frozenset[str] = frozenset(), rounds: Span | None = None,
                first: int = 0) -> list[Pack]:
    """``cells`` in packs, each priced as ``pricing`` runs it: the one pricing of packs that the
    estimate, the in-run cap and the runners' time limits all read. Cells in ``forced`` (retrained
    under --force) pack apart from the others (a trainer's --force holds for all its cells).
    ``rounds``: only that stretch of each cell (halving); ``first``: the first pack's index (packs
    launched after others). A pack holds waves of cells (:func:`fill_packs`)."""
    gpu = pricing.price.gpu
    waves = []
    for force, group in [(True, [c for c in cells if c.id in forced]), (False, [c for c in cells if c.id not in forced])]:
        for wave in make_packs(group, pricing.cells_per_gpu):
            fused = rounds is None and fuses(wave, gpu)  # a halving stretch trains as cells (--until-round)
            train_s = sum(train_seconds(work_of(c, rounds), gpu, len(wave), fused=fused) for c in wave)
            waves.append(_Wave(wave, force, fused, train_s))
    filled = fill_packs(waves, pricing)
    packs = []
    for i, pack in enumerate(filled, first):
        seconds = pricing.task_start_s + sum(w.train_s for w in pack)
        members = tuple(c for w in pack for c in w.cells)
        packs.append(Pack(i, members, seconds, seconds / 3600 * pricing.usd_per_gpu_hour,
                          lane_usd(pricing, i, first + len(filled)), pack[0].force, pack[0].fused, rounds,
                          pricing.cells_per_gpu if len(pack) > 1 else 0))
    return packs


def fill_packs(waves: list[_Wave], pricing: Pricing) -> list[list[_Wave]]:
    """Waves in packs, one after another in their order: each pack takes waves until its training
    is at least ``task_start_s / START_SHARE`` (its start-up at most that share of it), or, where
    fewer packs would leave a parallel lane idle, the run's training / ``max_parallel``; and never
    past MAX_PACK_CELLS (a wave is never split). A fused wave and a wave of other cells (forced or
    not) start a pack of their own."""
    target = min(pricing.task_start_s / START_SHARE, sum(w.train_s for w in waves) / max(1, pricing.max_parallel))
    packs: list[list[_Wave]] = []
    for w in waves:
        last = packs[-1] if packs else None
        joins = (last is not None and not w.fused and not last[0].fused and last[0].force == w.force
                 and sum(x.train_s for x in last) < target
                 and sum(len(x.cells) for x in last) + len(w.cells) <= MAX_PACK_CELLS)
        if joins:
            last.append(w)
        else:
            packs.append([w])
    return packs


def price_stretches(groups: dict[Span, list[Cell]], pricing: Pricing, first: int = 0) -> list[Pack]:
    """Each stretch's cells in packs, priced (halving): never two stretches in one pack, since a pack
    stops all its cells at one round. The whole plan, (0, None), is priced as :func:`price_packs` does."""
    packs: list[Pack] = []
    for span, group in groups.items():
        packs += price_packs(group, pricing, rounds=None if span == (0, None) else span, first=first + len(packs))
    return packs


def fuses(group: list[Cell], gpu: str) -> bool:
    """Whether a pack trains fused: one shape throughout (base model and every round's batch size),
    and its benchmark figure faster fused than side by side (flows.cost.throughput.pack_throughput)."""
    shapes = {(c.options.base_model, tuple(r.batch_size or c.options.batch_size for r in c.plan.root)) for c in group}
    if len(group) < 2 or len(shapes) > 1:
        return False
    base_model, batches = shapes.pop()
    return all(pack_throughput(gpu, base_model, b, len(group))[2] for b in set(batches))


def estimate(cells: list[Cell], pricing: Pricing, packs: list[Pack] | None = None) -> Estimate:
    """Price ``cells`` as ``pricing`` runs them (in ``packs``, if already priced: the work is the packs'
    own, stretches of rounds included), ``pricing.max_parallel`` packs at once.

    Wall-clock: instance start (if paid), then packs placed greedily on the first free lane.
    """
    price, k, max_parallel, instances = pricing.price, pricing.cells_per_gpu, pricing.max_parallel, pricing.instances
    packs = price_packs(cells, pricing) if packs is None else packs
    works = [work_of(c, p.rounds) for p in packs for c in p.cells]  # a halved cell: one per stretch
    durations = [p.gpu_seconds for p in packs]
    lanes = min(max_parallel, len(packs))
    finish = [0.0] * lanes
    for d in durations:  # list scheduling: each pack goes to the lane that frees first
        heapq.heapreplace(finish, finish[0] + d)
    models = sorted({(w.base_model, b) for w in works for b, t, _ in w.rounds if t})
    rates = {f"{m} b{b}": throughput(price.gpu, m, b, k) for m, b in models}
    return Estimate(
        cells=len(cells),
        backend=pricing.backend,
        instance_type=pricing.instance_type,
        gpu=price.gpu,
        spot=pricing.spot,
        cells_per_gpu=k,
        max_parallel=max_parallel,
        packs=len(packs),
        train_images=sum(w.train_images for w in works),
        validation_images=sum(w.validation_images for w in works),
        pflop=sum(w.gflop for w in works) / 1e6,
        gpu_hours_cells=sum(durations) / 3600,
        gpu_hours_overhead=billed_lanes(pricing, len(packs)) * lane_overhead_s(instances) / 3600,
        usd_per_gpu_hour=pricing.usd_per_gpu_hour,
        usd_per_gpu_hour_on_demand=price.per_gpu(False),
        usd_per_gpu_hour_spot=price.per_gpu(True),
        spot_range=(price.spot_low / price.gpus, price.spot_high / price.gpus),
        wall_hours=((INSTANCE_START_S * instances + max(finish)) / 3600) if lanes else 0.0,
        price_date=price.date,
        price_where=price.where,
        throughput={name: round(v, 1) for name, (v, _) in rates.items()},
        sources=sorted({src for _, src in rates.values()} | {f"prices: {price.source}, {price.where}, {price.date}"}),
        cells_per_pack=max((len(p.cells) for p in packs), default=0),
        task_start_s=pricing.task_start_s,
    )
