"""Cortical surface -> flatmap pixels: the occipital-pole projection, the framing and the rasteriser.

Shared by the FreeSurfer importer (``autolabel.datasets.flatmaps``) and the fsaverage cohort
(``autolabel.datasets.fsaverage``), so both give the same picture of the same cortex::

    from autolabel.datasets.cortex import project, frame_pixels, rasterise, sample, sample_labels
    uv, front = project(sphere_reg_xyz, "lh")           # neuropythy's occipital_pole map
    px = frame_pixels(uv, "lh", rows=128, cols=128)       # one hemisphere's half-image
    r = rasterise(px, faces, front, 128, 128)             # which triangle and where, per pixel
    # (lay_out(sphere_reg_xyz, faces, "lh", 128, 128) does these three and keeps px, front and r)
    maps = sample(r, faces, values)                       # [K, rows, cols], zero off cortex
    area = sample_labels(r, faces, labels, 3)             # [3, rows, cols] one-hot (0 = none)

The projection is neuropythy's ``occipital_pole`` map projection (neuropythy 0.13.0,
``neuropythy/lib/projections/{lh,rh}.occipital_pole.mp.json``, read 2026-12-01): an
orthographic view of the fsaverage-registered sphere from outside, with ``center``
(the occipital pole) in the middle and ``center_right`` on the +x axis. Its two
parameters are read from the installed package without importing neuropythy (the
import costs ~3 s), and ``tests/test_cortex.py`` checks the result against neuropythy's own
map projection (``neuropythy.to_map_projection('occipital_pole', hemi)``, what ``to_flatmap`` applies).

Framing: at neuropythy's default radius (pi/2, the whole back half of the sphere) V1-V3
cover only ~15% of the pixels. The window below is fixed in projected coordinates
(unit sphere) so that every import and every cohort subject shares one pixel grid:
it holds the Benson 2014 atlas's V1-V3 out to ~12 degrees eccentricity with room for
subject variation (measured on fsaverage 2026-12-01: V1-V3 within 7 degrees span
x -0.12..0.42, y -0.36..0.39 in the left hemisphere and x -0.46..0.07 in the right).
Each hemisphere keeps neuropythy's orientation: the fovea lies at the lateral end
(left hemisphere: left of its half; right hemisphere: right of its half), dorsal
(lower visual field) at the bottom.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

HEMIS = ("lh", "rh")
# Window centre (x, y) per hemisphere and its half-height, in unit-sphere projected coordinates.
FRAME_CENTRE = {"lh": (0.16, 0.0), "rh": (-0.20, 0.0)}
FRAME_HALF_HEIGHT = 0.46


def neuropythy_lib() -> Path:
    """neuropythy's shipped data folder (``neuropythy/lib``), found without importing the package."""
    spec = importlib.util.find_spec("neuropythy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("neuropythy is not installed; pip install 'visual-autolabel-grid[cortex]'")
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


@lru_cache(maxsize=2)
def pole_rotation(hemi: str) -> np.ndarray:
    """3x3 rotation taking the occipital pole to +z and ``center_right`` into the x-z plane (x > 0)."""
    mp = json.loads((neuropythy_lib() / "projections" / f"{hemi}.occipital_pole.mp.json").read_text())
    z = np.asarray(mp["center"], float)
    z /= np.linalg.norm(z)
    right = np.asarray(mp["center_right"], float)
    x = right - (right @ z) * z
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z])


def project(sphere: np.ndarray, hemi: str) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic occipital-pole projection: (uv [N, 2] on the unit sphere, front [N] bool).

    ``sphere`` is the registered sphere (``?h.sphere.reg``, any radius; FreeSurfer's is
    100 mm). Like neuropythy, vertices are rotated as they are, not pushed onto the
    sphere one by one; dividing by the mean radius makes the result unit-free (it
    equals neuropythy's projection / radius to 1e-13). ``front`` marks the half
    facing the viewer (the back half would overlap it).
    """
    radius = np.linalg.norm(sphere, axis=1).mean()
    p = (np.asarray(sphere, np.float64) / radius) @ pole_rotation(hemi).T
    return p[:, :2], p[:, 2] > 0


def frame_pixels(uv: np.ndarray, hemi: str, rows: int, cols: int) -> np.ndarray:
    """Projected coordinates -> continuous pixel coordinates (col, row) in one hemisphere's half-image.

    Pixel (r, c) has its centre at (c + 0.5, r + 0.5); row 0 is the top (+y).
    """
    cx, cy = FRAME_CENTRE[hemi]
    scale = rows / (2 * FRAME_HALF_HEIGHT)  # pixels per unit; columns share it
    col = (uv[:, 0] - cx) * scale + cols / 2
    row = (cy - uv[:, 1]) * scale + rows / 2
    return np.stack([col, row], axis=1)


@dataclass
class Raster:
    """Per pixel of a [rows, cols] image: the covering triangle (-1 off cortex) and barycentric weights."""

    face: np.ndarray  # int64 [rows, cols]
    weights: np.ndarray  # float32 [rows, cols, 3]

    @property
    def covered(self) -> np.ndarray:
        return self.face >= 0


def rasterise(px: np.ndarray, faces: np.ndarray, front: np.ndarray, rows: int, cols: int) -> Raster:
    """Find, for every pixel centre, the front-facing triangle that contains it.

    Vectorised over (triangle, candidate pixel) pairs from each triangle's bounding box,
    so it costs about the pixel count plus the triangle count; the projected front
    half of a sphere never folds, so at most one triangle holds a pixel (edges: any).
    """
    tri = faces[front[faces].all(axis=1)]
    x, y = px[tri, 0], px[tri, 1]  # [F, 3]
    # Column-wise minimum/maximum: much faster than reducing along an axis of length 3.
    xs, ys = (x[:, 0], x[:, 1], x[:, 2]), (y[:, 0], y[:, 1], y[:, 2])
    c0 = np.clip(np.ceil(np.minimum.reduce(xs) - 0.5), 0, cols).astype(np.int64)
    c1 = np.clip(np.floor(np.maximum.reduce(xs) - 0.5), -1, cols - 1).astype(np.int64)
    r0 = np.clip(np.ceil(np.minimum.reduce(ys) - 0.5), 0, rows).astype(np.int64)
    r1 = np.clip(np.floor(np.maximum.reduce(ys) - 0.5), -1, rows - 1).astype(np.int64)
    nc, nr = np.maximum(c1 - c0 + 1, 0), np.maximum(r1 - r0 + 1, 0)
    counts = nc * nr
    keep = counts > 0
    tri, x, y, c0, r0, nc, counts = tri[keep], x[keep], y[keep], c0[keep], r0[keep], nc[keep], counts[keep]
    f = np.repeat(np.arange(len(tri)), counts)
    k = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pc, pr = c0[f] + k % nc[f], r0[f] + k // nc[f]
    # Barycentric coordinates of the pixel centre in its candidate triangle.
    qx, qy = pc + 0.5 - x[f, 2], pr + 0.5 - y[f, 2]
    ax, ay = x[:, 0] - x[:, 2], y[:, 0] - y[:, 2]
    bx, by = x[:, 1] - x[:, 2], y[:, 1] - y[:, 2]
    det = ax * by - bx * ay
    det = np.where(np.abs(det) < 1e-12, np.nan, det)  # degenerate triangles hold no pixel
    w0 = (qx * by[f] - bx[f] * qy) / det[f]
    w1 = (ax[f] * qy - qx * ay[f]) / det[f]
    w2 = 1.0 - w0 - w1
    inside = (w0 >= -1e-9) & (w1 >= -1e-9) & (w2 >= -1e-9)
    face = np.full(rows * cols, -1, np.int64)
    weights = np.zeros((rows * cols, 3), np.float32)
    pix = pr[inside] * cols + pc[inside]
    face[pix] = np.flatnonzero(keep)[f[inside]]  # index into the front faces kept above
    weights[pix] = np.stack([w0[inside], w1[inside], w2[inside]], axis=1)
    front_faces = np.flatnonzero(front[faces].all(axis=1))
    face = np.where(face >= 0, front_faces[np.maximum(face, 0)], -1)
    return Raster(face.reshape(rows, cols), weights.reshape(rows, cols, 3))


def sample(r: Raster, faces: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Linear interpolation of per-vertex ``values`` [N] or [N, K] -> float32 [K, rows, cols]; 0 off cortex."""
    values = np.asarray(values, np.float32)
    if values.ndim == 1:
        values = values[:, None]
    rows, cols = r.face.shape
    out = np.zeros((values.shape[1], rows, cols), np.float32)
    on = r.covered
    corners = faces[r.face[on]]  # [P, 3]
    out[:, on] = np.einsum("pj,pjk->kp", r.weights[on], values[corners])
    return out


def sample_labels(r: Raster, faces: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Per-vertex integer labels (0 none, 1..n) -> uint8 one-hot [n, rows, cols].

    Each pixel takes the label with the largest barycentric weight among its
    triangle's corners (the argmax of linearly interpolated one-hot maps), so
    borders run through triangles rather than along their edges.
    """
    rows, cols = r.face.shape
    out = np.zeros((n, rows, cols), np.uint8)
    on = r.covered
    corner = np.asarray(labels)[faces[r.face[on]]]  # [P, 3]
    w = r.weights[on]
    # Score each corner's label by the weight of all corners sharing it; the best corner's label wins.
    score = np.stack([(w * (corner == corner[:, [j]])).sum(1) for j in range(3)], axis=1)
    best = np.take_along_axis(corner, score.argmax(1)[:, None], 1)[:, 0]
    for k in range(1, n + 1):
        out[k - 1, on] = best == k
    return out


def ring_index(eccentricity: np.ndarray, area: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Eccentricity ring 1..len(edges)-1 of each vertex inside V1-V3 (area > 0), else 0."""
    ring = np.searchsorted(np.asarray(edges), eccentricity, side="right")
    inside = (area > 0) & (eccentricity >= edges[0]) & (eccentricity < edges[-1])
    return np.where(inside, ring, 0)


def prf_xy(polar_angle: np.ndarray, eccentricity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Visual-field position (degrees) from neuropythy's polar angle convention.

    neuropythy's "visual" convention (neuropythy 0.13.0 ``retinotopy_data``, read
    2026-12-01): polar angle in degrees clockwise from the upper vertical meridian,
    +90 the right horizontal meridian, -90 the left one (so a left hemisphere's
    contralateral field is positive, a right hemisphere's negative); eccentricity in
    degrees. prf_x > 0 is the right field, prf_y > 0 the upper field.
    """
    theta = np.radians(polar_angle)
    return eccentricity * np.sin(theta), eccentricity * np.cos(theta)


@dataclass
class Layout:
    """Where one hemisphere's vertices land in its half-image, and which triangle covers each pixel.

    The importer samples maps through ``raster``; ``autolabel.predict`` reads each vertex's
    label back at ``px`` (the forward projection: no inverse is needed).
    """

    px: np.ndarray  # float64 [N, 2] continuous (col, row) of every vertex; pixel (r, c) is centred at (c + .5, r + .5)
    front: np.ndarray  # bool [N]: on the half of the sphere facing the viewer (the far half would overlap it)
    raster: Raster


def lay_out(sphere: np.ndarray, faces: np.ndarray, hemi: str, rows: int, cols: int) -> Layout:
    """Project, frame and rasterise one hemisphere: the one path from a sphere to a half-image."""
    uv, front = project(sphere, hemi)
    px = frame_pixels(uv, hemi, rows, cols)
    return Layout(px, front, rasterise(px, faces, front, rows, cols))


def flatten_hemisphere(
    sphere: np.ndarray,
    faces: np.ndarray,
    hemi: str,
    rows: int,
    cols: int,
    values: dict[str, np.ndarray],
    area: np.ndarray | None,
    eccentricity: np.ndarray | None,
    ring_edges: tuple[float, ...],
) -> tuple[dict[str, np.ndarray], np.ndarray | None, np.ndarray | None, Layout]:
    """One hemisphere's half-image: per-vertex maps -> {name: [rows, cols]}, area [3, ...] and ring one-hot, layout.

    ``area`` holds 0 (none), 1 V1, 2 V2, 3 V3 per vertex; rings are the eccentricity
    bands of ``ring_edges`` within V1-V3. Without ``area`` (a subject to label, not to
    train on) both label images are None.
    """
    layout = lay_out(sphere, faces, hemi, rows, cols)
    r = layout.raster
    names = list(values)
    stack = sample(r, faces, np.stack([values[n] for n in names], axis=1)) if names else np.zeros((0, rows, cols))
    if area is None:
        return dict(zip(names, stack)), None, None, layout
    areas = sample_labels(r, faces, area, 3)
    rings = sample_labels(r, faces, ring_index(eccentricity, area, ring_edges), len(ring_edges) - 1)
    return dict(zip(names, stack)), areas, rings, layout
