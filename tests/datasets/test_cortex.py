"""The projection (against neuropythy itself), the framing and the rasteriser."""

from __future__ import annotations

import numpy as np
import pytest

from autolabel.datasets.cortex import (
    frame_pixels,
    prf_xy,
    project,
    rasterise,
    ring_index,
    sample,
    sample_labels,
)
from autolabel.datasets.fsaverage import read_fs5


def grid_mesh(n: int, size: float):
    """A flat square mesh of (n+1)^2 vertices over [0, size]^2, two triangles per cell."""
    t = np.linspace(0.0, size, n + 1)
    xx, yy = np.meshgrid(t, t)
    px = np.column_stack([xx.ravel(), yy.ravel()])
    i = np.arange(n)[:, None] * (n + 1) + np.arange(n)[None, :]
    a, b, c, d = i.ravel(), i.ravel() + 1, i.ravel() + n + 1, i.ravel() + n + 2
    faces = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])
    return px, faces


def test_rasteriser_interpolates_linear_maps_exactly_and_covers_every_pixel():
    px, faces = grid_mesh(7, 16.0)
    r = rasterise(px, faces, np.ones(len(px), bool), 16, 16)
    assert r.covered.all()
    values = np.column_stack([2.0 * px[:, 0] - px[:, 1] + 3.0, px[:, 1]])
    out = sample(r, faces, values)
    rows, cols = np.mgrid[0:16, 0:16] + 0.5
    np.testing.assert_allclose(out[0], 2.0 * cols - rows + 3.0, atol=1e-4)
    np.testing.assert_allclose(out[1], rows, atol=1e-4)


def test_rasteriser_leaves_uncovered_and_back_facing_pixels_empty():
    px, faces = grid_mesh(4, 8.0)  # covers only the top-left 8x8 of a 16x16 image
    front = np.ones(len(px), bool)
    front[0] = False  # the triangles at vertex 0 face away
    r = rasterise(px, faces, front, 16, 16)
    assert not r.covered[8:, :].any() and not r.covered[:, 8:].any()
    assert not r.covered[0, 0] and r.covered[7, 7]
    assert (sample(r, faces, np.ones(len(px)))[0][~r.covered] == 0).all()


def test_labels_split_triangles_by_majority_weight():
    px, faces = grid_mesh(8, 16.0)
    labels = np.where(px[:, 0] < 8.0, 1, 2)  # left half 1, right half 2
    onehot = sample_labels(rasterise(px, faces, np.ones(len(px), bool), 16, 16), faces, labels, 2)
    assert onehot.sum(0).max() == 1
    assert onehot[0, :, :6].all() and onehot[1, :, 9:].all()


def test_rings_are_eccentricity_bands_inside_the_areas():
    ecc = np.array([0.2, 0.7, 1.5, 3.0, 5.0, 7.5, 0.2])
    area = np.array([1, 2, 3, 1, 1, 1, 0])
    assert ring_index(ecc, area, (0.0, 0.5, 1.0, 2.0, 4.0, 7.0)).tolist() == [1, 2, 3, 4, 5, 0, 0]


def test_prf_position_follows_neuropythys_angle_convention():
    x, y = prf_xy(np.array([0.0, 90.0, 180.0, -90.0]), np.array([2.0, 2.0, 2.0, 2.0]))
    np.testing.assert_allclose(x, [0, 2, 0, -2], atol=1e-12)  # +90: right horizontal meridian
    np.testing.assert_allclose(y, [2, 0, -2, 0], atol=1e-12)  # 0: upper vertical meridian


@pytest.mark.parametrize("hemi", ["lh", "rh"])
def test_projection_equals_neuropythys_occipital_pole_map(hemi):
    ny = pytest.importorskip("neuropythy")
    fs5 = read_fs5(hemi)
    sphere, faces = fs5["sphere"].astype(np.float64), fs5["faces"].astype(np.int64)
    flat = ny.to_map_projection("occipital_pole", hemi, radius=np.pi / 2)(ny.geometry.Mesh(faces.T, sphere.T))
    uv, front = project(sphere, hemi)
    radius = np.linalg.norm(sphere, axis=1).mean()
    assert set(flat.labels) == set(np.flatnonzero(front))
    np.testing.assert_allclose(flat.coordinates.T / radius, uv[flat.labels], atol=1e-9)


def test_the_frame_puts_the_occipital_pole_in_the_image():
    for hemi in ("lh", "rh"):
        uv = np.zeros((1, 2))  # the pole itself
        col, row = frame_pixels(uv, hemi, 128, 128)[0]
        assert 0 <= col < 128 and 0 <= row < 128
