"""Benchmark: what the flow itself costs per cell, on a grid of many tiny cells. Goal: < 0.25 s.

    .venv/bin/python benchmarks/orchestration.py                 # 200 cells, 2 at a time
    .venv/bin/python benchmarks/orchestration.py --cells 1800    # the published grid's size

The cells run through the real flow, the real local runner and Prefect's ephemeral API,
but the trainer is replaced by a stand-in (the flow's ``trainer`` parameter) that writes a
complete metrics.json and exits, so what is measured is orchestration: task runs, the ledger, subprocess
launches, the summary. In the same run it measures the baseline, the stand-in's own
start-up, run serially as many times as there are cells.

    overhead per cell = (flow wall - stand-in time / max_parallel) / cells
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

GOAL_S = 0.25

STAND_IN = """\
#!{python}
# Stands in for `python -m autolabel.train CELL...`: every cell completes at once.
import json, sys
for d in sys.argv[1:]:
    if not d.startswith("-"):
        open(d + "/metrics.json", "w").write(json.dumps({{
            "status": "complete", "best_val_dice_loss": 0.2, "dice": {{"V1": 0.9, "V2": 0.8, "V3": 0.7}},
            "mean_dice": 0.8, "epochs": 1, "wall_seconds": 0.0, "device": "none"}}))
"""


def write_spec(root: Path, cells: int) -> Path:
    lrs = [round(0.001 + i * 1e-5, 6) for i in range(cells)]
    spec = root / "bench.yaml"
    spec.write_text(json.dumps({
        "name": "bench",
        "static": {"dataset": {"kind": "synthetic", "subjects": 8, "rows": 32, "cols": 64}},
        "hyper": {"lr": lrs},
        "plan": [{"num_epochs": 1}],
    }))
    return spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=200)
    ap.add_argument("--max-parallel", type=int, default=2)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stand_in = root / "python-stand-in"
        stand_in.write_text(STAND_IN.format(python=sys.executable))
        stand_in.chmod(0o755)
        scratch = root / "scratch"
        scratch.mkdir()

        # Baseline: the stand-in alone, once per cell, serially.
        t = time.perf_counter()
        for _ in range(args.cells):
            subprocess.run([str(stand_in), str(scratch)], check=True)
        stand_in_s = time.perf_counter() - t

        from flows import flow as grid

        spec = write_spec(root, args.cells)
        t = time.perf_counter()
        state = grid.grid_search(spec=str(spec), max_parallel=args.max_parallel, trainer=[str(stand_in)],
                                 return_state=True)
        flow_s = time.perf_counter() - t
        assert state.is_completed(), state.message

    overhead = (flow_s - stand_in_s / args.max_parallel) / args.cells
    print(f"cells                       {args.cells} (max_parallel {args.max_parallel})")
    print(f"baseline: stand-in serially {stand_in_s:.2f} s ({stand_in_s / args.cells * 1000:.0f} ms per cell)")
    print(f"flow wall (incl. API start) {flow_s:.2f} s")
    print(f"overhead per cell           {overhead:.3f} s (goal < {GOAL_S} s)")
    print(f"flow / baseline             {flow_s / stand_in_s:.2f}x")
    return 0 if overhead < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
