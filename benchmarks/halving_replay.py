"""Benchmark: would halving have kept a real grid's answers? A 36-cell grid trained in full here, replayed.

    .venv/bin/python benchmarks/halving_replay.py                       # trains into /tmp/autolabel-halving-replay
    .venv/bin/python benchmarks/halving_replay.py --work DIR --max-parallel 2

The grid: lr {0.002, 0.004, 0.008} x gamma {0.8, 0.9, 1.0} x bce_weight {0.5, 0.75} x inputs
{full, anat}, prediction area: 2 strata of 18 cells. The published 3-round plan (lr x 1, 2/3, 1/3;
bce_weight x 1, 1/2, 0) of 2 epochs a round, until 2, batch 4, on a synthetic cohort of 32 subjects
at 64x128 (24 training, 8 validation). Every cell is trained to the end by the real trainer through
``python -m flows.grid`` (no halving; the local backend); then ``python -m flows.halving`` replays the
default rule (eta 3, cuts after round 1 and round 3 of 6, 7% audit cells, at least 2 a stratum) on
the cells' own history.csv and prints what it says: per stratum, whether halving would have picked
the same winner, the Dice it would have lost, where the true winner would have been stopped, and
how well each cut ranked the cells against their end. It also says how many epochs the halved run
would have trained. Complete cells are skipped on a rerun, so a second run only replays.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SPEC = {
    "name": "replay",
    "description": "halving replay benchmark: 36 CPU cells, 2 strata",
    "static": {"base_model": "resnet18", "prediction": "area", "batch_size": 4, "until": 2, "partition": 0.25,
               "device": "cpu", "dataset": {"kind": "synthetic", "seed": 0, "subjects": 32, "rows": 64, "cols": 128}},
    "hyper": {"lr": [0.002, 0.004, 0.008], "gamma": [0.8, 0.9, 1.0], "bce_weight": [0.5, 0.75],
              "inputs": ["full", "anat"]},
    "plan": [{"num_epochs": 2}, {"num_epochs": 2}, {"num_epochs": 2}],
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/autolabel-halving-replay"))
    p.add_argument("--max-parallel", type=int, default=2)
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    spec = args.work / "replay.yaml"
    spec.write_text(yaml.safe_dump(SPEC, sort_keys=False))
    env = os.environ | {"PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    started = time.perf_counter()
    grid = subprocess.run([sys.executable, "-m", "flows.grid", str(spec), "--max-parallel", str(args.max_parallel)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    trained = time.perf_counter() - started
    print(grid.stdout[-1500:])
    if grid.returncode != 0:
        print(grid.stderr[-3000:], file=sys.stderr)
        return grid.returncode
    replay = subprocess.run([sys.executable, "-m", "flows.halving", str(spec)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    doc = subprocess.run([sys.executable, "-m", "flows.halving", str(spec), "--json"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    print(replay.stdout or replay.stderr)
    if replay.returncode != 0:
        return replay.returncode
    print(epoch_shares(spec))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or 'cpu'}); "
          f"grid trained in {trained / 60:.1f} min at --max-parallel {args.max_parallel}")
    (args.work / "replay.json").write_text(doc.stdout)
    return 0


def epoch_shares(spec: Path) -> str:
    """Epochs the full grid trained, and those the halved run of it would have: each cell to the cut
    that stopped it, or to the end (the replay's standings, from the cells' own files)."""
    from flows.spec.cells import expand, grid_dir
    from flows.spec.halving import rule_for
    from flows.spec.parse import load_spec
    from flows.summary.halving import replay_grid

    loaded = load_spec(spec)
    cells, rule = expand(loaded), rule_for(loaded, True)[0]
    replay, _ = replay_grid(grid_dir(loaded, spec), cells, rule)

    def epochs(cell, rounds: int) -> int:
        per = [r.num_epochs for r in cell.plan.root]
        return sum(per[g % len(per)] for g in range(rounds))

    full = sum(epochs(c, len(c.plan) * c.options.until) for c in cells)
    halved = sum(epochs(c, len(c.plan) * c.options.until if (s := replay.standing[c.id]).stopped_at is None
                        else rule.cuts[s.stopped_at - 1]) for c in cells)
    return f"epochs: the full grid trained {full}, the halved run would have trained {halved} ({halved / full:.0%})"


if __name__ == "__main__":
    sys.exit(main())
