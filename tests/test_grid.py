"""The grid flow on the local backend, end to end under a real Prefect API.

Cells are real (tiny) trainings in subprocesses; faults are real signals.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from flows import grid as grid_mod
from flows.cells import cell_dir
from flows.runners import LocalRunner

pytestmark = pytest.mark.slow

TINY = {"kind": "synthetic", "seed": 3, "subjects": 12, "rows": 32, "cols": 64}


def write_spec(tmp: Path, name: str, hyper: dict, static: dict | None = None, epochs: int = 1) -> Path:
    static = {"dataset": TINY, "partition": 0.25, "batch_size": 4, "until": 1, "device": "cpu", **(static or {})}
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


def run_flow(spec: Path, **kw):
    kw.setdefault("max_parallel", 2)
    kw.setdefault("retry_delay_s", 0.5)
    return grid_mod.grid_search(spec=str(spec), return_state=True, **kw)


def metrics_of(grid_dir: Path) -> dict[str, dict]:
    out = {}
    for d in sorted((grid_dir / "cells").iterdir()):
        m = d / "metrics.json"
        if m.exists():
            out[d.name] = json.loads(m.read_text())
    return out


def launches(d: Path) -> int:
    """How many times the runner started the trainer on this cell."""
    log = d / "runner.log"
    return sum(1 for line in log.read_text().splitlines() if line.startswith("$ ")) if log.exists() else 0


def test_tiny_grid_runs_and_publishes_artifacts(prefect_api, tmp_path):
    spec = write_spec(tmp_path, "tiny", {"lr": [0.003, 0.006], "inputs": ["full", "anat"]})
    state = run_flow(spec)
    assert state.is_completed(), state.message
    grid_dir = tmp_path / "tiny"
    metrics = metrics_of(grid_dir)
    assert len(metrics) == 4 and all(m["status"] == "complete" for m in metrics.values())

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
    spec = write_spec(tmp_path, "again", {"lr": [0.003]})
    assert run_flow(spec).is_completed()
    d = next((tmp_path / "again" / "cells").iterdir())
    before = (d / "metrics.json").read_text()
    assert run_flow(spec).is_completed()
    assert (d / "metrics.json").read_text() == before
    assert launches(d) == 1


def killer_python(tmp: Path, victim: str) -> Path:
    """A stand-in interpreter that SIGKILLs itself mid-training once, for one cell."""
    shim = tmp / "python-killed-once"
    shim.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import os, signal, subprocess, sys, time
        from pathlib import Path
        marker = Path({str(tmp)!r}) / "killed-once"
        cells = [Path(a) for a in sys.argv[3:] if not a.startswith("-")]
        proc = subprocess.Popen([{sys.executable!r}, *sys.argv[1:]])
        if not marker.exists() and any(c.name == {victim!r} for c in cells):
            ckpt = cells[0] / "checkpoint.pt"
            while not ckpt.exists() and proc.poll() is None:
                time.sleep(0.05)
            marker.touch()
            proc.kill()
            os.kill(os.getpid(), signal.SIGKILL)
        sys.exit(proc.wait())
        """))
    shim.chmod(0o755)
    return shim


def test_transient_kill_is_retried_and_resumes(prefect_api, tmp_path, monkeypatch):
    spec = write_spec(tmp_path, "flaky", {"lr": [0.003, 0.006]}, epochs=2)
    from flows import cells as cells_mod, spec as spec_mod

    cells = cells_mod.expand(spec_mod.load_spec(spec))
    victim = cells[0].id
    shim = killer_python(tmp_path, victim)
    real = grid_mod.make_runner
    monkeypatch.setattr(
        grid_mod, "make_runner",
        lambda backend, grid_dir, max_parallel, *a: LocalRunner(grid_dir, max_parallel, python=str(shim)),
    )
    state = run_flow(spec)
    assert state.is_completed(), state.message
    assert (tmp_path / "killed-once").exists()
    d = cell_dir(tmp_path / "flaky", victim)
    assert launches(d) == 2
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["status"] == "complete" and metrics["epochs"] == 4
    log = (d / "training.log").read_text()
    assert "resum" in log.lower()  # the second launch continued from the checkpoint
    monkeypatch.setattr(grid_mod, "make_runner", real)


def test_invalid_cell_fails_without_retry_others_complete(prefect_api, tmp_path, capsys):
    bad = {"train": ["s0000", "s0001"], "validation": ["no-such-subject"]}
    spec = write_spec(tmp_path, "mixed", {"lr": [0.003], "partition": [0.25, bad]})
    state = run_flow(spec)
    assert state.is_failed()
    rows = {r["label"]: r for r in json.loads((tmp_path / "mixed" / "summary.json").read_text())["rows"]}
    statuses = sorted(r["status"] for r in rows.values())
    assert statuses[0] == "complete" and statuses[1].startswith("failed")
    bad_dir = next(d for d in (tmp_path / "mixed" / "cells").iterdir()
                   if "no-such-subject" in (d / "options.json").read_text())
    assert launches(bad_dir) == 1  # permanent: never retried

    # From the CLI, a grid with failed cells still prints its table and exits 4.
    code = grid_mod.run_grid(spec, max_parallel=2, retry_delay_s=0.5)
    out = capsys.readouterr().out
    assert code == grid_mod.EXIT_CELLS_FAILED
    assert "complete" in out and "failed" in out and "summary.md" in out


def test_cost_cap_stops_launches_and_ledger_says_why(prefect_api, tmp_path):
    spec = write_spec(tmp_path, "capped", {"lr": [0.003, 0.004, 0.005]})
    # This machine billed at $3600/h: each cell costs about $1 per second of training.
    state = run_flow(spec, max_parallel=1, max_cost_usd=1e-6, on_cap="refuse", local_usd_per_hour=3600.0)
    # The pre-flight estimate (GPU pricing) fits nowhere near $1e-6 -> refused before any launch.
    assert state.is_failed() and "exceeds the cap" in state.message
    assert not (tmp_path / "capped" / "cells").exists()

    state = run_flow(spec, max_parallel=1, max_cost_usd=0.5, local_usd_per_hour=3600.0)
    assert state.is_failed()
    ledger = [json.loads(x) for x in (tmp_path / "capped" / "ledger.jsonl").read_text().splitlines()]
    charges = [e for e in ledger if e["event"] == "charge"]
    skips = [e for e in ledger if e["event"] == "skip"]
    assert len(charges) == 1 and charges[0]["usd"] > 0.5
    assert len(skips) == 2 and all(s["reason"] == "cost cap" and s["spent_usd"] > 0.5 for s in skips)
    rows = json.loads((tmp_path / "capped" / "summary.json").read_text())["rows"]
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(skipped) == 2 and all(r["message"] == "cost cap" for r in skipped)


def test_killed_flow_rerun_trains_only_missing_cells(tmp_path):
    spec = write_spec(tmp_path, "resume", {"lr": [0.002, 0.003, 0.004, 0.005]}, epochs=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # a fresh ephemeral API, as on a new machine
    cmd = [sys.executable, "-m", "flows.grid", str(spec), "--max-parallel", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    cells_root = tmp_path / "resume" / "cells"
    deadline = time.time() + 240
    while time.time() < deadline:
        done = [d for d in cells_root.glob("*") if (d / "metrics.json").exists()] if cells_root.exists() else []
        if done:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert done, "no cell finished before the deadline"
    first = {d.name: (d / "metrics.json").read_text() for d in done}

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    for name, text in first.items():
        assert (cells_root / name / "metrics.json").read_text() == text
        assert launches(cells_root / name) == 1
    assert all(json.loads((d / "metrics.json").read_text())["status"] == "complete" for d in cells_root.iterdir())
    assert "Traceback" not in rerun.stdout + rerun.stderr
