"""The losses and scores on cases small enough to compute by hand."""

from __future__ import annotations

import math

import torch

from autolabel.losses import (
    combined_loss,
    dice_counts,
    dice_loss,
    dice_loss_per_image,
    dice_score,
    weighted_bce,
)


def image(values, shape=(1, 1, 1, 4)) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(shape)


def test_weighted_bce_weights_each_label_by_its_negative_fraction():
    logits = image([0.0, 0.0, 0.0, 0.0])
    target = image([1.0, 0.0, 0.0, 0.0])  # one positive in four pixels: weight 3/4
    assert math.isclose(weighted_bce(logits, target).item(), 0.75 * math.log(2), rel_tol=1e-6)


def test_weighted_bce_averages_labels():
    logits = torch.zeros(1, 2, 1, 2)
    target = torch.tensor([[[[1.0, 1.0]], [[0.0, 0.0]]]])  # label 0 all positive (weight 0), label 1 none (weight 1)
    logits[0, 1] = torch.tensor([2.0, -1.0])
    expected = 0.5 * (0.0 + (math.log1p(math.exp(2.0)) + math.log1p(math.exp(-1.0))) / 2)
    assert math.isclose(weighted_bce(logits, target).item(), expected, rel_tol=1e-6)


def test_dice_loss_by_hand():
    # p = sigmoid(0) = 0.5 everywhere; g = [1, 1, 0, 0]: 1 - (2*1 + 1) / (4*0.25 + 2 + 1) = 0.25
    assert math.isclose(dice_loss(image([0.0] * 4), image([1.0, 1.0, 0.0, 0.0])).item(), 0.25, rel_tol=1e-6)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_for_empty_labels():
    target = image([1.0, 0.0, 1.0, 0.0])
    perfect = (target * 2 - 1) * 50  # sigmoid gives 1 on positives, 0 elsewhere
    assert dice_loss(perfect, target).item() < 1e-6
    assert dice_loss(torch.full((1, 1, 1, 4), -50.0), torch.zeros(1, 1, 1, 4)).item() < 1e-6


def test_dice_loss_averages_labels_then_batch():
    logits = torch.full((2, 2, 1, 4), 0.0)
    target = torch.zeros(2, 2, 1, 4)
    target[0, 0] = 1.0  # image 0 label 0: 1 - (2*2 + 1)/(1 + 4 + 1) = 1/6; label 1: 1 - 1/2 = 1/2
    per_image = dice_loss_per_image(logits, target)
    torch.testing.assert_close(per_image, torch.tensor([[1 / 6, 0.5], [0.5, 0.5]]))
    assert math.isclose(dice_loss(logits, target).item(), (1 / 6 + 0.5 + 0.5 + 0.5) / 4, rel_tol=1e-6)


def test_combined_loss_mixes_bce_and_dice():
    logits, target = image([0.5, -1.0, 2.0, 0.0]), image([1.0, 0.0, 1.0, 1.0])
    loss, bce, dice = combined_loss(logits.to(torch.bfloat16), target, bce_weight=0.25)
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), 0.25 * bce.item() + 0.75 * dice.item(), rel_tol=1e-6)
    for w, expected in ((1.0, bce), (0.0, dice)):
        assert math.isclose(combined_loss(logits, target, w)[0].item(), expected.item(), rel_tol=1e-2)


def test_dice_score_from_counts_adds_up_over_batches():
    logits = torch.tensor([[[[3.0, 3.0, -3.0, -3.0]]], [[[3.0, -3.0, -3.0, -3.0]]]])
    target = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]], [[[1.0, 1.0, 0.0, 0.0]]]])
    whole = dice_score(*dice_counts(logits, target))
    parts = [dice_counts(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    summed = dice_score(parts[0][0] + parts[1][0], parts[0][1] + parts[1][1])
    # |P and G| = 1 + 1, |P| + |G| = (2 + 1) + (1 + 2): Dice = 4/6
    torch.testing.assert_close(whole, torch.tensor([4 / 6]))
    torch.testing.assert_close(summed, whole)


def test_dice_score_is_one_when_prediction_and_truth_are_both_empty():
    assert dice_score(*dice_counts(torch.full((1, 1, 2, 2), -5.0), torch.zeros(1, 1, 2, 2))).item() == 1.0
