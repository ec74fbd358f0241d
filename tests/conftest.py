"""Shared fixtures: a private dataset cache, tiny cell folders, and a real S3 (moto) server over HTTP."""

from __future__ import annotations

import itertools
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from autolabel.control import CHECKPOINT_ENV

# Seconds each slow file's tests take under `make test` (2 workers on this project's 2-core
# machine, 2026-12-06); files sharing a session-wide build (tests.conftest.built_once) are one
# entry, so that one worker builds it and runs them. Every other file takes a few seconds at most.
FILE_SECONDS: dict[tuple[str, ...], float] = {
    ("test_flow.py",): 147, ("test_runner.py",): 107, ("test_science.py", "test_predict.py"): 67,
    ("test_train.py",): 57, ("test_pack.py",): 57, ("test_fused.py",): 54, ("test_cell.py",): 39,
    ("test_gpu_throughput.py",): 36, ("test_halving.py",): 33, ("test_ui.py",): 26, ("test_deploy.py",): 25,
    ("test_capacity.py",): 21, ("test_halving_ecs.py",): 21, ("test_grid.py",): 15, ("test_artifacts.py",): 11,
}  # fmt: skip


def pytest_collection_modifyitems(items: list) -> None:
    """One lane per pytest-xdist worker, of equal seconds: each its slow files first, then quick
    tests up to its share of the count.

    Work stealing (`make test`: -n 3 --dist worksteal) hands the first share of the items to one
    worker, the next share to the next, and a worker that runs out takes the tail of another's
    queue: with each share's slow files first, the workers end on quick tests, together, instead
    of one waiting on a long test picked up last."""
    workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    group_of = {name: group for group in FILE_SECONDS for name in group}
    slow: dict[tuple[str, ...], list] = {group: [] for group in FILE_SECONDS}
    quick = []
    for item in items:
        group = group_of.get(item.path.name)
        (slow[group] if group else quick).append(item)
    lanes: list[list] = [[] for _ in range(workers)]
    seconds = [0.0] * workers
    for group in sorted(FILE_SECONDS, key=FILE_SECONDS.get, reverse=True):  # greedy: the emptiest lane
        if slow[group]:
            lane = seconds.index(min(seconds))
            lanes[lane] += [item for name in group for item in slow[group] if item.path.name == name]
            seconds[lane] += FILE_SECONDS[group]
    ordered, left = [], len(items)
    for i, lane in enumerate(lanes):  # the share xdist sends each idle worker: what is left / workers left
        share = left // (workers - i)
        take = max(0, share - len(lane))
        ordered += lane + quick[:take]
        quick = quick[take:]
        left -= len(lane) + take
    items[:] = ordered + quick


@pytest.fixture(scope="session", autouse=True)
def autolabel_cache(tmp_path_factory) -> Path:
    """Every test generates synthetic cohorts into one session-wide temp cache, never into ~/.cache."""
    path = tmp_path_factory.mktemp("autolabel-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AUTOLABEL_CACHE", str(path))
        # The trainer's own interval (60 s): a tiny cell checkpoints when stopped, paused or
        # killed by a signal it can catch, not after every epoch (a checkpoint of ResNet-18 and
        # its Adam state is 214 MB, 0.4 s here, as long as a tiny epoch). A test that kills a
        # trainer outright asks for every epoch's (the fixture checkpoint_every_epoch).
        mp.delenv(CHECKPOINT_ENV, raising=False)
        if os.environ.get("PYTEST_XDIST_WORKER"):
            # make test runs three workers on two cores: one thread each, in-process and in the
            # trainers they start (more threads than free cores makes OpenMP spin).
            import torch

            mp.setenv("OMP_NUM_THREADS", "1")
            torch.set_num_threads(1)
        yield path


@pytest.fixture
def checkpoint_every_epoch(monkeypatch) -> None:
    """Trainers (in this process and the ones it starts) checkpoint after every epoch, so that a
    SIGKILL or an exception after an epoch resumes from that epoch."""
    monkeypatch.setenv(CHECKPOINT_ENV, "0")


def tiny_options(**overrides: Any) -> dict:
    """options.json for a tiny CPU cell (12 subjects, 32x64); overrides replace top-level fields."""
    options = {"device": "cpu", "dataset": {"kind": "synthetic", "subjects": 12, "rows": 32, "cols": 64}}
    return options | overrides


def tiny_plan(rounds: int = 1, epochs: int = 1, **fields: Any) -> list[dict]:
    """plan.json: ``rounds`` rounds of ``epochs`` epochs with the published lr/bce_weight schedule."""
    return [
        {"lr": 0.003 * (1 - r / 3), "bce_weight": 0.75 * (1 - r / 2) if r < 2 else 0.0, "num_epochs": epochs} | fields
        for r in range(rounds)
    ]


@pytest.fixture
def make_cell(tmp_path) -> Callable[..., Path]:
    """``make_cell(options=..., plan=..., name=...)`` writes a cell folder; raw strings are written verbatim."""

    def make(options: Any = None, plan: Any = None, name: str = "cell") -> Path:
        cell = tmp_path / name
        cell.mkdir(parents=True, exist_ok=True)
        for file, value in (("options.json", options), ("plan.json", plan)):
            value = {"options.json": tiny_options(), "plan.json": tiny_plan()}[file] if value is None else value
            (cell / file).write_text(value if isinstance(value, str) else json.dumps(value))
        return cell

    return make


def s3_read_json(uri: str) -> Any:
    """A JSON object from S3 (what a test reads back from a remote cell)."""
    from autolabel import storage

    bucket, key = storage.split_s3(uri)
    return json.loads(storage.s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())


def s3_upload_dir(src: Path, uri: str) -> None:
    """Upload every file under ``src`` to ``uri``, keeping relative paths."""
    from autolabel import storage

    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        storage.upload_file(path, storage.join(uri, path.relative_to(src).as_posix()))


@pytest.fixture(scope="session")
def moto_endpoint() -> str:
    """A moto S3 server on a free local port for the whole session (real HTTP, no AWS)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_env(moto_endpoint, monkeypatch) -> dict[str, str]:
    """Point boto3 (and autolabel.storage) at the moto server with dummy credentials; returns the env."""
    from autolabel import storage

    env = {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    storage._client.cache_clear()
    yield env
    storage._client.cache_clear()


@pytest.fixture
def s3_bucket(s3_env, request) -> str:
    """A fresh bucket on the moto server, named after the test."""
    import re

    from autolabel import storage

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") or "bucket"
    storage.s3_client().create_bucket(Bucket=name)
    return name


def migrated_once(tmp_path_factory) -> Path:
    """The folder of the session's migrated Prefect database (tests/prefect_server.py), built once."""
    from tests.prefect_server import migrated_database

    return built_once(tmp_path_factory, "prefect-database", migrated_database)


@pytest.fixture(scope="session", autouse=True)
def migrate_early(request, tmp_path_factory) -> None:
    """Where a test of the session needs a Prefect server, its database is migrated in the background
    from the first test on: the first test that needs it no longer waits for the migrations (about
    8 s), and under pytest-xdist the other worker does not idle behind the lock meanwhile."""
    import threading

    if any("prefect_home" in item.fixturenames for item in request.session.items):  # prefect_api's too
        threading.Thread(target=migrated_once, args=(tmp_path_factory,), daemon=True).start()


@pytest.fixture(scope="session")
def prefect_home(tmp_path_factory) -> Callable[[Path], Path]:
    """``prefect_home(path)``: a PREFECT_HOME for a server of a test's own (``prefect server start``
    or the command's temporary one), holding a copy of a database migrated once per session."""
    from tests.prefect_server import seed_home

    migrated = migrated_once(tmp_path_factory)
    return lambda home: seed_home(home, migrated)


@pytest.fixture(scope="session")
def prefect_api(prefect_home, tmp_path_factory) -> str:
    """A real (temporary, local) Prefect API for the whole session, its URL; each test worker has
    its own, started on a copy of the migrated database."""
    from tests.prefect_server import api_in_process

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    with api_in_process(prefect_home(tmp_path_factory.mktemp("prefect-api"))) as url:
        yield url


# ----------------------------------------------------------------------------- AWS, in moto


@pytest.fixture(scope="module")
def ecs_moto():
    """One moto server per test module, for ECS, EC2, Auto Scaling, S3 and Logs; each test gets
    its own names in it (see ``aws``)."""
    from tests.ecs_emulator import start_moto

    server, endpoint = start_moto()
    yield endpoint
    server.stop()


_names = itertools.count()


@pytest.fixture
def aws(ecs_moto, monkeypatch):
    """A bucket, cluster, capacity provider, ... of this test's own (a tests.ecs_emulator.StandIn
    provisioned like the stack); env pointed at moto."""
    from autolabel import storage
    from tests.ecs_emulator import REGION, StandIn, provision

    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", ecs_moto)
    # moto has no Price List API: refused at once (nothing listens on the discard port), so prices
    # fall back to the table; tests.price_emulator.PriceList answers where a test needs prices.
    monkeypatch.setenv("AWS_ENDPOINT_URL_PRICING", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    storage._client.cache_clear()
    stand_in = StandIn.named(ecs_moto, f"t{next(_names)}")
    provision(stand_in)
    yield stand_in
    storage._client.cache_clear()


# ----------------------------------------------------------------------------- a disk that fills


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(kib)``: a fresh tmpfs of that size (a real disk that fills: ENOSPC), unmounted
    afterwards. Needs root and mount(2); where they are missing, the test that asks skips, saying why."""
    import subprocess

    mounted: list[Path] = []

    def mount(kib: int) -> Path:
        where = tmp_path / f"disk{len(mounted)}"
        where.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(where)],
                              capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}): no full disk to test")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte; the filler file, to delete to free the space again."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: each write meets the disk at once
        for chunk in (1 << 20, 4096, 1):  # big strides first, then the last pages' worth
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


# ----------------------------------------------------------------------------- shared between the workers


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder that ``build`` fills once per test session and tests only read: under pytest-xdist
    each worker would otherwise build it again for its own module-scoped fixture (real training,
    tens of seconds). The first worker builds it under a lock; the others wait for it, then read it."""
    import fcntl
    import shutil

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this session's folder, above each worker's own
    path, done = base / name, base / f"{name}.built"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            done.touch()
    return path


def train_quietly(cells: dict[str, tuple[dict, list]], root: Path) -> None:
    """Write each named cell (options, plan) under ``root`` and train them all in this process (CPU, batch 2
    unless the options say otherwise), keeping their output off the test's."""
    import contextlib
    import io

    from autolabel import train
    from autolabel.control import RunControl

    for name, (options, plan) in cells.items():
        (root / name).mkdir()
        (root / name / "options.json").write_text(json.dumps({"device": "cpu", "batch_size": 2} | options))
        (root / name / "plan.json").write_text(json.dumps(plan))
    with contextlib.redirect_stdout(io.StringIO()):
        assert train.train_cells([str(root / n) for n in cells], RunControl()) == 0


# The science check's pair of cells: area labels, inputs full and anat, two rounds (2 + 1 epochs) at
# batch 2. On the fsaverage cohort (real anatomy, the Benson 2014 atlas; 32 subjects at 32x64) it is
# trained once per session: test_science checks that full inputs beat anatomy alone on it, and
# test_predict labels fsaverage5 with its anat cell.
FSAVERAGE_PAIR_DATASET = {"kind": "fsaverage", "subjects": 32, "rows": 32, "cols": 64}
SCIENCE_PLAN = [{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 2}, {"lr": 0.001, "bce_weight": 0.0, "num_epochs": 1}]
PAIR = ("full", "anat")


def train_pair(root: Path, dataset: dict) -> None:
    """Train the pair on ``dataset`` into ``root``/full and ``root``/anat; ``root``/seconds.txt says how long it took."""
    import time

    started = time.perf_counter()
    options = {"prediction": "area", "dataset": dataset}
    train_quietly({inputs: (options | {"inputs": inputs}, SCIENCE_PLAN) for inputs in PAIR}, root)
    (root / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}")


def pair_cells(root: Path) -> dict[str, Path]:
    """The cell folders of a pair :func:`train_pair` trained into ``root``, by input set."""
    return {inputs: root / inputs for inputs in PAIR}


@pytest.fixture(scope="session")
def fsaverage_pair(tmp_path_factory) -> dict[str, Path]:
    """The full and anat cell folders of the fsaverage pair, trained once for the whole session."""
    return pair_cells(built_once(tmp_path_factory, "fsaverage-pair", lambda root: train_pair(root, FSAVERAGE_PAIR_DATASET)))


# ----------------------------------------------------------------------------- the flows' cost model


@pytest.fixture
def seed_throughput(monkeypatch):
    """The throughput table of the seed figures alone, so hand-checked numbers hold whatever
    benchmark files benchmarks/throughput/ holds (test_throughput checks the committed file)."""
    from flows.cost import throughput

    seeds = throughput.throughput_table([])
    monkeypatch.setattr(throughput, "default_table", lambda: seeds)
    return seeds


def grid_cells(hyper: dict, **static: Any) -> list:
    """The cells of a spec with these hyper factors and static values (until 2 unless given)."""
    from flows.spec.cells import expand
    from flows.spec.parse import check_spec

    return expand(check_spec({"name": "t", "static": {"until": 2, **static}, "hyper": hyper}))


# ----------------------------------------------------------------------------- the flow's stand-in trainer

# `python -m tests.stand_in CELL...`: real cell folders, no training (see tests/stand_in_trainer.py).
STAND_IN = [sys.executable, "-m", "tests.stand_in"]
TINY_DATASET = {"kind": "synthetic", "seed": 3, "subjects": 12, "rows": 32, "cols": 64}


def pricing_for(backend: str = "local", max_parallel: int = 1, usd_per_hour: float = 0.0, **fields: Any):
    """A run's Pricing as a test wants it (flows.cost.estimate.Pricing): packs at once, the rate billed."""
    from flows.cost.estimate import Pricing

    return Pricing(**{"backend": backend, "instance_type": "g5.xlarge", "spot": False, "cells_per_gpu": 1,
                      "max_parallel": max_parallel, "instances": backend == "ecs", "usd_per_gpu_hour": usd_per_hour,
                      **fields})


def pack_of(*cells, gpu_seconds: float = 60.0, index: int = 0, fused: bool = False):
    """The cells as one priced pack (flows.cost.estimate.Pack), what a runner trains."""
    from flows.cost.estimate import Pack

    return Pack(index, tuple(cells), gpu_seconds, 0.0, fused=fused)


def write_grid_spec(tmp: Path, name: str, hyper: dict, static: dict | None = None, epochs: int = 1) -> Path:
    """A two-round grid spec of tiny CPU cells in ``tmp``; its output folder is ``tmp/name``."""
    import yaml

    static = {"dataset": TINY_DATASET, "partition": 0.25, "batch_size": 4, "until": 1, "device": "cpu",
              **(static or {})}
    spec = {
        "name": name,
        "static": {k: v for k, v in static.items() if k not in hyper},
        "hyper": hyper,
        "plan": [{"num_epochs": epochs, "gamma": 0.9}, {"num_epochs": epochs, "gamma": 0.9}],
        "plan_scale": {"lr": [1.0, 0.5], "bce_weight": [1.0, 0.0]},
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def launches(cell: Path) -> int:
    """How many times the local runner started a trainer on this cell (its runner.log's command lines)."""
    log = cell / "runner.log"
    return sum(1 for line in log.read_text().splitlines() if line.startswith("$ ")) if log.exists() else 0


# 8 subjects at 32x32 (6 train / 2 validation): an epoch of a tiny cell takes well under a second on one core.
SMALL = {"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 32}
# Adam at lr 10 with BCE and Dice mixed blows the validation loss up to NaN in the first epoch.
DIVERGING_PLAN = [{"lr": 10, "bce_weight": 0.5, "num_epochs": 3, "batch_size": 6}]


def metrics_of(cell: Path):
    """The cell's metrics.json as CellMetrics (the trainer's tests read it back this way)."""
    from autolabel.options import CellMetrics

    return CellMetrics.model_validate_json((cell / "metrics.json").read_text())


def history_rows(cell: Path) -> list[dict]:
    """history.csv as a list of dicts (strings, as written)."""
    import csv

    with open(cell / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def epoch_keys(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(repeat, round, epoch) of each history row."""
    return [(r["repeat"], r["round"], r["epoch"]) for r in rows]


@pytest.fixture
def one_thread(monkeypatch):
    """One OpenMP thread: tests share two cores, and more threads than free cores makes OpenMP spin."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def torch_one_thread():
    """torch on one thread for a test that runs a model directly (the trainer sets its own threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_model(seed: int = 0):
    """A seeded U-Net for 3 input channels and 2 labels (the step and checkpoint tests)."""
    import torch

    from autolabel.model import build_model

    torch.manual_seed(seed)
    return build_model("resnet18", 3, 2)


def tiny_batch(n: int = 2, seed: int = 0):
    """(x [n,3,32,32], y [n,2,32,32] of 0/1) for :func:`tiny_model`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), (torch.rand(n, 2, 32, 32, generator=g) > 0.5).float()


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """A summarised 108-cell grid (tests/summary_grid.py), shared by the read-only tests of a module."""
    from tests.summary_grid import summarised_grid

    return summarised_grid(tmp_path_factory)
