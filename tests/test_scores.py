"""The trainer's best-round rule over history.csv rows (autolabel/scores.py); the real trainer's agreement
with it is checked in tests/test_train.py (a paused and resumed cell)."""

from __future__ import annotations

import math

from autolabel.scores import round_scores, rounds_done, score_at


def row(repeat: int, rnd: int, epoch: int, val_loss: float, val_dice: float, train_loss: float = 0.5) -> dict:
    """A history.csv row as csv.DictReader gives it: text."""
    return {"repeat": str(repeat), "round": str(rnd), "epoch": str(epoch), "val_loss": repr(val_loss),
            "val_dice": repr(val_dice), "val_mean_dice": repr(1 - val_dice), "train_loss": repr(train_loss)}


PLAN = [2, 3]  # two rounds of 2 and 3 epochs


def test_a_round_scores_its_lowest_validation_loss_epoch_and_the_cell_its_best_round():
    rows = [row(0, 0, 1, 0.9, 0.5), row(0, 0, 2, 0.8, 0.6),  # round 0: epoch 2 by val_loss, its Dice loss 0.6
            row(0, 1, 1, 0.7, 0.4), row(0, 1, 2, 0.6, 0.45), row(0, 1, 3, 0.65, 0.3)]  # round 1: epoch 2, 0.45
    assert [(s[0], s[4]) for s in round_scores(rows, PLAN)] == [(0.6, 2), (0.45, 2)]
    first = score_at(rows, PLAN, 1)
    assert (first.val_dice_loss, first.mean_dice, first.round, first.epoch, first.epochs) == (0.6, 0.4, 0, 2, 2)
    both = score_at(rows, PLAN, 2)
    assert (both.val_dice_loss, both.round, both.epochs) == (0.45, 1, 5)
    # Never by the lowest Dice loss of any epoch (0.3), nor by the total loss across rounds.
    assert both.val_dice_loss != 0.3


def test_equal_epochs_and_rounds_keep_the_first_as_the_trainer_does():
    rows = [row(0, 0, 1, 0.5, 0.7), row(0, 0, 2, 0.5, 0.2),  # equal val_loss: epoch 1 stays
            row(0, 1, 1, 0.4, 0.7), row(0, 1, 2, 0.9, 0.1), row(0, 1, 3, 0.9, 0.1)]  # round 1 ties round 0 at 0.7
    s = score_at(rows, PLAN, 2)
    assert (s.val_dice_loss, s.round, s.epoch) == (0.7, 0, 1)


def test_an_unfinished_or_diverged_round_does_not_count():
    rows = [row(0, 0, 1, 0.9, 0.5), row(0, 0, 2, 0.8, 0.6), row(0, 1, 1, 0.7, 0.4)]
    assert rounds_done(rows, PLAN) == 1 and score_at(rows, PLAN, 2) is None
    diverged = rows[:2] + [row(0, 1, 1, 0.7, 0.4), row(0, 1, 2, 0.6, 0.3), row(0, 1, 3, math.nan, 0.2)]
    assert rounds_done(diverged, PLAN) == 1
    assert rounds_done(None, PLAN) == 0 and score_at(None, PLAN, 1) is None and score_at(rows, PLAN, 0) is None


def test_rounds_count_across_repeats():
    one = [row(0, 0, 1, 0.9, 0.5), row(0, 0, 2, 0.8, 0.6), row(0, 1, 1, 0.7, 0.5), row(0, 1, 2, 0.6, 0.5),
           row(0, 1, 3, 0.6, 0.5)]
    two = one + [row(1, 0, 1, 0.5, 0.2), row(1, 0, 2, 0.6, 0.1)]
    assert rounds_done(two, PLAN) == 3
    s = score_at(two, PLAN, 3)  # the second repeat's first round is the best so far
    assert (s.val_dice_loss, s.repeat, s.round, s.epoch, s.epochs) == (0.2, 1, 0, 1, 7)
