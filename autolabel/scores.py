"""A cell's score wherever its training stands: the trainer's own rule, read back from history.csv.

    from autolabel.celldir import read_history
    from autolabel.scores import score_at, rounds_done
    rows = read_history(cell_dir)                 # history.csv's rows (None: no history yet)
    score = score_at(rows, [10, 10, 10], 1)       # Score after round 1, or None if not trained that far
    score.val_dice_loss, score.mean_dice          # what metrics.json would say if the plan ended there

The rule is autolabel/loop.py's, in numbers rather than tensors: within a round the best epoch is
the one with the lowest validation loss (the first of equals); the round scores that epoch's
validation Dice loss (history.csv's ``val_dice``: soft, and free of the BCE term each cell weights
differently); the cell's score is its lowest round score so far, repeats included (the first of
equals). After the plan's last round this is metrics.json's ``best_val_dice_loss``, and the epoch
it names gives metrics.json's ``mean_dice``. A halving cut (flows/spec/halving.py) ranks cells by
it. Pure: no torch, no numpy, no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Score:
    """A cell's best round so far, as metrics.json would report it if the plan ended here."""

    val_dice_loss: float  # the best round's validation Dice loss: what ranks cells
    mean_dice: float  # mean validation Dice of that round's best epoch
    repeat: int  # where the best round is: 0-based repeat and round, 1-based epoch within the round
    round: int
    epoch: int
    rounds: int  # rounds the score covers, repeats included
    epochs: int  # epochs those rounds hold


def round_scores(rows: Iterable[dict[str, Any]], epochs: Sequence[int]) -> list[tuple[float, float, int, int, int]]:
    """Each complete round in training order: (validation Dice loss, mean Dice, repeat, round, best epoch).

    ``epochs`` is the plan's ``num_epochs`` per round. A round counts once all its epochs are in the
    history with finite losses (a diverged epoch ends the cell before its round is ranked).
    """
    by_round: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for row in rows:
        by_round.setdefault((int(row["repeat"]), int(row["round"])), []).append(row)
    out = []
    for g in range(len(by_round)):
        repeat, rnd = divmod(g, len(epochs))
        got = by_round.get((repeat, rnd), [])
        if len(got) < epochs[rnd] or not all(finite(r["val_loss"]) and finite(r["train_loss"]) for r in got):
            break
        best = got[0]
        for row in got[1 : epochs[rnd]]:  # strictly lower: the first of equal epochs stays, as in loop.record_epoch
            if float(row["val_loss"]) < float(best["val_loss"]):
                best = row
        out.append((float(best["val_dice"]), float(best["val_mean_dice"]), repeat, rnd, int(best["epoch"])))
    return out


def rounds_done(rows: Iterable[dict[str, Any]] | None, epochs: Sequence[int]) -> int:
    """Rounds trained to their end, repeats included (0 without a history)."""
    return len(round_scores(rows, epochs)) if rows else 0


def score_at(rows: Iterable[dict[str, Any]] | None, epochs: Sequence[int], rounds: int) -> Score | None:
    """The score after the first ``rounds`` rounds (repeats counted), or None if they are not all trained."""
    scored = round_scores(rows, epochs)[:rounds] if rows else []
    if rounds < 1 or len(scored) < rounds:
        return None
    best = scored[0]
    for s in scored[1:]:  # strictly lower: the earlier of equal rounds, as in loop.finish_round/finish_repeat
        if s[0] < best[0]:
            best = s
    return Score(val_dice_loss=best[0], mean_dice=best[1], repeat=best[2], round=best[3], epoch=best[4],
                 rounds=rounds, epochs=sum(epochs[g % len(epochs)] for g in range(rounds)))


def finite(text: Any) -> bool:
    try:
        return math.isfinite(float(text))
    except (TypeError, ValueError):
        return False
