"""The dataset format: channel/label names, the on-disk flatmap layout, its manifest, partitions.

A dataset is a folder (or an ``s3://`` prefix holding the same files)::

    manifest.json            format, channel names, label sets, subject ids, image size, dtype
    subjects/<id>.npz        uncompressed: features float32 [C, H, W], one uint8 [L, H, W] per label set

``manifest.json`` is written last, so its presence means the folder is complete.

    from autolabel.datasets.cohort import open_cohort         # reading its arrays: autolabel/datasets/cohort.py
    from autolabel.datasets.format import split_subjects
    cohort = open_cohort("/data/flatmaps")          # a folder; autolabel.datasets.sources opens what a cell names
    train, val = split_subjects(cohort.subjects, 0.2)
    x, y = cohort.arrays(train, inputs="full", prediction="area")   # [N,14,H,W] raw units, [N,3,H,W]
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from autolabel.celldir import write_json_atomic
from autolabel.options import (
    SUBJECT_ID,
    ExplicitPartition,
    partition_problem,
    split_counts,
)

# Channel order of the published method (Benson, Song et al. 2025): T1, T2, diffusion, functional.
T1 = ("x", "y", "z", "curvature", "convexity", "thickness", "surface_area")
T2 = ("myelin",)
DW = ("dwi_OR", "dwi_VOF")
FN = ("prf_x", "prf_y", "prf_sigma", "prf_cod")
CHANNELS: tuple[str, ...] = T1 + T2 + DW + FN

INPUT_SETS: dict[str, tuple[str, ...]] = {
    "anat": T1,
    "t1t2": T1 + T2,
    "func": T1 + FN,
    "trac": T1 + DW,
    "not2": T1 + FN + DW,
    "nofn": T1 + T2 + DW,
    "nodw": T1 + T2 + FN,
    "full": CHANNELS,
}

# Eccentricity rings E0-E4 cover 0-0.5, 0.5-1, 1-2, 2-4 and 4-7 degrees, within V1-V3 only.
LABELS: dict[str, tuple[str, ...]] = {
    "area": ("V1", "V2", "V3"),
    "ring": ("E0", "E1", "E2", "E3", "E4"),
}
RING_EDGES = (0.0, 0.5, 1.0, 2.0, 4.0, 7.0)  # degrees: the edges of E0..E4, as in the published labels
MAX_LABEL_ECC = RING_EDGES[-1]  # areas are labelled out to 7 degrees, as the published hand labels

FORMAT = "autolabel-flatmaps"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SUBJECTS_DIR = "subjects"


class DatasetError(ValueError):
    """A dataset that cannot be used; the one-line message names the file or field and the fix.

    ``field`` names the cell option at fault (partition, inputs, dataset) when the problem is the
    cell's choice rather than the dataset's files: the trainer then puts options.json in front.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# ----------------------------------------------------------------------------- writing


def write_dataset(
    root: Path,
    subjects: Mapping[str, tuple[np.ndarray, dict[str, np.ndarray]]] | Iterable[tuple[str, np.ndarray, dict]],
    channels: tuple[str, ...] = CHANNELS,
    labels: Mapping[str, tuple[str, ...]] = LABELS,
    source: dict | None = None,
) -> Path:
    """Write a dataset folder: one ``subjects/<id>.npz`` each, then ``manifest.json`` (with channel stats) last.

    ``subjects`` maps id -> (features [C,H,W], {label set: [L,H,W] 0/1}), or yields
    (id, features, labels) triples so a generator never holds the cohort in memory.
    """
    root = Path(root)
    channels = tuple(channels)
    labels = {k: tuple(v) for k, v in labels.items()}
    check_names(channels, labels, root / MANIFEST)
    items = ((s, *v) for s, v in subjects.items()) if isinstance(subjects, Mapping) else subjects
    (root / SUBJECTS_DIR).mkdir(parents=True, exist_ok=True)
    ids: list[str] = []
    size: tuple[int, int] | None = None
    total = np.zeros((2, len(channels)), np.float64)  # per-channel sum and sum of squares
    for sid, feats, labs in items:
        feats = np.ascontiguousarray(feats, dtype=np.float32)
        if size is None and feats.ndim == 3:
            size = (feats.shape[1], feats.shape[2])  # the first subject fixes the image size
        check_subject_arrays(sid, feats, labs, channels, labels, size)
        if sid in ids:
            raise DatasetError(f"subject {sid}: given twice; subject ids must be unique")
        arrays = {"features": feats} | {k: np.asarray(labs[k], dtype=np.uint8) for k in labels}
        np.savez(root / SUBJECTS_DIR / f"{sid}.npz", **arrays)
        total[0] += feats.sum(axis=(1, 2), dtype=np.float64)
        total[1] += np.square(feats, dtype=np.float64).sum(axis=(1, 2))
        ids.append(sid)
    if not ids or size is None:
        raise DatasetError(f"{root}: no subjects to write; pass at least one")
    n = len(ids) * size[0] * size[1]
    mean = total[0] / n
    std = np.sqrt(np.maximum(total[1] / n - mean**2, 0.0))
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "channels": list(channels),
        "labels": {k: list(v) for k, v in labels.items()},
        "subjects": ids,
        "image_size": list(size),
        "dtype": "float32",
        "channel_stats": {"mean": mean.tolist(), "std": std.tolist()},
        "source": source or {},
    }
    write_json_atomic(root / MANIFEST, manifest)
    return root


def check_names(channels: tuple[str, ...], labels: Mapping[str, tuple[str, ...]], where: Path) -> None:
    """Channel names must be known and unique; label sets must match ``LABELS`` exactly."""
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise DatasetError(f"{where}: unknown channel name(s) {unknown} in 'channels'; known: {', '.join(CHANNELS)}")
    if len(set(channels)) != len(channels) or not channels:
        raise DatasetError(f"{where}: 'channels' must be a non-empty list without repeats")
    if not labels:
        raise DatasetError(f"{where}: 'labels' is empty; give at least one of {sorted(LABELS)}")
    for name, names in labels.items():
        if name not in LABELS:
            raise DatasetError(f"{where}: unknown label set {name!r} in 'labels'; known: {sorted(LABELS)}")
        if tuple(names) != LABELS[name]:
            want = list(LABELS[name])
            raise DatasetError(f"{where}: labels.{name} is {list(names)}; it must be {want}, in that order")


def check_subject_arrays(sid, feats, labs, channels, labels, size) -> None:
    """Shapes, dtypes and id of one subject before it is written."""
    if not isinstance(sid, str) or not SUBJECT_ID.match(sid):
        raise DatasetError(f"subject id {sid!r}: use 1-64 letters, digits, '_', '.', '-' (it becomes a file name)")
    want = (len(channels), *size) if size else None
    if feats.ndim != 3 or feats.shape != want:
        raise DatasetError(f"subject {sid}: features shape {feats.shape}, expected {want} (channels, rows, cols)")
    for name, names in labels.items():
        lab = np.asarray(labs.get(name)) if name in labs else None
        if lab is None or lab.shape != (len(names), *size):
            got = None if lab is None else lab.shape
            raise DatasetError(f"subject {sid}: label set {name!r} shape {got}, expected {(len(names), *size)}")
        if not np.isin(lab, (0, 1)).all():
            raise DatasetError(f"subject {sid}: label set {name!r} must hold only 0 and 1")


# ----------------------------------------------------------------------------- reading


def read_manifest(root: Path) -> dict:
    """Parse and validate ``manifest.json``; every failure names the file and field."""
    path = root / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{path}: not found; a dataset folder needs manifest.json (see README 'Dataset format')")
    try:
        m = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not valid JSON ({e}); rewrite it with autolabel.datasets.format.write_dataset") from None
    if not isinstance(m, dict):
        raise DatasetError(f"{path}: must be a JSON object")
    if m.get("format") != FORMAT or m.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: 'format'/'format_version' are {m.get('format')!r}/{m.get('format_version')!r}; "
            f"this reader needs {FORMAT!r}/{FORMAT_VERSION}"
        )
    for key, kind in (("channels", list), ("labels", dict), ("subjects", list), ("image_size", list)):
        if not isinstance(m.get(key), kind):
            raise DatasetError(f"{path}: field {key!r} missing or not a {kind.__name__}")
    # Field by field, so that a wrong type is a sentence naming the field, never a TypeError later.
    if not all(isinstance(c, str) for c in m["channels"]):
        raise DatasetError(f"{path}: 'channels' must be a list of channel names (strings)")
    for name, names in m["labels"].items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{path}: labels.{name} must be a list of label names (strings), got {names!r}")
    check_names(tuple(m["channels"]), {k: tuple(v) for k, v in m["labels"].items()}, path)
    size = m["image_size"]
    if len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size):
        raise DatasetError(f"{path}: 'image_size' must be [rows, cols] of positive integers, got {size}")
    if m.get("dtype", "float32") != "float32":
        raise DatasetError(f"{path}: 'dtype' is {m.get('dtype')!r}; features must be stored as float32")
    bad = [s for s in m["subjects"] if not isinstance(s, str) or not SUBJECT_ID.match(s)]
    if bad or not m["subjects"] or len(set(m["subjects"])) != len(m["subjects"]):
        raise DatasetError(f"{path}: 'subjects' must be unique ids of letters, digits, '_', '.', '-' (bad: {bad[:3]})")
    return m


def check_stats(m: dict, where: Path) -> None:
    """The manifest's optional whole-cohort ``channel_stats`` (for other readers of the format) must be well formed."""
    stats = m.get("channel_stats")
    if stats is None:
        return
    n = len(m["channels"])
    try:
        mean = np.asarray(stats["mean"], np.float32)
        std = np.asarray(stats["std"], np.float32)
    except (KeyError, TypeError, ValueError):
        raise DatasetError(f"{where}: 'channel_stats' must be {{'mean': [...], 'std': [...]}}; or delete it") from None
    if mean.shape != (n,) or std.shape != (n,):
        raise DatasetError(f"{where}: 'channel_stats' mean/std need {n} values (one per channel); or delete it")


# ----------------------------------------------------------------------------- partition


def split_subjects(subjects: list[str], partition: float | ExplicitPartition) -> tuple[list[str], list[str]]:
    """(train, validation) ids: a validation fraction chosen by id hash, or an explicit partition.

    The fraction split depends only on the ids, never on a seed, so every cell of a
    grid sees the same validation subjects.
    """
    if isinstance(partition, ExplicitPartition):
        problem = partition_problem(partition, subjects)
        if problem:
            raise DatasetError(problem, field="partition")
        return list(partition.train), list(partition.validation)
    frac = float(partition)
    if not 0 < frac < 1:
        raise DatasetError(f"partition: validation fraction {frac} must be between 0 and 1", field="partition")
    if len(subjects) < 2:
        raise DatasetError(f"partition: {len(subjects)} subject(s) cannot be split; a dataset needs at least 2",
                           field="partition")
    _, n_val = split_counts(frac, len(subjects))
    by_hash = sorted(subjects, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    val = set(by_hash[:n_val])
    return [s for s in subjects if s not in val], [s for s in subjects if s in val]


def publish(target: Path, build) -> None:
    """Build into a temp folder beside ``target`` and rename it into place (atomic on one filesystem).

    When two processes race, one rename wins; the loser drops its copy and uses the winner's.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        build(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise DatasetError(f"{target}: exists but has no {MANIFEST}; delete the folder and retry") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def subject_ids(n: int) -> list[str]:
    """The ids a generated cohort (synthetic, fsaverage) gives its ``n`` subjects: sub000, sub001, ..."""
    return [f"sub{i:0{max(3, len(str(n - 1)))}d}" for i in range(n)]


def missing_channels(dataset, inputs: str) -> list[tuple[str, str]]:
    """(subject, channel) pairs that ``inputs`` needs and a dataset lacks; reads only its manifest.

    ``dataset`` is a cell's dataset spec or a folder. Generated cohorts (synthetic,
    fsaverage) hold all 14 channels; an ``s3://`` prefix is not read here (the trainer
    checks it once downloaded), so both give []. The importer keeps a channel only
    when every subject has it and records, per subject, which it lacked
    (``source.missing_channels``); a channel absent without a record is reported for
    every subject. For the dry run, to refuse a grid before it launches.
    """
    root = getattr(dataset, "path", dataset)
    if getattr(dataset, "kind", "path") != "path" or str(root).startswith("s3://"):
        return []
    m = read_manifest(Path(root).expanduser())
    lacking = [c for c in INPUT_SETS[inputs] if c not in m["channels"]]
    recorded = (m.get("source") or {}).get("missing_channels") or {}
    pairs = []
    for c in lacking:
        who = [s for s in m["subjects"] if c in recorded.get(s, [])] or list(m["subjects"])
        pairs += [(s, c) for s in who]
    return pairs
