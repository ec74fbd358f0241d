"""A synthetic stand-in for the HCP 7T retinotopy flatmaps: 14 channels, V1-V3 and eccentricity-ring labels.

    python -m autolabel.datasets.synthetic OUT_DIR                       # 181 subjects, 128x256 (about 10 s)
    python -m autolabel.datasets.synthetic OUT_DIR --subjects 8 --rows 32 --cols 64 --seed 1

Each hemisphere is a flat patch (FOV_MM tall) whose early visual cortex follows a
log-polar map w = log(z + a) (Schwartz 1977) of a composite visual angle: V1 takes
the middle band (split by the horizontal meridian along the calcarine), V2 and V3
are mirror-reversed bands on either side (ventral = upper field, dorsal = lower),
and a fourth band (hV4 / V3A) reverses once more so V3's outer border shows in the
pRF maps too. Per subject the map's position, rotation, scale (k, a), band widths
and a smooth warp vary. The pRF channels read the map directly (with noise rising
with eccentricity); anatomy, myelin and diffusion only see blurred, noisy
consequences of it (calcarine groove, thin and myelinated V1, optic radiation into
V1, VOF near V3's outer edge), so they are informative but clearly weaker.

The same (seed, index) gives the same subject bit for bit; the image is LH | RH,
with the right hemisphere mirrored so both foveas face the middle.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from autolabel.datasets.format import (
    CHANNELS,
    LABELS,
    MAX_LABEL_ECC,
    RING_EDGES,
    subject_ids,
    write_dataset,
)

# Bump whenever the generated arrays change: the cache folder name includes it.
GENERATOR_VERSION = 1
FOV_MM = 80.0  # height of the flat patch; columns keep the same mm per pixel
STIMULUS_ECC = 8.0  # the HCP 7T stimulus reached 8 degrees; pRFs beyond that are unreliable


@dataclass(frozen=True)
class MapParams:
    """One hemisphere's retinotopic map, drawn per subject."""

    fovea: complex  # position of the foveal confluence on the patch, mm
    psi: float  # direction (radians) in which eccentricity increases along the calcarine
    k: float  # cortical scale, mm per unit of log-eccentricity
    a: float  # foveal constant, degrees
    bounds: np.ndarray  # [2 sides, 4] cumulative band edges in composite angle: V1, V2, V3, V4/V3A
    calcarine_offset: float  # mm between the sulcus fundus and the horizontal meridian
    calcarine_width: float  # mm


def draw_params(rng: np.random.Generator) -> MapParams:
    # Each band spans pi/6 of composite angle (so V1's half, V2 and V3 are about equally wide),
    # jittered per band and per side so anatomy cannot infer V2/V3 borders from V1 alone.
    widths = (np.pi / 6) * np.exp(rng.normal(0.0, 0.12, size=(2, 4)))
    return MapParams(
        fovea=complex(14.0 + rng.normal(0, 3.0), rng.normal(0, 3.0)),
        psi=float(np.pi + rng.normal(0, 0.15)),
        k=float(14.0 * np.exp(rng.normal(0, 0.1))),
        a=float(0.75 * np.exp(rng.normal(0, 0.15))),
        bounds=np.cumsum(widths, axis=1),
        calcarine_offset=float(rng.normal(0, 1.2)),
        calcarine_width=float(2.5 * np.exp(rng.normal(0, 0.15))),
    )


# ----------------------------------------------------------------------------- smooth fields


@lru_cache(maxsize=64)
def gaussian_transfer(shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2.0 * (np.pi * sigma_px) ** 2 * (fy**2 + fx**2))


def blur(img: np.ndarray, sigma_mm: float, mm_per_px: float) -> np.ndarray:
    """Gaussian blur over the last two axes (FFT, periodic edges: the patch borders are off-map anyway)."""
    shape = img.shape[-2:]
    spec = np.fft.rfft2(img) * gaussian_transfer(shape, sigma_mm / mm_per_px)
    return np.fft.irfft2(spec, s=shape)


def smooth_noise(rng: np.random.Generator, n: int, shape: tuple[int, int], sigma_mm: float, mm_per_px: float):
    """``n`` independent smooth random fields with unit standard deviation."""
    fields = blur(rng.standard_normal((n, *shape)), sigma_mm, mm_per_px)
    return fields / fields.std(axis=(1, 2), keepdims=True)


# ----------------------------------------------------------------------------- retinotopy


def cortical_coordinates(p: complex | np.ndarray, m: MapParams) -> np.ndarray:
    """w such that p = fovea + k e^{i psi} (w - log a): Re w is log(ecc + a), Im w the composite angle."""
    return np.log(m.a) + (p - m.fovea) * np.exp(-1j * m.psi) / m.k


def visual_field(w: np.ndarray, m: MapParams) -> tuple[np.ndarray, np.ndarray]:
    """Invert w = log(z + a): eccentricity r (degrees) and composite angle alpha (radians)."""
    z = np.exp(w) - m.a
    alpha = np.angle(z)
    alpha[np.abs(w.imag) >= np.pi] = np.pi  # exp wraps around: those pixels are off the map
    return np.abs(z), alpha


def areas_and_polar_angle(alpha: np.ndarray, m: MapParams) -> tuple[np.ndarray, np.ndarray]:
    """Area index (0 none, 1 V1, 2 V2, 3 V3, 4 hV4/V3A) and polar angle in degrees (+ = upper field).

    Borders sit on meridians and each crossing reverses the angle's direction:
    V1|V2 vertical, V2|V3 horizontal, V3|V4 vertical, as in human early visual cortex.
    """
    side = (alpha < 0).astype(np.intp)  # 0 ventral (upper field), 1 dorsal (lower field)
    b = m.bounds[side]  # [H, W, 4]
    s = np.abs(alpha)
    area = np.select([s <= b[..., 0], s <= b[..., 1], s <= b[..., 2], s <= b[..., 3]], [1, 2, 3, 4], 0)
    lo = np.concatenate([np.zeros_like(s)[..., None], b[..., :3]], axis=-1)
    idx = np.clip(area - 1, 0, 3)
    frac = (s - np.take_along_axis(lo, idx[..., None], -1)[..., 0]) / (
        np.take_along_axis(b, idx[..., None], -1)[..., 0] - np.take_along_axis(lo, idx[..., None], -1)[..., 0]
    )
    # V1 and V3 run from the horizontal toward the vertical meridian, V2 and V4 back again.
    theta = np.where((area == 2) | (area == 4), 1.0 - frac, frac) * 90.0
    theta = np.where(area == 0, 0.0, theta) * np.where(side == 0, 1.0, -1.0)
    return area, theta


def label_maps(r: np.ndarray, area: np.ndarray, inside: np.ndarray) -> dict[str, np.ndarray]:
    """area [3,H,W] and ring [5,H,W] 0/1 masks, both limited to V1-V3 within 7 degrees."""
    mapped = inside & (area >= 1) & (area <= 3) & (r <= MAX_LABEL_ECC)
    areas = np.stack([mapped & (area == i) for i in (1, 2, 3)])
    edges = RING_EDGES
    rings = np.stack([mapped & (r >= lo) & (r < hi) for lo, hi in zip(edges[:-1], edges[1:])])
    rings[-1] |= mapped & (r == MAX_LABEL_ECC)
    return {"area": areas.astype(np.uint8), "ring": rings.astype(np.uint8)}


# ----------------------------------------------------------------------------- channels


def functional_channels(rng, r, theta, area, inside, mm_per_px) -> np.ndarray:
    """prf_x, prf_y (degrees, + x = contralateral), prf_sigma, prf_cod for one (left) hemisphere."""
    shape = r.shape
    visual = inside & (area >= 1) & (r <= 12.0)
    # Variance explained falls off beyond the stimulus and off the visual areas.
    taper = 1.0 / (1.0 + np.exp(np.minimum((r - STIMULUS_ECC) / 0.4, 50.0)))
    cod = (0.55 - 0.025 * r + 0.1 * smooth_noise(rng, 1, shape, 6.0, mm_per_px)[0]) * taper
    cod = np.where(visual, cod, 0.04) + 0.04 * rng.standard_normal(shape)
    cod = np.clip(cod, 0.0, 1.0)
    t = np.deg2rad(theta)
    # Noise rises with eccentricity and with poor fits; part of it is spatially smooth, like real pRF maps.
    sd = (0.08 + 0.05 * r) * (1.0 + 2.0 * (0.55 - np.minimum(cod, 0.55)))
    smooth = smooth_noise(rng, 2, shape, 3.0, mm_per_px)
    px = r * np.cos(t) + sd * (rng.standard_normal(shape) + 0.5 * smooth[0])
    py = r * np.sin(t) + sd * (rng.standard_normal(shape) + 0.5 * smooth[1])
    # pRF size grows with eccentricity and up the hierarchy (V1 < V2 < V3 < V4).
    scale = np.array([1.0, 1.0, 1.5, 2.1, 2.8])[area]
    sigma = (0.2 + 0.1 * r) * scale * np.exp(0.2 * rng.standard_normal(shape))
    # Off the map a fit returns junk anywhere in the stimulus disc.
    junk = ~visual | (r > STIMULUS_ECC + 1.0)
    jr = STIMULUS_ECC * np.sqrt(rng.random(shape))
    ja = rng.uniform(-np.pi, np.pi, shape)
    px = np.where(junk, jr * np.cos(ja), px)
    py = np.where(junk, jr * np.sin(ja), py)
    sigma = np.where(junk, rng.uniform(0.5, 6.0, shape), sigma)
    return np.stack([px, py, sigma, cod])


def anatomical_channels(rng, p, w, area, r, m, inside, mm_per_px) -> np.ndarray:
    """x y z curvature convexity thickness surface_area myelin dwi_OR dwi_VOF, all blurred and noisy."""
    shape = area.shape
    noise = smooth_noise(rng, 8, shape, 6.0, mm_per_px)
    white = rng.standard_normal((6, *shape))
    v1 = (area == 1) & (r <= 30.0)
    # 1. A curved occipital surface: flat position plus a bowl and gentle bumps (mm).
    x = p.real + 2.0 * noise[0]
    y = p.imag + 2.0 * noise[1]
    z = -0.012 * np.abs(p) ** 2 + 3.0 * noise[2]
    # 2. Calcarine sulcus along V1's horizontal meridian (anterior of the fovea), plus random folds.
    across = m.k * w.imag - m.calcarine_offset
    along = 1.0 / (1.0 + np.exp(-(w.real - np.log(m.a) + 0.2) / 0.1))
    groove = np.exp(-0.5 * (across / m.calcarine_width) ** 2) * along
    curvature = 0.35 * groove + 0.12 * noise[3] + 0.05 * white[0]
    convexity = blur(0.9 * groove + 0.35 * noise[3], 4.0, mm_per_px) + 0.4 * noise[4] + 0.05 * white[1]
    # 3. Striate cortex is thinner and more myelinated; edges blurred by registration error.
    v1_soft = blur(v1.astype(np.float64), 3.0, mm_per_px)
    thickness = 2.6 - 0.45 * v1_soft - 0.3 * groove + 0.15 * noise[5] + 0.15 * white[2]
    surface_area = 0.8 * np.exp(0.25 * noise[6] + 0.1 * white[3])
    myelin = 1.3 + 0.28 * v1_soft + 0.07 * noise[7] + 0.08 * white[4]
    # 4. Optic radiation ends in V1; the VOF near V3's outer (vertical-meridian) edge at 2-10 degrees.
    optic = blur((v1 & (r <= 12.0)).astype(np.float64), 3.5, mm_per_px)
    dwi_or = optic * np.exp(0.35 * white[5]) + 0.08 * np.abs(noise[0] - noise[4])
    edge = np.abs(np.abs(w.imag) - m.bounds[(w.imag < 0).astype(np.intp), 2]) * m.k
    vof = np.exp(-0.5 * (edge / 3.0) ** 2) * ((r > 2.0) & (r < 10.0))
    dwi_vof = blur(vof, 3.0, mm_per_px) * np.exp(0.3 * rng.standard_normal(shape)) + 0.05 * np.abs(noise[1])
    return np.stack([x, y, z, curvature, convexity, thickness, surface_area, myelin, dwi_or, dwi_vof])


# ----------------------------------------------------------------------------- assembly


def hemisphere(rng: np.random.Generator, rows: int, cols: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One left-hemisphere patch: features [14, rows, cols] and labels."""
    mm = FOV_MM / rows
    m = draw_params(rng)
    # 1. The patch grid in mm, centred; pixels outside the flattened disc are off-cortex.
    v = (np.arange(rows) - (rows - 1) / 2) * mm
    u = (np.arange(cols) - (cols - 1) / 2) * mm
    p = u[None, :] + 1j * v[:, None]
    inside = np.abs(p) <= 0.48 * FOV_MM
    # 2. A smooth warp: the same brain is sampled at slightly displaced points.
    warp = smooth_noise(rng, 2, p.shape, 15.0, mm) * 2.5
    w = cortical_coordinates(p + warp[0] + 1j * warp[1], m)
    r, alpha = visual_field(w, m)
    area, theta = areas_and_polar_angle(alpha, m)
    area = np.where(inside, area, 0)
    # 3. Channels in CHANNELS order; zero off-cortex like a real flatmap.
    anat = anatomical_channels(rng, p, w, area, r, m, inside, mm)
    func = functional_channels(rng, r, theta, area, inside, mm)
    feats = np.concatenate([anat, func]).astype(np.float32) * inside
    return feats, label_maps(r, area, inside)


def generate_subject(seed: int, index: int, rows: int, cols: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Subject ``index`` of cohort ``seed``: features [14, rows, cols] float32 (LH | mirrored RH) and labels."""
    rng = np.random.default_rng([seed, index])
    lf, ll = hemisphere(rng, rows, cols // 2)
    rf, rl = hemisphere(rng, rows, cols // 2)
    # The right hemisphere sees the left visual field and sits on the other side of the head.
    rf = rf[:, :, ::-1].copy()
    rf[CHANNELS.index("prf_x")] *= -1
    rf[CHANNELS.index("x")] *= -1
    feats = np.concatenate([lf, rf], axis=2)
    labels = {k: np.concatenate([ll[k], rl[k][:, :, ::-1]], axis=2) for k in LABELS}
    return feats, labels


def generate_cohort(root: Path, seed: int = 0, subjects: int = 181, rows: int = 128, cols: int = 256) -> Path:
    """Write a synthetic cohort in the dataset format (``autolabel.datasets.format``) under ``root``."""
    if cols % 2 or rows < 16 or cols < 32:
        raise ValueError(f"rows={rows}, cols={cols}: need rows >= 16 and an even cols >= 32 (LH | RH)")
    items = ((sid, *generate_subject(seed, i, rows, cols)) for i, sid in enumerate(subject_ids(subjects)))
    source = {"generator": "autolabel.datasets.synthetic", "version": GENERATOR_VERSION, "seed": seed}
    return write_dataset(Path(root), items, CHANNELS, LABELS, source=source)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write a synthetic flatmap cohort.")
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subjects", type=int, default=181)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--cols", type=int, default=256)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    try:
        generate_cohort(args.out, args.seed, args.subjects, args.rows, args.cols)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    print(f"{args.subjects} subjects {args.rows}x{args.cols} -> {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
