"""How long the 1800-cell dry run takes, Python start-up included (goal: under 2 s).

    python benchmarks/dry_run.py             # 7 runs of each command, medians
    python benchmarks/dry_run.py --runs 15

Each command runs as a fresh process, exactly as a user types it, next to two
baselines measured in the same run on the same machine: a bare interpreter
(``python -c pass``) and the imports the dry run cannot avoid (pydantic, PyYAML).
Then the stages are timed in-process, to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEC = "grid-search/benson2025.yaml"
GOAL_S = 2.0
GOAL_RUN = "dry run --backend ecs"  # the goal is about pricing the cloud run

# A cloud run's flags: the dry run prices the run its flags start, and refuses ECS without its settings.
ECS = ["--backend", "ecs", "--ecs", "cluster=c", "--ecs", "capacity_provider=cp", "--ecs", "task_definition=td",
       "--ecs", "bucket=my-bucket"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import pydantic, yaml": [sys.executable, "-c", "import pydantic, yaml"],
    "dry run (local)": [sys.executable, "-m", "flows.grid", SPEC, "--dry-run"],
    "dry run --backend ecs": [sys.executable, "-m", "flows.grid", SPEC, "--dry-run", *ECS],
    "dry run --json (all cells)": [sys.executable, "-m", "flows.grid", SPEC, "--dry-run", "--json", *ECS],
    "dry run --max-cost 20 (subset)": [sys.executable, "-m", "flows.grid", SPEC, "--dry-run", "--max-cost", "20", *ECS],
}


def time_command(cmd: list[str], runs: int) -> list[float]:
    """Wall seconds of each run; a failing command stops the benchmark."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode not in (0, 3):  # 3: over the cap, expected with --max-cost 20
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return times


def time_stages() -> list[tuple[str, float]]:
    """The dry run's stages, in this process (imports already paid)."""
    sys.path.insert(0, str(ROOT))
    start = time.perf_counter()
    from flows import grid as cli  # noqa: F401 - the import is what is timed
    from flows.cost import cap as plan
    from flows.cost import estimate as cost
    from flows.spec.cells import complete_ids, expand, grid_dir
    from flows.spec.parse import load_spec

    stages = [("import flows.grid (pydantic, yaml, autolabel.options)", time.perf_counter() - start)]
    path = ROOT / SPEC
    for name, step in (
        ("load_spec (parse + validate 22 levels)", lambda: load_spec(path)),
        ("expand (1800 cells, ids, labels)", lambda: expand(load_spec(path))),
    ):
        t = time.perf_counter()
        step()
        stages.append((name, time.perf_counter() - t))
    spec = load_spec(path)
    cells = expand(spec)
    pricing = plan.make_pricing("ecs", "g5.xlarge")
    for name, step in (
        ("complete_ids (scan output folder)", lambda: complete_ids(grid_dir(spec, path))),
        ("estimate (ECS g5.xlarge, 8 lanes)", lambda: cost.estimate(cells, pricing)),
        ("plan_run ($20 cap: the subset)", lambda: plan.plan_run(cells, pricing, 20.0)),
    ):
        t = time.perf_counter()
        step()
        stages.append((name, time.perf_counter() - t))
    return stages


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7, help="runs per command (default 7)")
    args = p.parse_args(argv)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'command':<34} {'median':>8} {'min':>8} {'max':>8}   ({args.runs} runs each)")
    medians = {}
    for name, cmd in COMMANDS.items():
        times = time_command(cmd, args.runs)
        medians[name] = statistics.median(times)
        print(f"{name:<34} {medians[name]:>7.3f}s {min(times):>7.3f}s {max(times):>7.3f}s")
    own = medians[GOAL_RUN] - medians["import pydantic, yaml"]
    print(f"dry run beyond its unavoidable imports: {own:.3f} s; "
          f"beyond a bare interpreter: {medians[GOAL_RUN] - medians['python -c pass']:.3f} s")
    print("stages, in-process:")
    for name, seconds in time_stages():
        print(f"  {name:<52} {seconds * 1000:>7.1f} ms")
    verdict = "meets" if medians[GOAL_RUN] < GOAL_S else "MISSES"
    print(f"result: the 1800-cell dry run takes {medians[GOAL_RUN]:.2f} s (median), {verdict} the {GOAL_S:.0f} s goal")
    return 0 if medians[GOAL_RUN] < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
