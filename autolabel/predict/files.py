"""The files ``python -m autolabel.predict`` writes for a subject, their names, codes and colours.

    surf/{lh,rh}.<tag>_varea.mgz                int32 MGH, one value per vertex: 0 none, 1 V1, 2 V2, 3 V3
    surf/{lh,rh}.<tag>_vring.mgz                the same for rings: 0 none, 1-5 E0-E4 (0-0.5, 0.5-1, 1-2, 2-4, 4-7 deg)
    surf/{lh,rh}.<tag>_varea_probabilities.mgz  --probabilities: float32, one frame per label (V1 V2 V3 / E0-E4)
    label/{lh,rh}.<tag>_varea.annot             FreeSurfer annotation: 'none', 'V1', ... with the colours below
    label/<tag>_varea.png                       the picture (autolabel.predict.picture)
    label/<tag>_varea_dice.csv                  --truth without --out: this subject's Dice (with --out: DIR/dice.csv)

The codes are the original tool's (neuropythy's ``save`` of the ``visual_autolabel`` labels);
its annotation colour tables for areas and rings were swapped, here each set has its own.
Every file is written atomically (``autolabel.celldir.write_atomic``).
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolabel.celldir import write_atomic, write_text_atomic
from autolabel.datasets.cortex import HEMIS
from autolabel.datasets.format import LABELS

SUFFIX = {"area": "varea", "ring": "vring"}  # the original tool's file names
# RGB per code, 0 first: FreeSurfer's 'unknown' purple-black, then one distinct colour per label
# (an annotation stores a vertex's label as its colour, so two labels must never share one).
COLOURS = {
    "area": ((25, 5, 25), (220, 30, 30), (30, 160, 50), (40, 90, 230)),
    "ring": ((25, 5, 25), (255, 215, 0), (245, 130, 48), (225, 30, 110), (145, 40, 180), (0, 140, 200)),
}
DICE_COLUMNS = ("subject", "hemisphere", "label", "dice", "predicted_vertices", "true_vertices")


@dataclass
class Outputs:
    """Where one subject's files go."""

    labels: dict[str, Path]  # hemi -> surf/<hemi>.<tag>_<suffix>.mgz
    annots: dict[str, Path]  # hemi -> label/<hemi>.<tag>_<suffix>.annot
    probabilities: dict[str, Path] | None  # hemi -> surf/<hemi>.<tag>_<suffix>_probabilities.mgz
    picture: Path
    dice: Path | None  # this subject's own dice file (only without --out)

    def paths(self) -> list[Path]:
        return [*self.labels.values(), *self.annots.values(), *(self.probabilities or {}).values(), self.picture,
                *([self.dice] if self.dice else [])]


def plan_outputs(subject_root: Path, tag: str, prediction: str, probabilities: bool, own_dice: bool) -> Outputs:
    """File names under ``subject_root`` (``--out DIR/<id>`` or the subject's own folder)."""
    name = f"{tag}_{SUFFIX[prediction]}"
    surf, label = subject_root / "surf", subject_root / "label"
    return Outputs(
        labels={h: surf / f"{h}.{name}.mgz" for h in HEMIS},
        annots={h: label / f"{h}.{name}.annot" for h in HEMIS},
        probabilities={h: surf / f"{h}.{name}_probabilities.mgz" for h in HEMIS} if probabilities else None,
        picture=label / f"{name}.png",
        dice=label / f"{name}_dice.csv" if own_dice else None,
    )


def write_mgz(path: Path, values: np.ndarray) -> None:
    """Per-vertex values [N] or [N, frames] as MGZ (FreeSurfer's surface-map layout: N x 1 x 1 x frames)."""
    import nibabel as nib

    data = values.reshape(len(values), 1, 1, -1) if values.ndim == 2 else values.reshape(-1, 1, 1)
    img = nib.MGHImage(data, np.eye(4))
    # nibabel picks the format from the file name, and the atomic writer's temporary name has
    # none: the bytes are made here (MGZ is gzipped MGH).
    payload = gzip.compress(img.to_bytes(), compresslevel=6)
    write_atomic(path, lambda tmp: tmp.write_bytes(payload))


def write_codes(path: Path, codes: np.ndarray) -> None:
    """Label codes as int32 MGZ, one value per vertex (as neuropythy writes the original's)."""
    write_mgz(path, np.asarray(codes, np.int32))


def write_probabilities(path: Path, prob: np.ndarray) -> None:
    """float32 MGZ with one frame per label: [N, L]."""
    write_mgz(path, np.asarray(prob, np.float32))


def label_table(prediction: str) -> tuple[list[str], np.ndarray]:
    """Annotation names ('none', 'V1', ...) and colour table (RGB, transparency 0) for a prediction."""
    names = ["none", *LABELS[prediction]]
    ctab = np.array([[*rgb, 0] for rgb in COLOURS[prediction]], np.int32)
    return names, ctab


def write_annot(path: Path, codes: np.ndarray, prediction: str) -> None:
    """A FreeSurfer annotation of per-vertex codes; Freeview and nibabel read its names and colours."""
    import nibabel as nib

    names, ctab = label_table(prediction)
    write_atomic(path, lambda tmp: nib.freesurfer.write_annot(str(tmp), np.asarray(codes, np.int32), ctab, names))


def write_dice(path: Path, rows: list[dict]) -> None:
    """dice.csv: one row per subject, hemisphere and label."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=DICE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row | {"dice": f"{row['dice']:.6f}"})
    write_text_atomic(path, buffer.getvalue())
