"""A cohort on a real brain: fsaverage's anatomy and the Benson 2014 atlas, varied per subject.

    python -m autolabel.datasets.fsaverage OUT_DIR --subjects 181 --rows 128 --cols 256 --seed 0
    python -m autolabel.datasets.fsaverage --write-subject SUBJECTS_DIR     # fsaverage5 as a FreeSurfer subject

Sources, both shipped inside installed packages (nothing is downloaded):
- anatomy: fsaverage5 from nilearn 0.14.1 (``nilearn/datasets/data/fsaverage5``: white, pial,
  sphere, curv, sulc, thick, area as GIfTI; 10,242 vertices per hemisphere);
- function: the Benson 2014 retinotopy atlas v4.0 on full-resolution fsaverage from
  neuropythy 0.13.0 (``neuropythy/lib/data/fsaverage/surf/?h.benson14_{angle,eccen,sigma,varea}.v4_0.mgz``
  and its sphere ``?h.benson14_retinotopy.v4_0.sphere.reg``; 163,842 vertices). fsaverage's first
  10,242 vertices are fsaverage5's (median 0.01 degrees apart, measured 2026-12-01), so the atlas
  restricts to fsaverage5 by slicing.

Each subject is the template seen through three smooth random warps of the sphere's occipital
cap (tapered to zero at the projection's rim, so the disk outline stays fixed), all applied
before the projection (``autolabel.datasets.cortex``, the importer's own):
1. an anatomy warp (~3 px RMS) moving everything;
2. a function warp (~1.2 px) plus a V1-V3 size factor (log-normal, SD 0.12: V1 area varies two- to
   threefold across adults, Dougherty et al. 2003, J. Vision 3(10)) moving the atlas against
   the anatomy, so anatomy predicts where V1-V3 are only roughly;
3. a label warp (~0.8 px) moving only the labels, as a human rater's borders differ from where
   the pRF maps reverse: the pRF maps never hold the labels exactly.
Labels are the atlas's V1-V3 within 7 degrees (rings 0-0.5-1-2-4-7 degrees), as the published
hand-drawn labels.

Channels. Real (template anatomy with per-subject noise): x y z (mid-thickness, mm), curvature,
convexity (FreeSurfer sulc), thickness, surface_area. From the atlas with noise: prf_x, prf_y
(from polar angle and eccentricity, noise rising with eccentricity), prf_sigma. Wherever the atlas
has no value (outside its 12 areas) the pRF channels hold a smooth random fit from the stimulus
disc, never a fill. STAND-INS (no real source here), documented in README "The fsaverage cohort":
prf_cod (fit quality falling with eccentricity, low off the atlas's areas, which extend well
beyond V1-V3), myelin (T1w/T2w is high in V1 and where cortex is thin), dwi_OR (the optic
radiation ends in V1), dwi_VOF (the vertical occipital fasciculus runs near V3's outer edge), each
blurred and noisy.

The same (seed, index) gives the same subject bit for bit.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from autolabel.datasets.cortex import (
    FRAME_CENTRE,
    FRAME_HALF_HEIGHT,
    HEMIS,
    frame_pixels,
    neuropythy_lib,
    pole_rotation,
    prf_xy,
    project,
    rasterise,
    ring_index,
    sample,
    sample_labels,
)
from autolabel.datasets.format import (
    CHANNELS,
    LABELS,
    MANIFEST,
    MAX_LABEL_ECC,
    RING_EDGES,
    publish,
    subject_ids,
    write_dataset,
)
from autolabel.datasets.synthetic import STIMULUS_ECC, blur

# Bump whenever the generated arrays change: the cache folder name includes it.
GENERATOR_VERSION = 1
FS5_VERTICES = 10_242
SIDES = {"lh": "left", "rh": "right"}


# ----------------------------------------------------------------------------- the template


def nilearn_fsaverage5() -> Path:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; pip install nilearn==0.14.1 (a dependency of autolabel)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "fsaverage5"


def read_gifti(path: Path) -> list[np.ndarray]:
    import nibabel as nib

    return [np.asarray(d.data) for d in nib.load(path).darrays]


def read_mgz(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj, np.float64).ravel()


@dataclass(frozen=True)
class Template:
    """One hemisphere of fsaverage: fsaverage5 anatomy and the full-resolution atlas near the pole."""

    sphere5: np.ndarray  # [10242, 3] registered sphere (fsaverage5 is its own registration)
    faces5: np.ndarray
    white5: np.ndarray
    pial5: np.ndarray
    morph5: dict[str, np.ndarray]  # curv, sulc, thickness, area
    sphere: np.ndarray  # atlas mesh, cut to the occipital cap: [M, 3]
    faces: np.ndarray
    angle: np.ndarray  # degrees, neuropythy's signed convention (RH negative)
    eccen: np.ndarray
    sigma: np.ndarray
    varea: np.ndarray  # 0 none, 1 V1, 2 V2, 3 V3, 4-12 other atlas areas


def read_fs5(hemi: str) -> dict[str, np.ndarray]:
    """nilearn's fsaverage5 hemisphere: surfaces and morphometry."""
    d, side = nilearn_fsaverage5(), SIDES[hemi]
    white, faces = read_gifti(d / f"white_{side}.gii.gz")
    pial, _ = read_gifti(d / f"pial_{side}.gii.gz")
    sphere, _ = read_gifti(d / f"sphere_{side}.gii.gz")
    morph = {k: read_gifti(d / f"{f}_{side}.gii.gz")[0] for k, f in
             (("curv", "curv"), ("sulc", "sulc"), ("thickness", "thick"), ("area", "area"))}
    return {"white": white, "pial": pial, "sphere": sphere, "faces": faces} | morph


def read_atlas(hemi: str) -> dict[str, np.ndarray]:
    """The Benson 2014 atlas on full-resolution fsaverage, angle signed as neuropythy's convention wants."""
    import nibabel as nib

    surf = neuropythy_lib() / "data" / "fsaverage" / "surf"
    sphere, faces = nib.freesurfer.read_geometry(str(surf / f"{hemi}.benson14_retinotopy.v4_0.sphere.reg"))
    atlas = {k: read_mgz(surf / f"{hemi}.benson14_{k}.v4_0.mgz") for k in ("angle", "eccen", "sigma", "varea")}
    # The atlas files store |angle| (0..180) for both hemispheres; the right one maps the left field.
    if hemi == "rh":
        atlas["angle"] = -atlas["angle"]
    atlas["varea"] = atlas["varea"].astype(np.int64)
    return {"sphere": sphere, "faces": faces.astype(np.int64)} | atlas


@lru_cache(maxsize=2)
def template(hemi: str) -> Template:
    fs5, atlas = read_fs5(hemi), read_atlas(hemi)
    # Keep only the atlas near the frame (with room for warps): rasterising 5% of the mesh, not all of it.
    uv, front = project(atlas["sphere"], hemi)
    near = front & (np.abs(uv - FRAME_CENTRE[hemi]).max(axis=1) < FRAME_HALF_HEIGHT * 1.5)
    keep_faces = atlas["faces"][near[atlas["faces"]].all(axis=1)]
    used = np.unique(keep_faces)
    index = np.full(len(near), -1, np.int64)
    index[used] = np.arange(len(used))
    return Template(
        sphere5=fs5["sphere"].astype(np.float64),
        faces5=fs5["faces"].astype(np.int64),
        white5=fs5["white"].astype(np.float64),
        pial5=fs5["pial"].astype(np.float64),
        morph5={k: fs5[k].astype(np.float64) for k in ("curv", "sulc", "thickness", "area")},
        sphere=atlas["sphere"][used],
        faces=index[keep_faces],
        angle=atlas["angle"][used],
        eccen=atlas["eccen"][used],
        sigma=atlas["sigma"][used],
        varea=atlas["varea"][used],
    )


def write_fsaverage5_subject(subjects_dir: Path, sid: str = "fsaverage5") -> Path:
    """fsaverage5 as a FreeSurfer-layout subject: nilearn's meshes (inflated too) and morphometry, the atlas as
    pRF maps and labels.

    The atlas (sliced to fsaverage5) gives polar angle, eccentricity and radius; variance
    explained is 1 on the atlas's areas and 0 elsewhere; labels are its V1-V3 (all
    eccentricities), and ``?h.visual_area_7deg.mgz`` the cohort's own labels (V1-V3 within 7
    degrees), the truth to score ``autolabel.predict`` against. Used by the importer's and
    predict's tests and to try both on a real brain.
    """
    import nibabel as nib

    surf = Path(subjects_dir) / sid / "surf"
    surf.mkdir(parents=True, exist_ok=True)
    for hemi in HEMIS:
        fs5, atlas = read_fs5(hemi), read_atlas(hemi)
        faces = fs5["faces"].astype(np.int32)
        for name, key in (("white", "white"), ("pial", "pial"), ("sphere.reg", "sphere")):
            nib.freesurfer.write_geometry(str(surf / f"{hemi}.{name}"), fs5[key].astype(np.float64), faces)
        inflated = read_gifti(nilearn_fsaverage5() / f"infl_{SIDES[hemi]}.gii.gz")[0]  # for predict's picture
        nib.freesurfer.write_geometry(str(surf / f"{hemi}.inflated"), inflated.astype(np.float64), faces)
        for name in ("curv", "sulc", "thickness", "area"):
            nib.freesurfer.write_morph_data(str(surf / f"{hemi}.{name}"), fs5[name].astype(np.float32))
        varea = atlas["varea"][:FS5_VERTICES]
        maps = {
            "prf_polar_angle": atlas["angle"][:FS5_VERTICES],
            "prf_eccentricity": atlas["eccen"][:FS5_VERTICES],
            "prf_radius": atlas["sigma"][:FS5_VERTICES],
            "prf_variance_explained": (varea > 0).astype(np.float64),
            "visual_area": np.where(varea <= 3, varea, 0),
            "visual_area_7deg": cohort_labels(varea, atlas["eccen"][:FS5_VERTICES]),
        }
        for name, values in maps.items():
            img = nib.MGHImage(values.astype(np.float32).reshape(-1, 1, 1), np.eye(4))
            nib.save(img, surf / f"{hemi}.{name}.mgz")
    return Path(subjects_dir) / sid


def cohort_labels(varea: np.ndarray, eccen: np.ndarray) -> np.ndarray:
    """The cohort's labels per vertex: the atlas's V1-V3 (1-3) within 7 degrees, as the published hand-drawn ones; else 0."""
    return np.where((varea <= 3) & (eccen <= MAX_LABEL_ECC), varea, 0)


# ----------------------------------------------------------------------------- warps


def smooth_field(rng: np.random.Generator, n: int, scale: float, terms: int = 10) -> "Field":
    """``n`` smooth random scalar fields on the projected plane (random Fourier features, unit RMS)."""
    freq = rng.normal(0.0, 1.0 / scale, size=(n * terms, 2))
    phase = rng.uniform(0, 2 * np.pi, size=n * terms)
    amp = rng.normal(0.0, np.sqrt(2.0 / terms), size=(n, terms))
    return Field(freq, phase, amp)


@dataclass(frozen=True)
class Field:
    freq: np.ndarray  # [n * terms, 2]
    phase: np.ndarray  # [n * terms]
    amp: np.ndarray  # [n, terms]

    def exact(self, uv: np.ndarray) -> np.ndarray:
        """Values [N, n] at projected points uv [N, 2]."""
        n, terms = self.amp.shape
        waves = np.cos(uv @ self.freq.T + self.phase)  # [N, n * terms]
        return np.column_stack([waves[:, i * terms:(i + 1) * terms] @ self.amp[i] for i in range(n)])

    def __call__(self, uv: np.ndarray, steps: int = 96) -> np.ndarray:
        """Values [N, n], bilinearly interpolated from a grid over [-1, 1]^2 (the fields are far smoother than it)."""
        axis = np.linspace(-1.0, 1.0, steps)
        gu, gv = np.meshgrid(axis, axis, indexing="ij")
        grid = self.exact(np.column_stack([gu.ravel(), gv.ravel()])).reshape(steps, steps, -1)
        t = (np.clip(uv, -1.0, 1.0) + 1.0) * (steps - 1) / 2
        i = np.minimum(t.astype(np.int64), steps - 2)
        f = t - i
        a, b = i[:, 0], i[:, 1]
        fu, fv = f[:, :1], f[:, 1:]
        return ((1 - fu) * (1 - fv) * grid[a, b] + fu * (1 - fv) * grid[a + 1, b]
                + (1 - fu) * fv * grid[a, b + 1] + fu * fv * grid[a + 1, b + 1])


def warp_sphere(sphere: np.ndarray, hemi: str, shift: np.ndarray) -> np.ndarray:
    """Move the sphere's occipital cap by ``shift`` [N, 2] (projected units), tapered to zero at the rim.

    The displacement is written in the pole's orthographic chart and fades towards the
    projection's rim (|uv| -> 1), so the disk outline never moves; the back half stays.
    """
    radius = np.linalg.norm(sphere, axis=1).mean()
    rotation = pole_rotation(hemi)
    rotated = (sphere / radius) @ rotation.T
    uv, front = rotated[:, :2], rotated[:, 2] > 0
    taper = np.clip(1.0 - np.sum(uv**2, axis=1), 0.0, 1.0) ** 2
    moved = uv + shift * taper[:, None]
    z = np.sqrt(np.clip(1.0 - np.sum(moved**2, axis=1), 0.0, 1.0))
    out = np.where(front[:, None], np.column_stack([moved, z]), rotated)
    return (out @ rotation) * radius


def displacement(rng: np.random.Generator, rms_px: float, scale: float = 0.25) -> "Field":
    """A smooth random 2-D displacement field of about ``rms_px`` pixels RMS in a 128-row image.

    ``scale`` is the fields' correlation length in projected units (the frame is 0.92 tall).
    """
    field = smooth_field(rng, 2, scale)
    units = rms_px * 2 * FRAME_HALF_HEIGHT / 128
    return Field(field.freq, field.phase, field.amp * units)


# ----------------------------------------------------------------------------- one hemisphere


def flatten_mesh(sphere, faces, hemi, rows, cols):
    uv, front = project(sphere, hemi)
    return rasterise(frame_pixels(uv, hemi, rows, cols), faces, front, rows, cols)


def hemisphere(rng: np.random.Generator, hemi: str, rows: int, cols: int):
    """One hemisphere's half-image: {channel: [rows, cols]} and labels {area, ring}."""
    t = template(hemi)
    shape = (rows, cols)
    # 1. Warps: anatomy (everything), function (the atlas against the anatomy, and V1-V3 size),
    #    labels (against the pRF maps). Each is evaluated once at the template's projected vertices.
    uv5, uva = project(t.sphere5, hemi)[0], project(t.sphere, hemi)[0]
    anat, func, label = displacement(rng, 3.0), displacement(rng, 1.2, 0.15), displacement(rng, 0.8, 0.1)
    v1_centre = np.asarray(FRAME_CENTRE[hemi]) + np.array([0.04 if hemi == "lh" else -0.04, 0.0])
    size = float(np.exp(rng.normal(0.0, 0.12)))
    shift_func = anat(uva) + func(uva) + (uva - v1_centre) * (size - 1.0)
    r_anat = flatten_mesh(warp_sphere(t.sphere5, hemi, anat(uv5)), t.faces5, hemi, rows, cols)
    r_func = flatten_mesh(warp_sphere(t.sphere, hemi, shift_func), t.faces, hemi, rows, cols)
    r_label = flatten_mesh(warp_sphere(t.sphere, hemi, shift_func + label(uva)), t.faces, hemi, rows, cols)
    # 2. Labels: the atlas's V1-V3 within 7 degrees.
    labelled = cohort_labels(t.varea, t.eccen)
    labels = {
        "area": sample_labels(r_label, t.faces, labelled, 3),
        "ring": sample_labels(r_label, t.faces, ring_index(t.eccen, labelled, RING_EDGES), len(RING_EDGES) - 1),
    }
    # 3. Channels.
    ch = anatomy_channels(rng, t, r_anat, shape)
    ch |= function_channels(rng, t, r_func, shape, hemi)
    ch |= stand_in_channels(rng, t, r_func, ch, shape)
    on = r_anat.covered & r_func.covered
    return {k: np.where(on, v, 0.0) for k, v in ch.items()}, labels


def soften(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur by ``sigma_px`` pixels of a 128-row image (scaled to this one, so cortex blurs alike)."""
    return blur(img, sigma_px * img.shape[-2] / 128, 1.0)


def noise(rng: np.random.Generator, shape, sigma_px: float) -> np.ndarray:
    """A smooth random image with unit standard deviation (``sigma_px`` as in ``soften``)."""
    f = soften(rng.standard_normal(shape), sigma_px)
    return f / f.std()


def anatomy_channels(rng, t: Template, r, shape) -> dict[str, np.ndarray]:
    """The template's own anatomy, sampled through the warped mesh, plus per-subject noise."""
    midgray = (t.white5 + t.pial5) / 2
    per_vertex = np.column_stack([midgray, t.morph5["curv"], t.morph5["sulc"], t.morph5["thickness"], t.morph5["area"]])
    x, y, z, curv, sulc, thick, area = sample(r, t.faces5, per_vertex)
    white = rng.standard_normal((4, *shape))
    return {
        "x": x + rng.normal(0, 2.0) + 1.5 * noise(rng, shape, 12),
        "y": y + rng.normal(0, 2.0) + 1.5 * noise(rng, shape, 12),
        "z": z + rng.normal(0, 2.0) + 1.5 * noise(rng, shape, 12),
        "curvature": curv + 0.06 * noise(rng, shape, 3) + 0.03 * white[0],
        "convexity": sulc + 0.25 * noise(rng, shape, 4) + 0.05 * white[1],
        "thickness": thick * np.exp(rng.normal(0, 0.05)) + 0.12 * noise(rng, shape, 4) + 0.1 * white[2],
        "surface_area": area * np.exp(rng.normal(0, 0.1) + 0.15 * noise(rng, shape, 4) + 0.1 * white[3]),
    }


def function_channels(rng, t: Template, r, shape, hemi) -> dict[str, np.ndarray]:
    """prf_x, prf_y, prf_sigma from the atlas; off its areas, a smooth random fit; noise rising with eccentricity."""
    angle, ecc, sigma, mapped = sample(r, t.faces, np.column_stack([t.angle, t.eccen, t.sigma, t.varea > 0]))
    mapped = mapped > 0.5
    # 1. Where the atlas is silent, a poor fit lands anywhere in the stimulus disc (smoothly, as real maps do).
    junk_ecc = STIMULUS_ECC * np.clip(0.5 + 0.35 * noise(rng, shape, 3), 0.02, 1.0)
    junk_angle = 180.0 * np.clip(0.35 * noise(rng, shape, 3), -1.0, 1.0)
    ecc = np.where(mapped, ecc, junk_ecc)
    angle = np.where(mapped, angle, junk_angle)
    sigma = np.where(mapped, sigma, 0.5 + 3.0 * np.abs(noise(rng, shape, 3)))
    # 2. Measurement noise: part smooth, part per pixel, growing with eccentricity.
    sd = 0.15 + 0.12 * ecc
    px, py = prf_xy(angle, ecc)
    px = px + sd * (rng.standard_normal(shape) + 0.7 * noise(rng, shape, 2))
    py = py + sd * (rng.standard_normal(shape) + 0.7 * noise(rng, shape, 2))
    sigma = sigma * np.exp(0.25 * rng.standard_normal(shape))
    # 3. Fit quality (a stand-in: the atlas has none): falls with eccentricity and beyond the stimulus.
    taper = 1.0 / (1.0 + np.exp(np.minimum((ecc - STIMULUS_ECC) / 0.5, 50.0)))
    cod = np.where(mapped, (0.6 - 0.02 * ecc) * taper, 0.06) + 0.1 * noise(rng, shape, 4) + 0.05 * rng.standard_normal(shape)
    return {"prf_x": px, "prf_y": py, "prf_sigma": sigma, "prf_cod": np.clip(cod, 0.0, 1.0)}


def stand_in_channels(rng, t: Template, r, ch, shape) -> dict[str, np.ndarray]:
    """myelin, dwi_OR, dwi_VOF: stand-ins from anatomy, the biology they mimic and noise (no real source here)."""
    v1, v3, beyond = sample(r, t.faces, np.column_stack([t.varea == 1, t.varea == 3, t.varea >= 4]))
    white = rng.standard_normal((3, *shape))
    # T1w/T2w myelin is high in V1 (stria of Gennari) and where cortex is thin.
    myelin = 1.4 + 0.25 * soften(v1, 3.0) - 0.15 * (ch["thickness"] - 2.3) + 0.08 * noise(rng, shape, 4) + 0.06 * white[0]
    # The optic radiation ends in V1 (within the stimulated field, ~12 degrees); tractography blurs
    # its ending over several millimetres and is noisy, so it marks V1 only roughly.
    ecc = sample(r, t.faces, t.eccen)[0]
    dwi_or = soften(v1 * (ecc < 12), 5.0) * np.exp(0.5 * white[1]) + 0.25 * np.abs(noise(rng, shape, 4))
    # The VOF runs near V3's outer edge, where V3 meets the areas beyond it, at 2-10 degrees.
    edge = soften(v3, 2.0) * soften(beyond, 2.0) * ((ecc > 2) & (ecc < 10))
    dwi_vof = soften(edge / max(edge.max(), 1e-6), 4.0) * np.exp(0.5 * white[2]) + 0.15 * np.abs(noise(rng, shape, 4))
    return {"myelin": myelin, "dwi_OR": dwi_or, "dwi_VOF": dwi_vof}


# ----------------------------------------------------------------------------- the cohort


def generate_subject(seed: int, index: int, rows: int, cols: int):
    """Subject ``index`` of cohort ``seed``: features [14, rows, cols] float32 (LH | RH) and labels."""
    rng = np.random.default_rng([seed, index, 7])
    halves = [hemisphere(rng, hemi, rows, cols // 2) for hemi in HEMIS]
    feats = np.concatenate([np.stack([h[0][c] for c in CHANNELS]) for h in halves], axis=2).astype(np.float32)
    labels = {k: np.concatenate([h[1][k] for h in halves], axis=2) for k in LABELS}
    return feats, labels


def generate_cohort(root: Path, seed: int = 0, subjects: int = 181, rows: int = 128, cols: int = 256) -> Path:
    """Write an fsaverage cohort in the dataset format under ``root``."""
    items = ((sid, *generate_subject(seed, i, rows, cols)) for i, sid in enumerate(subject_ids(subjects)))
    source = {"generator": "autolabel.datasets.fsaverage", "version": GENERATOR_VERSION, "seed": seed,
              "stand_ins": ["myelin", "dwi_OR", "dwi_VOF", "prf_cod"]}
    return write_dataset(Path(root), items, CHANNELS, LABELS, source=source)


def cohort_dir(spec, cache: Path) -> Path:
    return cache / f"fsaverage-s{spec.seed}-n{spec.subjects}-{spec.rows}x{spec.cols}-v{GENERATOR_VERSION}"


def ensure_cohort(spec, cache: Path) -> Path:
    """Generate the cohort unless the cache has it (the same race-safe publish as the analytic cohort)."""
    target = cohort_dir(spec, cache)
    if not (target / MANIFEST).is_file():
        publish(target, lambda tmp: generate_cohort(tmp, spec.seed, spec.subjects, spec.rows, spec.cols))
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write an fsaverage flatmap cohort, or fsaverage5 as a FreeSurfer subject.")
    ap.add_argument("out", type=Path, help="output folder (created); with --write-subject, a SUBJECTS_DIR")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subjects", type=int, default=181)
    ap.add_argument("--rows", type=int, default=128)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--write-subject", action="store_true", help="write fsaverage5 as SUBJECTS_DIR/fsaverage5")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.write_subject:
        print(f"wrote {write_fsaverage5_subject(args.out)}")
        return 0
    generate_cohort(args.out, args.seed, args.subjects, args.rows, args.cols)
    print(f"{args.subjects} subjects {args.rows}x{args.cols} -> {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
