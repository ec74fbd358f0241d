"""Replay the halving rule on a grid trained in full: would halving have picked the same winners?

    python -m flows.halving grid-search/demo.yaml              # the spec's halving rule, else the defaults
    python -m flows.halving SPEC --out DIR --eta 2 --json      # another grid folder, another eta, as JSON

It reads every cell's history.csv and metrics.json, decides each cut as a halved run would have
(flows.spec.halving.replay_cuts: the same function, on the same files), and says per inputs x
prediction stratum: the full grid's winner, the winner among the cells halving would have trained
to the end (kept by every cut, or audit cells), the mean Dice lost, and, where they differ, at
which cut the true winner would have been stopped and why. Then how well each cut ranked the
cells against their end: Spearman's rank correlation per stratum and cut, over every cell (all
were trained to the end), and whether each factor's best level changed.

Exit codes: 0 replayed; 2 a bad spec or flag, or a grid not trained in full (the line says how
many cells are not complete). Imports neither Prefect nor torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from flows.spec.cells import expand, grid_dir
from flows.spec.halving import rule_for
from flows.spec.parse import SpecError, load_spec
from flows.summary.halving import Prediction, ReplayStratum, replay_report
from flows.summary.rows import collect_rows

EXIT_OK, EXIT_INVALID = 0, 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flows.halving", description=__doc__.split("\n\n")[0])
    p.add_argument("spec", type=Path, help="the grid spec whose folder holds the trained cells")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="the grid's folder (default <spec folder>/<name>/)")
    p.add_argument("--eta", type=int, default=None, help="keep the best 1/eta at each cut (default: the spec's, else 3)")
    p.add_argument("--json", action="store_true", help="print one JSON document")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except SpecError as e:
        print(e, file=sys.stderr)
        return EXIT_INVALID
    except OSError as e:
        print(f"{args.spec}: cannot read it ({e.strerror or e}); give the path of a grid spec", file=sys.stderr)
        return EXIT_INVALID
    rule, problems = rule_for(spec, True)
    if rule is not None and args.eta is not None:
        if args.eta < 2:
            problems.append(f"--eta: must be at least 2, got {args.eta}")
        rule = rule.model_copy(update={"eta": args.eta})
    if problems:
        print(f"{args.spec}: {problems[0]}", file=sys.stderr)
        return EXIT_INVALID
    cells = expand(spec)
    folder = grid_dir(spec, args.spec, args.out)
    rows = collect_rows(folder, cells)
    missing = [r for r in rows if r["status"] != "complete"]
    if missing:
        print(f"{folder}: {len(missing)} of {len(rows)} cells are not complete; the replay needs a grid trained in "
              f"full (python -m flows.grid {args.spec} without --halving trains the rest)", file=sys.stderr)
        return EXIT_INVALID
    strata, predictions = replay_report(folder, cells, rows, rule)
    if args.json:
        print(json.dumps({"grid_dir": str(folder), "rule": rule.model_dump(),
                          "strata": [s.model_dump() for s in strata],
                          "predictions": [p.model_dump() for p in predictions]}, indent=2))
    else:
        print(render(folder, rule, strata, predictions))
    return EXIT_OK


def render(folder: Path, rule, strata: list[ReplayStratum], predictions: list[Prediction]) -> str:
    """The replay as people read it: one block per stratum, then the cuts' rank correlations."""
    lines = [f"{folder}: halving replayed (eta {rule.eta}, cuts after rounds {', '.join(map(str, rule.cuts))}, "
             f"{rule.audit_fraction:.0%} audit cells, at least {rule.audit_per_stratum} a stratum)"]
    for s in strata:
        verdict = "same winner" if s.same else f"a different winner, {s.lost_dice:.4f} mean Dice lost"
        lines.append(f"  {s.stratum}: {verdict}")
        lines.append(f"    full grid's winner  {s.winner}  mean Dice {s.winner_dice:.4f}  ({s.winner_fate})")
        if not s.same:
            lines.append(f"    halving's winner    {s.halved_winner}  mean Dice {s.halved_dice:.4f}")
    lines.append("how each cut ranked every cell against its end (Spearman; factors whose best level changed):")
    for p in predictions:
        rho = f"{p.spearman:.2f}" if p.spearman is not None else "n/a"
        changed = ", ".join(f for f, c in p.best_changed.items() if c) or "none"
        lines.append(f"  {p.stratum} cut {p.cut}: {p.n} cells, Spearman {rho}; best level changed: {changed}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
