"""The grid flow on the local backend, end to end under a real Prefect API.

One test trains real (tiny) cells; the orchestration tests (retry, cap, failed cell, rerun)
run the stand-in trainer (tests/stand_in_trainer.py), which writes real cell folders in a
fraction of a second and fails, diverges or dies by a real signal on request.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pytest

from flows import flow as grid_mod
from flows import grid as cli
from flows.cost import estimate
from flows.plan.prepare import prepare
from flows.run.local import LocalRunner
from flows.spec.cells import cell_dir, expand
from flows.spec.parse import load_spec
from tests.conftest import STAND_IN, launches, write_grid_spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_local_gpus(monkeypatch):
    """This machine as a CPU-only one (the local backend prices its GPUs)."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def run_flow(spec: Path, **kw):
    kw.setdefault("max_parallel", 2)
    kw.setdefault("retry_delay_s", 0.2)
    kw.setdefault("trainer", STAND_IN)
    return grid_mod.grid_search(spec=str(spec), return_state=True, **kw)


def metrics_of(grid_dir: Path) -> dict[str, dict]:
    out = {}
    for d in sorted((grid_dir / "cells").iterdir()):
        m = d / "metrics.json"
        if m.exists():
            out[d.name] = json.loads(m.read_text())
    return out


def faults(monkeypatch, **by_cell: str) -> None:
    """Ask the stand-in trainer for faults: cell id -> kill-once, fail or diverge."""
    monkeypatch.setenv("STAND_IN_FAULTS", json.dumps(by_cell))


@pytest.mark.slow
def test_tiny_grid_trains_for_real_and_publishes_artifacts(prefect_api, tmp_path):
    """The one flow test with the real trainer: python -m autolabel.train on tiny CPU cells."""
    spec = write_grid_spec(tmp_path, "tiny", {"lr": [0.003, 0.006], "inputs": ["full", "anat"]})
    # Two cells a pack (same inputs): two trainer processes instead of four, and packs in the flow.
    state = run_flow(spec, trainer=None, cells_per_gpu=2)
    assert state.is_completed(), state.message
    grid_dir = tmp_path / "tiny"
    metrics = metrics_of(grid_dir)
    assert len(metrics) == 4 and all(m["status"] == "complete" for m in metrics.values())
    assert all(m["device"].startswith("cpu") for m in metrics.values())  # the real trainer ran
    assert sorted(launches(d) for d in (grid_dir / "cells").iterdir()) == [1, 1, 1, 1]
    charges = [json.loads(x) for x in (grid_dir / "ledger.jsonl").read_text().splitlines()]
    assert sorted(len(e["cells"]) for e in charges if e["event"] == "charge") == [2, 2]

    # The summary's numbers are the cells' own.
    rows = json.loads((grid_dir / "summary.json").read_text())["rows"]
    assert {r["id"] for r in rows} == set(metrics)
    for r in rows:
        assert r["mean_dice"] == pytest.approx(metrics[r["id"]]["mean_dice"])
        assert r["status"] == "complete"
    for f in ("summary.csv", "summary.md"):
        assert (grid_dir / f).stat().st_size > 0
    assert {p.name for p in (grid_dir / "best").iterdir()} == {"full-area", "anat-area"}

    # Artifacts under the real API: the table, the markdown answer, the progress bar.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts()
    by_type = {}
    for a in arts:
        by_type.setdefault(a.type, []).append(a)
    assert any(a.key and a.key.startswith("tiny") for a in by_type["table"])
    md = [a for a in by_type["markdown"] if a.key and a.key.startswith("tiny")]
    assert md and "lr" in md[-1].data
    assert any(a.data == 100 or a.data == 100.0 for a in by_type["progress"])


def test_rerun_of_finished_grid_only_resummarizes(prefect_api, tmp_path):
    spec = write_grid_spec(tmp_path, "again", {"lr": [0.003]})
    assert run_flow(spec).is_completed()
    d = next((tmp_path / "again" / "cells").iterdir())
    before = (d / "metrics.json").read_text()
    assert run_flow(spec).is_completed()
    assert (d / "metrics.json").read_text() == before
    assert launches(d) == 1
    assert (tmp_path / "again" / "summary.json").is_file()


def test_transient_kill_is_retried_and_resumes(prefect_api, tmp_path, monkeypatch):
    spec = write_grid_spec(tmp_path, "flaky", {"lr": [0.003, 0.006]}, epochs=2)
    victim, other = (c.id for c in expand(load_spec(spec)))
    faults(monkeypatch, **{victim: "kill-once"})  # SIGKILL after its first epoch's checkpoint
    state = run_flow(spec)
    assert state.is_completed(), state.message
    d = cell_dir(tmp_path / "flaky", victim)
    assert (d / "stand-in-killed").exists() and launches(d) == 2
    assert launches(cell_dir(tmp_path / "flaky", other)) == 1
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs"] == 4
    assert "resum" in (d / "training.log").read_text().lower()  # the second launch continued from the checkpoint
    ledger = [json.loads(x) for x in (tmp_path / "flaky" / "ledger.jsonl").read_text().splitlines()]
    outcomes = [e["outcome"] for e in ledger if e["event"] == "charge" and victim in e["cells"]]
    assert outcomes == ["transient", "ok"]


def test_failed_and_diverged_cells_are_not_retried_others_complete(prefect_api, tmp_path, capsys, monkeypatch):
    spec = write_grid_spec(tmp_path, "mixed", {"lr": [0.003, 0.004, 0.005]})
    ok, bad, wild = expand(load_spec(spec))
    faults(monkeypatch, **{bad.id: "fail", wild.id: "diverge"})
    state = run_flow(spec)
    assert state.is_failed()
    rows = {r["id"]: r for r in json.loads((tmp_path / "mixed" / "summary.json").read_text())["rows"]}
    assert rows[ok.id]["status"] == "complete"
    assert rows[bad.id]["status"].startswith("failed") and rows[wild.id]["status"].startswith("diverged")
    for c in (bad, wild):  # permanent: never retried
        assert launches(cell_dir(tmp_path / "mixed", c)) == 1

    # From the CLI, a grid with failed cells still prints its table and exits 4.
    code = cli.run_grid(spec, max_parallel=2, retry_delay_s=0.2, trainer=STAND_IN)
    out = capsys.readouterr().out
    assert code == cli.EXIT_CELLS_FAILED
    assert "complete" in out and "failed" in out and "summary.md" in out


def test_cost_cap_stops_launches_and_ledger_says_why(prefect_api, tmp_path, monkeypatch):
    spec = write_grid_spec(tmp_path, "capped", {"lr": [0.003, 0.004, 0.005]})
    # This machine billed at $3600/h: the estimate (30 s of start-up a cell) is far over $1e-6.
    state = run_flow(spec, max_parallel=1, max_cost_usd=1e-6, on_cap="refuse", local_usd_per_hour=3600.0)
    assert state.is_failed() and "exceeds the cap" in state.message and "cover every level" in state.message
    assert not (tmp_path / "capped" / "cells").exists()

    # An estimate can be wrong: priced at $0/h (a CPU), but the machine bills $1 a second. The
    # measured spend, not the estimate, then stops further launches (a process per cell here, so
    # that there is a launch after the first to stop: filled, the three would share one).
    monkeypatch.setattr(estimate, "MAX_PACK_CELLS", 1)
    monkeypatch.setattr(grid_mod, "make_runner", lambda plan: LocalRunner(
        plan.grid_dir, replace(plan.pricing, usd_per_gpu_hour=3600.0), gpus=[], trainer=STAND_IN))
    monkeypatch.setenv("STAND_IN_EPOCH_S", "0.3")  # two epochs: > $0.6 a cell
    state = run_flow(spec, max_parallel=1, max_cost_usd=0.5)
    assert state.is_failed()
    ledger = [json.loads(x) for x in (tmp_path / "capped" / "ledger.jsonl").read_text().splitlines()]
    charges = [e for e in ledger if e["event"] == "charge"]
    skips = [e for e in ledger if e["event"] == "skip"]
    assert len(charges) == 1 and charges[0]["usd"] > 0.5
    assert len(skips) == 2 and all(s["reason"] == "cost cap" and s["spent_usd"] > 0.5 for s in skips)
    rows = json.loads((tmp_path / "capped" / "summary.json").read_text())["rows"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 2 and all(r["message"] == "cost cap" for r in skipped)


# The dry run and the run on the same flags: (flags, GPUs visible to the local backend).
ECS_FLAGS = ["ECS"]  # replaced by a moto stack's flags: the dry run and the run both read it
SPOT_ECS_FLAGS = ["SPOT_ECS"]  # ... a stack whose group launches Spot only
AGREE = [
    ([], ""),  # local CPU: $0, no cap
    (["--max-cost", "0"], ""),  # local CPU: $0 fits a $0 cap
    (["--max-cost", "0.01", "--local-usd-per-hour", "2"], ""),  # this machine billed: over
    (["--max-cost", "0.0001"], "0"),  # a local GPU at g5.xlarge's rate: over, refused
    (["--max-cost", "0.0001", "--on-cap", "subset"], "0"),  # ... and no subset fits
    (["--max-cost", "1", "--instance-type", "g6e.xlarge"], "0"),  # fits: it runs
    (["--max-cost", "0.2", "--max-parallel", "1", *ECS_FLAGS], ""),  # ECS: an instance's start and idle: over
    (["--max-cost", "0.25", "--spot", "--max-parallel", "4", "--on-cap", "subset", *SPOT_ECS_FLAGS], ""),  # 2 lanes
]


def stack_flags(stand_in) -> list[str]:
    return ["--backend", "ecs", *(x for k in ("cluster", "capacity_provider", "task_definition", "bucket")
                                  for x in ("--ecs", f"{k}={stand_in.settings()[k]}"))]


def test_dry_run_and_run_reach_the_same_verdict_and_dollars(prefect_api, tmp_path, capsys, monkeypatch, aws):
    """The issue's bug: the dry run priced a run other than the one its flags start."""
    from tests.ecs_emulator import StandIn, provision

    spot = StandIn.named(aws.endpoint, f"{aws.cluster}-spot")
    provision(spot, instances=0)
    spot.spot_only()
    stacks = {"ECS": stack_flags(aws), "SPOT_ECS": stack_flags(spot)}
    seen = set()
    for i, (flags, gpus) in enumerate(AGREE):
        flags = [x for f in flags for x in stacks.get(f, [f])]
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", gpus)
        (tmp_path / f"case{i}").mkdir()
        spec = write_grid_spec(tmp_path / f"case{i}", "agree", {"lr": [0.003, 0.004]})
        dry_code = cli.main([str(spec), "--dry-run", "--json", *flags])
        doc = json.loads(capsys.readouterr().out)
        assert dry_code == doc["exit_code"]
        args = cli.parse_args([str(spec), *flags])
        plan = prepare(spec, cli.run_settings(args))
        code = cli.run_grid(spec, **cli.run_params(args, plan), trainer=STAND_IN, retry_delay_s=0.2)
        out, err = capsys.readouterr()
        said = re.search(r"\(pre-flight: (.*)\)$", out.strip().splitlines()[-1]) if code == 0 else None
        verdict = said.group(1) if said else err.strip().split(": ", 1)[1]
        assert code == dry_code, (flags, doc["cap"], out, err)
        seen.add((doc["estimate"]["backend"], code, doc["estimate"]["usd"] > 0))
        if code == 0:
            assert verdict == doc["cap"]["verdict"], flags
        else:  # refused before any launch: the run's reason carries the dry run's estimate
            assert f"estimated ${doc['estimate']['usd']:.2f} " in verdict and "exceeds the cap" in verdict, flags
            assert not (tmp_path / f"case{i}" / "agree" / "cells").exists()
    # The cases cover both verdicts, both backends, free and billed local runs.
    assert {("local", 0, False), ("local", 0, True), ("local", 3, True), ("ecs", 3, True)} <= seen


def test_killed_flow_rerun_trains_only_missing_cells(prefect_api, tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL

    spec = write_grid_spec(tmp_path, "resume", {"lr": [0.002, 0.003, 0.004, 0.005]}, epochs=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    # The session's API server: both processes skip starting an ephemeral one (seconds each); the
    # killed run's flow run is left Running there, as a server would show it.
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    env["STAND_IN_EPOCH_S"] = "0.5"  # 4 epochs: 2 s a cell, so the kill lands mid-grid
    env["CUDA_VISIBLE_DEVICES"] = ""
    # run_grid is what `python -m flows.grid SPEC --max-parallel 1` calls (test_cli checks the hand-over).
    code = (f"import sys; from flows.grid import run_grid; "
            f"sys.exit(run_grid({str(spec)!r}, max_parallel=1, trainer={STAND_IN!r}))")
    cmd = [sys.executable, "-c", code]
    first_log = tmp_path / "first-run.log"
    with open(first_log, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cells_root = tmp_path / "resume" / "cells"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [d for d in cells_root.glob("*") if (d / "metrics.json").exists()] if cells_root.exists() else []
        if done:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done, "no cell finished before the deadline:\n" + first_log.read_text()[-3000:]
    first = {d.name: (d / "metrics.json").read_text() for d in done}
    assert len(first) < 4, "the kill came after the whole grid: nothing left to resume"

    # The rerun, in this process against the same API (the killed run's process is what had to die).
    code = cli.run_grid(spec, max_parallel=1, trainer=STAND_IN)
    out, err = capsys.readouterr()
    assert code == 0, out[-2000:] + err[-2000:]
    for name, text in first.items():
        assert (cells_root / name / "metrics.json").read_text() == text
        assert launches(cells_root / name) == 1
    assert all(json.loads((d / "metrics.json").read_text())["status"] == "complete" for d in cells_root.iterdir())
    assert "Traceback" not in out + err


# ----------------------------------------------------------------------------- stopping, and two runs at once


def session_processes(sid: int) -> list[int]:
    """Live processes of a session (what a terminal's job leaves behind): trainers, API servers."""
    left = []
    for d in Path("/proc").iterdir():
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[3] == str(sid) and fields[0] != "Z":
            left.append(int(d.name))
    return left


def processes_with_env(name: str, value: str) -> list[int]:
    """Live processes whose environment has name=value (the flow's API server runs in a session of its own)."""
    want, found = f"{name}={value}".encode(), []
    for d in Path("/proc").iterdir():
        try:
            if want in (d / "environ").read_bytes().split(b"\0") and (d / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(d.name))
        except (OSError, IndexError):
            continue
    return found


def flow_env(tmp_path: Path, own_api: Callable[[Path], Path] | None = None) -> dict[str, str]:
    """The flow's environment: the session's API server, or with ``own_api`` (the prefect_home
    fixture) a home of its own, where the command starts its temporary server."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(own_api(tmp_path / "prefect-home") if own_api else tmp_path / "prefect-home")
    if not own_api:  # the session's server: no temporary one to start (seconds)
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def start_flow(spec: Path, env: dict, log: Path, trainer: list[str] | None = STAND_IN, **params) -> subprocess.Popen:
    """``python -m flows.grid SPEC`` as run_grid runs it, in its own session (as a terminal's job)."""
    kw = ", ".join(f"{k}={v!r}" for k, v in {"max_parallel": 2, "trainer": trainer, **params}.items())
    code = f"import sys; from flows.grid import run_grid; sys.exit(run_grid({str(spec)!r}, {kw}))"
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_until(condition, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, "timed out:\n" + log.read_text()[-3000:]
        time.sleep(0.05)


def end_session(proc: subprocess.Popen, seconds: float = 15) -> list[int]:
    """Wait for the whole session to end; what is still alive after ``seconds`` (then killed)."""
    deadline = time.monotonic() + seconds
    while session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_processes(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    return left


@pytest.mark.parametrize("signum, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGHUP, False)],
                         ids=["ctrl-c-to-the-job", "sigterm-to-the-flow", "sighup-to-the-flow"])
def test_a_stopped_flow_checkpoints_summarizes_and_leaves_nothing(prefect_api, tmp_path, signum, to_group):
    spec = write_grid_spec(tmp_path, "stop", {"lr": [0.002, 0.003, 0.004]}, epochs=3)
    env = flow_env(tmp_path) | {"STAND_IN_EPOCH_S": "0.4"}  # 6 epochs: 2.4 s a cell
    log = tmp_path / "flow.log"
    cells = tmp_path / "stop" / "cells"
    proc = start_flow(spec, env, log)
    try:
        wait_until(lambda: any(cells.glob("*/history.csv")) if cells.exists() else False, proc, log)
        (os.killpg if to_group else os.kill)(proc.pid, signum)
        started = time.monotonic()
        proc.wait(timeout=30)
        took = time.monotonic() - started
    finally:
        left = end_session(proc)
    out = log.read_text()
    assert proc.returncode == 128 + signum, out[-3000:]
    assert took < 10 and not left, (took, left)  # within seconds of its trainers; no trainer or server behind
    assert "Traceback" not in out and "rerun the same command to resume" in out.splitlines()[-1]
    assert (tmp_path / "stop" / "summary.json").exists()
    stopped = [d for d in cells.iterdir() if (d / "checkpoint.pt").exists()]
    assert stopped and not any((d / "metrics.json").exists() for d in stopped)
    saved = {d.name: (d / "history.csv").read_text() for d in stopped}

    assert run_flow(spec).is_completed()  # the rerun, in this process: it resumes the stopped cells
    for d in cells.iterdir():
        rows = (d / "history.csv").read_text().splitlines()
        assert len(rows) == len(set(rows)) == 7  # header + 6 epochs, none twice
        assert (d / "history.csv").read_text().startswith(saved.get(d.name, ""))  # no checkpointed epoch lost
        assert json.loads((d / "metrics.json").read_text())["status"] == "complete"


def test_a_second_run_of_a_busy_grid_refuses_at_once_and_each_cell_trains_once(prefect_api, tmp_path, capsys):
    spec = write_grid_spec(tmp_path, "twice", {"lr": [0.002, 0.003]}, epochs=2)
    # The first run's trainers wait for `release` before training: the second run meets its lock
    # however long this loaded machine takes to start it.
    release = tmp_path / "release"
    env = flow_env(tmp_path) | {"STAND_IN_EPOCH_S": "0.3", "STAND_IN_HOLD": str(release)}
    log = tmp_path / "first.log"
    lock = tmp_path / "twice" / ".lock"
    first = start_flow(spec, env, log)
    try:
        wait_until(lock.exists, first, log)
        # The second run, in this process (a run that finds the grid busy, however it was started).
        second = cli.run_grid(spec, max_parallel=2, trainer=STAND_IN)
        out, err = capsys.readouterr()
        release.touch()
        first.wait(timeout=120)
    finally:
        end_session(first)
    assert second == 75, out[-2000:] + err[-2000:]
    assert f"busy: held by pid {first.pid}" in err and "Traceback" not in out + err
    assert first.returncode == 0, log.read_text()[-3000:]
    cells = list((tmp_path / "twice" / "cells").iterdir())
    assert len(cells) == 2 and all(launches(d) == 1 for d in cells)
    charged = [json.loads(line) for line in (tmp_path / "twice" / "ledger.jsonl").read_text().splitlines()]
    assert sorted(c for e in charged if e["event"] == "charge" for c in e["cells"]) == sorted(d.name for d in cells)


@pytest.mark.slow
@pytest.mark.usefixtures("checkpoint_every_epoch")  # "the first epoch is saved", below
def test_sigkill_of_the_flow_the_real_trainers_checkpoint_and_its_api_server_goes(prefect_api, tmp_path, one_thread,
                                                                                   prefect_home):
    """The real trainer and the command's own temporary API server: SIGKILL to the flow alone."""
    spec = write_grid_spec(tmp_path, "killed", {"lr": [0.002]}, epochs=2,
                           static={"dataset": {"kind": "synthetic", "seed": 3, "subjects": 8, "rows": 32, "cols": 32}})
    env = flow_env(tmp_path, own_api=prefect_home) | {"OMP_NUM_THREADS": "1"}
    log = tmp_path / "flow.log"
    proc = start_flow(spec, env, log, trainer=None, max_parallel=1)
    (cell,) = [cell_dir(tmp_path / "killed", c) for c in expand(load_spec(spec))]
    try:
        wait_until(lambda: (cell / "history.csv").exists(), proc, log, seconds=240)
        # The first epoch is saved and the second starts at once: half an epoch later it is in
        # progress (history.csv is written just after the checkpoint, so a kill right then would
        # find no epoch in progress). Read before the kill: an epoch ending in between counts after.
        first = (cell / "history.csv").read_text().splitlines()
        time.sleep(0.5 * float(first[1].rsplit(",", 1)[1]))
        at_kill = (cell / "history.csv").read_text().splitlines()
        os.kill(proc.pid, signal.SIGKILL)
        left = end_session(proc, seconds=30)
    finally:
        end_session(proc, seconds=0)
    assert not left, left  # the trainer (PR_SET_PDEATHSIG SIGTERM) is gone
    # The API server got SIGTERM when the flow died; it shuts down within its graceful timeout.
    deadline = time.monotonic() + 15
    while processes_with_env("PREFECT_HOME", env["PREFECT_HOME"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not processes_with_env("PREFECT_HOME", env["PREFECT_HOME"]), "the temporary API server outlived the flow"
    rows = (cell / "history.csv").read_text().splitlines()
    assert (cell / "checkpoint.pt").exists() and not (cell / "metrics.json").exists()
    assert len(rows) > len(at_kill), (cell / "training.log").read_text()  # it finished and saved the epoch in progress

    assert run_flow(spec, trainer=None, max_parallel=1).is_completed()
    after = (cell / "history.csv").read_text().splitlines()
    assert after[: len(rows)] == rows and len(after) == 1 + 4  # resumed: nothing lost, nothing twice


def test_a_run_never_deletes_what_it_did_not_write(prefect_api, tmp_path, capsys):
    spec = write_grid_spec(tmp_path, "mine", {"lr": [0.003, 0.004]})
    theirs = {"plots/figure1.png": b"a figure", "best/final-model/model.pt": b"weights", "summary.md": b"# notes"}

    def put(folder: Path) -> None:
        for name, data in theirs.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)

    # --out at a folder of the user's: refused by the dry run and the run, one line, nothing touched.
    users = tmp_path / "figures"
    put(users)
    for flags in (["--dry-run"], []):
        assert cli.main([str(spec), "--out", str(users), *flags]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and f"--out {users}: holds files that are not a grid's" in err
    assert {p.relative_to(users).as_posix() for p in users.rglob("*") if p.is_file()} == set(theirs)

    # In a grid's own folder the summary rewrites only its own plots/, best/<stratum>/ and summary.*.
    assert run_flow(spec).is_completed()
    grid = tmp_path / "mine"
    put(grid)
    (grid / "summary.md").unlink()  # summary.md is the summary's: the user's copy above was in their folder
    assert run_flow(spec).is_completed()  # a rerun rebuilds the summary
    for name in ("plots/figure1.png", "best/final-model/model.pt"):
        assert (grid / name).read_bytes() == theirs[name], name
    assert (grid / "plots" / "dice_by_lr.png").is_file() and (grid / "best" / "full-area" / "best.json").is_file()


def test_a_disk_that_fills_during_the_summary_is_one_line_exit_74_and_keeps_what_is_done(prefect_api, tmp_path,
                                                                                        small_disk, capsys):
    from tests.conftest import fill

    disk = small_disk(4096)
    spec = write_grid_spec(tmp_path, "g", {"lr": [0.003, 0.004]})
    out = disk / "g"
    assert cli.run_grid(spec, out_dir=out, trainer=STAND_IN, retry_delay_s=0.2) == 0
    cells = {p: p.read_bytes() for p in (out / "cells").rglob("*") if p.is_file() and p.name != ".lock"}
    (out / "plots" / "dice_by_lr.png").unlink()  # the rerun must draw it again: the disk fills there
    spare = disk / "spare"
    spare.write_bytes(b"\0" * 16384)
    fill(disk)
    spare.unlink()  # a few pages left: the lock and the small files fit, the pictures do not
    capsys.readouterr()
    code = cli.run_grid(spec, out_dir=out, trainer=STAND_IN, retry_delay_s=0.2)
    said, err = capsys.readouterr()
    assert code == 74, err
    assert "Traceback" not in said + err and "disk full at " in err and "free space, then rerun" in err
    assert err.count("disk full at ") == 1
    assert not [p for p in out.rglob("*.png") if p.stat().st_size == 0], "a 0-byte picture was left"
    assert {p: p.read_bytes() for p in cells} == cells, "nothing done was lost"


def test_a_stopped_force_run_resumes_what_it_had_not_finished_and_retrains_nothing_twice(prefect_api, tmp_path):
    """The issue's case: --force, SIGTERM after 2 of 4 cells are retrained, then the same command."""
    spec = write_grid_spec(tmp_path, "forced", {"lr": [0.002, 0.003, 0.004, 0.005]}, epochs=3)
    assert run_flow(spec).is_completed()  # a finished grid, for --force to retrain
    grid = tmp_path / "forced"
    cells = sorted((grid / "cells").iterdir())
    assert [launches(c) for c in cells] == [1, 1, 1, 1]
    env = flow_env(tmp_path) | {"STAND_IN_EPOCH_S": "0.4"}  # 6 epochs: 2.4 s a cell, 2 at a time
    log = tmp_path / "flow.log"
    proc = start_flow(spec, env, log, force=True)
    try:
        # The first pair retrained and the second pair half-way: their checkpoints are on disk.
        wait_until(lambda: sum(launches(c) == 2 for c in cells) == 4 and
                   sum((c / "checkpoint.pt").exists() for c in cells) == 2, proc, log)
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        end_session(proc)
    assert proc.returncode == 143, log.read_text()[-3000:]
    finished = [c for c in cells if not (c / "checkpoint.pt").exists()]
    stopped = [c for c in cells if (c / "checkpoint.pt").exists()]
    assert len(finished) == len(stopped) == 2
    assert set(json.loads((grid / "forced.json").read_text())["retrained"]) == {c.name for c in cells}
    kept = {c: (c / "metrics.json").read_text() for c in finished}

    assert run_flow(spec, force=True).is_completed()  # the same command: it resumes
    assert all(launches(c) == 2 for c in finished), "a cell the forced run finished is not retrained again"
    assert all((c / "metrics.json").read_text() == kept[c] for c in finished)
    for c in stopped:
        assert launches(c) == 3 and "resumed from checkpoint.pt" in (c / "training.log").read_text()
    assert not (grid / "forced.json").exists(), "the forced run is over"
    assert all(json.loads((c / "metrics.json").read_text())["status"] == "complete" for c in cells)


@pytest.mark.slow
def test_a_dead_prefect_api_ends_the_run_in_one_line_after_the_cells_checkpoint(prefect_api, tmp_path, prefect_home):
    """A `prefect server` the test starts, killed while cells train: exit 69 and one line naming the
    API and how to resume, once every running cell has checkpointed; the rerun resumes."""
    from tests.prefect_server import prefect_server_process

    spec = write_grid_spec(tmp_path, "noapi", {"lr": [0.002, 0.003, 0.004]}, epochs=10)
    cells = tmp_path / "noapi" / "cells"
    log = tmp_path / "flow.log"
    with prefect_server_process(prefect_home(tmp_path / "server-home")) as (server, env):
        api = env["PREFECT_API_URL"]
        proc = start_flow(spec, env | {"STAND_IN_EPOCH_S": "0.3", "CUDA_VISIBLE_DEVICES": ""}, log)  # 6 s a cell
        try:
            wait_until(lambda: any(cells.glob("*/history.csv")) if cells.exists() else False, proc, log)
            os.killpg(server.pid, signal.SIGKILL)
            started = time.monotonic()
            proc.wait(timeout=120)
            took = time.monotonic() - started
        finally:
            left = end_session(proc)
    out = log.read_text()
    assert proc.returncode == 69, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert f"the Prefect API at {api} is gone" in last and "rerun the same command to resume" in last, last
    assert took < 60 and not left, (took, left)
    stopped = [d for d in cells.iterdir() if (d / "checkpoint.pt").exists()]
    assert stopped and not any((d / "metrics.json").exists() for d in stopped), "stopped cells checkpointed"
    assert run_flow(spec).is_completed()  # the rerun (this session's API) resumes them
    assert all(json.loads((d / "metrics.json").read_text())["status"] == "complete" for d in cells.iterdir())
