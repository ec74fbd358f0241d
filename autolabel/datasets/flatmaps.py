"""FreeSurfer subjects -> an autolabel-flatmaps dataset, and a picture of any dataset's subject.

    python -m autolabel.datasets.flatmaps import SUBJECTS_DIR OUT [--subjects ID ...] [--rows 128 --cols 256]
                                      [--file prf_polar_angle={hemi}.angle.mgz ...]
    python -m autolabel.datasets.flatmaps show DATASET [SUBJECT] -o subject.png

Each subject's hemispheres are flattened through neuropythy's occipital-pole projection
of its registered sphere (``surf/?h.sphere.reg``), as the Visual Autolabel study made
its flatmaps, framed and rasterised by ``autolabel.datasets.cortex``. Files per subject and
hemisphere, under ``SUBJECTS_DIR/<id>/surf/`` (``--file KEY=TEMPLATE`` renames any,
``{hemi}`` becoming lh or rh):

    white pial sphere_reg                FreeSurfer surfaces  ({hemi}.white, .pial, .sphere.reg)
    curv sulc thickness area             FreeSurfer morphometry ({hemi}.curv, ...)
    prf_polar_angle prf_eccentricity     pRF maps, .mgz, neuropythy's conventions (see cortex.prf_xy)
    prf_radius prf_variance_explained
    visual_area                          labels .mgz: 0 none, 1 V1, 2 V2, 3 V3
    myelin dwi_OR dwi_VOF                optional .mgz; a channel is kept only if every subject has it
    inflated                             never imported: autolabel.predict's picture shows it when present

``read_subject`` is the one reader of a subject: ``autolabel.predict`` calls it too, asking only
for the channels its models need.

Any bad input (a missing file, a map whose vertex count differs from its surface,
NaNs, an unknown subject id) stops the import with one line naming the subject and
the file, exit 2, and leaves nothing in OUT: the dataset is built in a temporary
folder beside OUT and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolabel.datasets.cohort import open_cohort
from autolabel.datasets.cortex import HEMIS, flatten_hemisphere, prf_xy
from autolabel.datasets.format import (
    CHANNELS,
    LABELS,
    RING_EDGES,
    DatasetError,
    publish,
    write_dataset,
)
from autolabel.errors import EXIT_BAD_INPUT, EXIT_NO_SPACE, EXIT_OK, BadInput, no_space
from autolabel.options import SUBJECT_ID

# Default file of each input, per hemisphere, under <subject>/surf/.
FILES: dict[str, str] = {
    "white": "{hemi}.white",
    "pial": "{hemi}.pial",
    "sphere_reg": "{hemi}.sphere.reg",
    "curv": "{hemi}.curv",
    "sulc": "{hemi}.sulc",
    "thickness": "{hemi}.thickness",
    "area": "{hemi}.area",
    "prf_polar_angle": "{hemi}.prf_polar_angle.mgz",
    "prf_eccentricity": "{hemi}.prf_eccentricity.mgz",
    "prf_radius": "{hemi}.prf_radius.mgz",
    "prf_variance_explained": "{hemi}.prf_variance_explained.mgz",
    "visual_area": "{hemi}.visual_area.mgz",
    "myelin": "{hemi}.myelin.mgz",
    "dwi_OR": "{hemi}.dwi_OR.mgz",
    "dwi_VOF": "{hemi}.dwi_VOF.mgz",
    "inflated": "{hemi}.inflated",  # never imported: only autolabel.predict's picture shows it, when present
}
SURFACES = ("white", "pial", "sphere_reg")
OPTIONAL = ("myelin", "dwi_OR", "dwi_VOF")  # channel names equal their file keys
# Channels that are a per-vertex map read as is (channel name -> file key).
MORPHOMETRY = {"curvature": "curv", "convexity": "sulc", "thickness": "thickness", "surface_area": "area"}
# The files each channel is made from (the surfaces are read for every subject anyway).
CHANNEL_FILES: dict[str, tuple[str, ...]] = (
    {c: ("white", "pial") for c in ("x", "y", "z")}
    | {c: (key,) for c, key in MORPHOMETRY.items()}
    | {c: (c,) for c in OPTIONAL}
    | {"prf_x": ("prf_polar_angle", "prf_eccentricity"), "prf_y": ("prf_polar_angle", "prf_eccentricity"),
       "prf_sigma": ("prf_radius",), "prf_cod": ("prf_variance_explained",)}
)
REQUIRED = tuple(c for c in CHANNELS if c not in OPTIONAL)  # what the importer needs of every subject


@dataclass
class Hemisphere:
    """One hemisphere as read from disk, every map checked against the surfaces' vertex count."""

    sphere: np.ndarray  # [N, 3] registered sphere
    faces: np.ndarray  # [F, 3]
    maps: dict[str, np.ndarray]  # per-vertex channel values by channel name
    area: np.ndarray | None  # [N] int 0..3 (None: read without labels)
    eccentricity: np.ndarray | None  # [N] degrees (None: neither labels nor pRF position read)


# ----------------------------------------------------------------------------- reading


def read_surface(path: Path, sid: str, key: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib  # deferred: only importing and the cohort need nibabel

    check_exists(path, sid, key)
    try:
        if path.name.endswith(".gii") or path.name.endswith(".gii.gz"):
            img = nib.load(path)
            coords, faces = img.darrays[0].data, img.darrays[1].data
        else:
            coords, faces = nib.freesurfer.read_geometry(str(path))
    except Exception as e:  # nibabel raises many types for a corrupt file
        raise BadInput(f"subject {sid}: {path}: not a readable surface ({type(e).__name__}: {e}); rewrite it") from None
    coords = np.asarray(coords, np.float64)
    check_finite(coords, path, sid)
    return coords, np.asarray(faces, np.int64)


def read_map(path: Path, sid: str, n_vertices: int, key: str | None = None, channels: tuple[str, ...] = ()) -> np.ndarray:
    """A per-vertex map from FreeSurfer morphometry (curv, ...), MGH/MGZ, GIfTI or NIfTI.

    ``key`` and ``channels`` (the file's ``--file`` key, the channels made from it) only
    make the message about a missing file say how to fix it.
    """
    import nibabel as nib

    check_exists(path, sid, key, channels)
    try:
        if path.suffix in (".mgz", ".mgh", ".gii", ".nii") or path.name.endswith((".nii.gz", ".gii.gz")):
            img = nib.load(path)
            data = img.darrays[0].data if hasattr(img, "darrays") else np.asarray(img.dataobj)
        else:
            data = nib.freesurfer.read_morph_data(str(path))
    except Exception as e:
        raise BadInput(f"subject {sid}: {path}: not a readable map ({type(e).__name__}: {e}); rewrite it") from None
    data = np.asarray(data, np.float64).ravel()
    if data.size != n_vertices:
        raise BadInput(
            f"subject {sid}: {path}: {data.size} values but the surfaces have {n_vertices} vertices; "
            f"the map must be on this subject's own surface"
        )
    check_finite(data, path, sid)
    return data


class MissingFile(BadInput):
    """A subject's file that is not there; ``channels`` are those it would have given (empty: a surface or labels)."""

    def __init__(self, sid: str, path: Path, key: str | None, channels: tuple[str, ...]):
        self.sid, self.path, self.key, self.channels = sid, path, key, channels
        needed = f" (channels {', '.join(channels)} come from it)" if channels else ""
        point = f"--file {key}=TEMPLATE" if key else "--file"
        super().__init__(f"subject {sid}: {path}: missing{needed}; provide it or point {point} at it (see README 'Importing')")


def check_exists(path: Path, sid: str, key: str | None = None, channels: tuple[str, ...] = ()) -> None:
    if not path.is_file():
        raise MissingFile(sid, path, key, channels)


def check_finite(a: np.ndarray, path: Path, sid: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise BadInput(f"subject {sid}: {path}: {bad} NaN/inf value(s); fill them (e.g. 0 with variance explained 0)")


def code_names(names: tuple[str, ...]) -> str:
    """'0 (none), 1 V1, 2 V2 or 3 V3' for label names ('V1', 'V2', 'V3')."""
    codes = ["0 (none)"] + [f"{i} {n}" for i, n in enumerate(names, 1)]
    return ", ".join(codes[:-1]) + " or " + codes[-1]


def read_codes(path: Path, sid: str, n_vertices: int, names: tuple[str, ...], key: str | None = None) -> np.ndarray:
    """Per-vertex integer labels 0 (none), 1..len(names); any other value is bad input."""
    values = read_map(path, sid, n_vertices, key)
    if not np.isin(values, np.arange(len(names) + 1)).all():
        raise BadInput(f"subject {sid}: {path}: values must be {code_names(names)}")
    return values.astype(np.int64)


def read_hemisphere(
    surf: Path, sid: str, hemi: str, files: dict[str, str], channels: tuple[str, ...] | None = None, labels: bool = True
) -> Hemisphere:
    """Read and check one hemisphere; channel meanings are written down next to each line.

    ``channels`` None reads what the importer needs: every channel, the optional ones
    (myelin, diffusion) only when their files exist. Given, exactly those are read and
    each one's files must exist (``autolabel.predict`` asks for a model's input set, so
    an ``anat`` model needs no pRF maps). ``labels`` reads ``visual_area`` and the
    eccentricity that cuts the rings.
    """
    path = {k: surf / t.format(hemi=hemi) for k, t in files.items()}
    if channels is None:
        channels = REQUIRED + tuple(c for c in OPTIONAL if path[c].is_file())
    white, faces = read_surface(path["white"], sid, "white")
    n = len(white)
    pial, _ = read_surface(path["pial"], sid, "pial")
    sphere, _ = read_surface(path["sphere_reg"], sid, "sphere_reg")
    for key, coords in (("pial", pial), ("sphere_reg", sphere)):
        if len(coords) != n:
            raise BadInput(f"subject {sid}: {path[key]}: {len(coords)} vertices but {path['white']} has {n}")

    def get(key: str) -> np.ndarray:
        return read_map(path[key], sid, n, key, tuple(c for c in channels if key in CHANNEL_FILES[c]))

    midgray = (white + pial) / 2  # x y z: the mid-thickness surface (mm), between white and pial
    maps = {c: midgray[:, i] for i, c in enumerate("xyz") if c in channels}
    # curvature = ?h.curv (white surface mean curvature); convexity = ?h.sulc as FreeSurfer writes it
    # (positive in sulci; neuropythy names this file 'convexity'); thickness (mm); surface_area = ?h.area (mm²).
    maps |= {channel: get(key) for channel, key in MORPHOMETRY.items() if channel in channels}
    maps |= {name: get(name) for name in OPTIONAL if name in channels}
    ecc = get("prf_eccentricity") if labels or {"prf_x", "prf_y"} & set(channels) else None
    if {"prf_x", "prf_y"} & set(channels):
        maps["prf_x"], maps["prf_y"] = prf_xy(get("prf_polar_angle"), ecc)
    if "prf_sigma" in channels:
        maps["prf_sigma"] = get("prf_radius")  # pRF size (degrees)
    if "prf_cod" in channels:
        maps["prf_cod"] = get("prf_variance_explained")  # coefficient of determination, 0..1
    area = read_codes(path["visual_area"], sid, n, LABELS["area"], "visual_area") if labels else None
    return Hemisphere(sphere, faces, {c: maps[c] for c in CHANNELS if c in maps}, area, ecc)


def read_subject(
    subjects_dir: Path, sid: str, files: dict[str, str] | None = None, channels: tuple[str, ...] | None = None,
    labels: bool = True,
) -> dict[str, Hemisphere]:
    """Both hemispheres of ``SUBJECTS_DIR/<sid>/surf/``, ``files`` overriding the default file names.

    The one reader of a FreeSurfer subject: the importer and ``autolabel.predict`` both call it.
    """
    surf = Path(subjects_dir) / sid / "surf"
    files = FILES | (files or {})
    return {hemi: read_hemisphere(surf, sid, hemi, files, channels, labels) for hemi in HEMIS}


def subject_image(hemis: dict[str, Hemisphere], rows: int, cols: int, channels: tuple[str, ...]):
    """Bilateral image LH | RH: features [len(channels), rows, cols], {area, ring} one-hot labels
    (None when the hemispheres were read without labels) and each hemisphere's :class:`Layout`."""
    half = cols // 2
    parts = {
        hemi: flatten_hemisphere(
            h.sphere, h.faces, hemi, rows, half, {c: h.maps[c] for c in channels}, h.area, h.eccentricity, RING_EDGES
        )
        for hemi, h in hemis.items()
    }
    feats = np.concatenate([np.stack([p[0][c] for c in channels]) for p in parts.values()], axis=2)
    labels = None
    if all(p[1] is not None for p in parts.values()):
        labels = {k: np.concatenate([p[i] for p in parts.values()], axis=2) for i, k in ((1, "area"), (2, "ring"))}
    return feats, labels, {hemi: p[3] for hemi, p in parts.items()}


# ----------------------------------------------------------------------------- importing


def find_subjects(subjects_dir: Path, ids: list[str] | None) -> list[str]:
    """The ids to import: those asked for (each must be a folder), or every folder with a surf/ inside."""
    if not subjects_dir.is_dir():
        raise BadInput(f"{subjects_dir}: no such folder; give a FreeSurfer SUBJECTS_DIR")
    if ids is None:
        ids = sorted(p.name for p in subjects_dir.iterdir() if (p / "surf").is_dir())
        if not ids:
            raise BadInput(f"{subjects_dir}: no subject folders with a surf/ inside")
    for sid in ids:
        if not SUBJECT_ID.match(sid):
            raise BadInput(f"subject {sid!r}: not a valid id (letters, digits, '_', '.', '-'; it becomes a file name)")
        if not (subjects_dir / sid / "surf").is_dir():
            raise BadInput(f"subject {sid}: {subjects_dir / sid / 'surf'}: unknown subject (no such folder)")
    if len(set(ids)) != len(ids):
        raise BadInput("--subjects: an id is given twice")
    return list(ids)


def import_subjects(
    subjects_dir: Path,
    out: Path,
    ids: list[str] | None = None,
    rows: int = 128,
    cols: int = 256,
    files: dict[str, str] | None = None,
) -> Path:
    """Write the dataset at ``out`` from FreeSurfer subjects; raises BadInput, leaving ``out`` untouched."""
    subjects_dir, out = Path(subjects_dir), Path(out)
    if rows % 32 or cols % 64:
        raise BadInput(f"--rows {rows} --cols {cols}: rows must be a multiple of 32 and cols of 64 (two halves)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInput(f"{out}: exists and is not empty; give a new folder")
    ids = find_subjects(subjects_dir, ids)
    # Pass 1 reads every subject, so a bad file anywhere stops the import before anything is written,
    # and so the channel list (optional ones only if every subject has them) is known up front.
    present: dict[str, set[str]] = {}
    for sid in ids:
        hemis = read_subject(subjects_dir, sid, files)
        present[sid] = set.intersection(*(set(h.maps) for h in hemis.values()))
    channels = tuple(c for c in CHANNELS if all(c in p for p in present.values()))
    missing = {sid: [c for c in CHANNELS if c not in p] for sid, p in present.items()}

    def subjects():
        for sid in ids:
            feats, labels, _ = subject_image(read_subject(subjects_dir, sid, files), rows, cols, channels)
            yield sid, feats, labels

    source = {
        "importer": "autolabel.datasets.flatmaps",
        "subjects_dir": str(subjects_dir.resolve()),
        "projection": "neuropythy occipital_pole (orthographic), autolabel.datasets.cortex framing",
        "missing_channels": {sid: m for sid, m in missing.items() if m},
    }
    publish(out, lambda tmp: write_dataset(tmp, subjects(), channels=channels, labels=LABELS, source=source))
    return out


# ----------------------------------------------------------------------------- the picture


def show_subject(dataset: Path, subject: str | None, png: Path) -> Path:
    """Draw one subject: every channel, then V1-V3 and rings over curvature with their borders."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cohort = open_cohort(Path(dataset))
    sid = subject or cohort.subjects[0]
    if sid not in cohort.subjects:
        raise BadInput(f"subject {sid}: not in {Path(dataset) / 'manifest.json'}; known: {', '.join(cohort.subjects[:5])} ...")
    with np.load(cohort.subject_file(sid)) as z:
        feats = z["features"]
        labels = {k: z[k] for k in cohort.labels}
    panels = list(cohort.channels) + [f"{k} over curvature" for k in labels]
    ncols = 4
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.3 * nrows), squeeze=False)
    curv = feats[cohort.channels.index("curvature")] if "curvature" in cohort.channels else np.zeros(feats.shape[1:])
    for ax, name in zip(axes.flat, panels):
        if name in cohort.channels:
            img = feats[cohort.channels.index(name)]
            lo, hi = np.percentile(img, [1, 99])
            im = ax.imshow(img, cmap="viridis", vmin=lo, vmax=hi, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.03)
        else:
            draw_labels(ax, curv, labels[name.split()[0]])
        ax.set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"{Path(dataset).name} / {sid}: left hemisphere | right hemisphere", fontsize=11)
    fig.tight_layout()
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return png


def draw_labels(ax, curv: np.ndarray, onehot: np.ndarray) -> None:
    """Curvature in grey, each label a translucent colour, and black borders where the label changes."""
    ax.imshow(np.sign(curv), cmap="gray_r", vmin=-3, vmax=3, interpolation="nearest")
    index = np.where(onehot.any(0), onehot.argmax(0) + 1, 0)
    colours = np.array([[0, 0, 0, 0], [0.9, 0.2, 0.2, 0.55], [0.2, 0.7, 0.2, 0.55], [0.2, 0.4, 0.9, 0.55],
                        [0.9, 0.7, 0.1, 0.55], [0.7, 0.2, 0.8, 0.55]])
    ax.imshow(colours[np.minimum(index, len(colours) - 1)], interpolation="nearest")
    border = np.zeros(index.shape, bool)
    border[:, 1:] |= index[:, 1:] != index[:, :-1]
    border[1:, :] |= index[1:, :] != index[:-1, :]
    ax.imshow(np.where(border[..., None], [0, 0, 0, 1], [0, 0, 0, 0]), interpolation="nearest")


# ----------------------------------------------------------------------------- command line


def parse_files(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, template = pair.partition("=")
        if not sep or key not in FILES or not template:
            raise BadInput(f"--file {pair}: use KEY=TEMPLATE with KEY one of {', '.join(FILES)}")
        out[key] = template
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autolabel.datasets.flatmaps", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="FreeSurfer subjects -> dataset folder")
    imp.add_argument("subjects_dir", type=Path)
    imp.add_argument("out", type=Path)
    imp.add_argument("--subjects", nargs="+", metavar="ID", help="default: every folder with a surf/ inside")
    imp.add_argument("--rows", type=int, default=128)
    imp.add_argument("--cols", type=int, default=256)
    imp.add_argument("--file", action="append", default=[], metavar="KEY=TEMPLATE", help="rename an input file")
    shw = sub.add_parser("show", help="draw one subject of a dataset")
    shw.add_argument("dataset", type=Path)
    shw.add_argument("subject", nargs="?")
    shw.add_argument("-o", "--output", type=Path, required=True, metavar="PNG")
    args = ap.parse_args(argv)
    try:
        if args.command == "import":
            out = import_subjects(args.subjects_dir, args.out, args.subjects, args.rows, args.cols, parse_files(args.file))
            print(f"wrote {out}")
        else:
            print(f"wrote {show_subject(args.dataset, args.subject, args.output)}")
    except (BadInput, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # a full disk (this machine's fault), a folder that cannot be written or a file read
        where = args.out if args.command == "import" else args.output
        if no_space(e):
            print(f"error: {where}: {no_space(e)}; nothing was written: free space and rerun", file=sys.stderr)
            return EXIT_NO_SPACE
        writing = e.filename is None or Path(e.filename).resolve().is_relative_to(where.resolve().parent)
        print(f"error: {where if writing else e.filename}: cannot {'write there' if writing else 'read it'} "
              f"({e.strerror or e}); nothing was written" + (": give a writable folder" if writing else ""),
              file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
