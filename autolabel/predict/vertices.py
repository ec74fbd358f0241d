"""From a flatmap back to the cortical surface: each vertex reads its labels where it lands in the image.

    from autolabel.predict.vertices import vertex_probabilities, choose_labels, surface_dice
    prob = vertex_probabilities(image_prob, layouts)   # {hemi: float32 [N, L]}; image_prob [L, rows, cols], LH | RH
    codes = choose_labels(prob["lh"], axis=1)           # int32 [N]: 0 none, 1..L
    dice = surface_dice(codes, truth_codes, L)          # [L] Dice on vertices, per label

The rule, used by ``python -m autolabel.predict`` (README "Labelling your subjects"):

1. **Position.** A vertex lands where the importer's own projection and framing put it
   (``autolabel.datasets.cortex.lay_out``: the occipital-pole projection of its registered sphere). Going
   from the image back to the surface needs no inverse projection.
2. **Probability.** Each label's probability is interpolated bilinearly between the four pixel
   centres around that position, inside the vertex's own half-image (a left-hemisphere vertex
   never reads the right half). Within half a pixel of the half-image's edge the edge pixels
   are used.
3. **Not labelled** (code 0, probability 0): a vertex outside its half-image (beyond the framing
   window), and a vertex on the far side of the sphere, which projects onto the same pixels as
   the near side (``Layout.front`` false).
4. **Label.** ``argmax + 1`` where the highest probability is above 0.5, else 0. That is the
   threshold of the trainer's validation Dice (``sigmoid(logit) > 0.5``, autolabel/losses.py);
   pixels of the image-space prediction follow the same rule (``choose_labels`` on [L, H, W]).
   The original tool gave each vertex the nearest pixel instead: bilinear reads between pixels
   and so follows a border that runs between two pixel centres.
"""

from __future__ import annotations

import numpy as np

from autolabel.datasets.cortex import HEMIS, Layout

THRESHOLD = 0.5  # sigmoid(logit) > 0.5: the trainer's validation Dice counts a pixel as labelled above it


def choose_labels(prob: np.ndarray, axis: int = 0) -> np.ndarray:
    """Codes 0 (none), 1..L from per-label probabilities along ``axis``: argmax + 1 above 0.5, else 0."""
    best = prob.argmax(axis=axis)
    top = np.take_along_axis(prob, np.expand_dims(best, axis), axis).squeeze(axis)
    return np.where(top > THRESHOLD, best + 1, 0).astype(np.int32)


def placed(layout: Layout, rows: int, cols: int) -> np.ndarray:
    """Vertices that read a label: facing the viewer and inside the [rows, cols] half-image."""
    col, row = layout.px[:, 0], layout.px[:, 1]
    return layout.front & (col >= 0) & (col < cols) & (row >= 0) & (row < rows)


def sample_bilinear(image: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Values of ``image`` [L, H, W] at continuous pixel positions ``px`` [N, 2] (col, row): float32 [N, L].

    Pixel (r, c) holds the value at its centre (c + 0.5, r + 0.5); positions beyond the
    outermost centres take the edge value.
    """
    _, h, w = image.shape
    x = np.clip(px[:, 0] - 0.5, 0.0, w - 1.0)
    y = np.clip(px[:, 1] - 0.5, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    top = image[:, y0, x0].T * (1 - fx) + image[:, y0, x1].T * fx
    bottom = image[:, y1, x0].T * (1 - fx) + image[:, y1, x1].T * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def vertex_probabilities(image_prob: np.ndarray, layouts: dict[str, Layout]) -> dict[str, np.ndarray]:
    """Per hemisphere, each vertex's label probabilities [N, L] (0 for a vertex not placed), from a bilateral
    probability image [L, rows, cols] (left hemisphere in the left half, as the importer builds it)."""
    _, rows, cols = image_prob.shape
    half = cols // 2
    halves = {"lh": image_prob[:, :, :half], "rh": image_prob[:, :, half:]}
    out = {}
    for hemi in HEMIS:
        layout = layouts[hemi]
        on = placed(layout, rows, half)
        prob = np.zeros((len(layout.px), image_prob.shape[0]), np.float32)
        prob[on] = sample_bilinear(halves[hemi], layout.px[on])
        out[hemi] = prob
    return out


def surface_dice(pred: np.ndarray, truth: np.ndarray, n_labels: int) -> list[float]:
    """Dice on vertices per label 1..n_labels: 2|P and T| / (|P| + |T|); 1.0 where both are empty
    (the convention of the trainer's validation Dice, autolabel/losses.py dice_score)."""
    out = []
    for k in range(1, n_labels + 1):
        p, t = pred == k, truth == k
        total = int(p.sum() + t.sum())
        out.append(2.0 * int((p & t).sum()) / total if total else 1.0)
    return out
