"""Label a lab's FreeSurfer subjects with trained models: V1-V3 or eccentricity rings on their own surfaces.

    python -m autolabel.predict SUBJECTS_DIR --model PATH [--model PATH ...] [--subjects ID ...] [--out DIR]
                                [--tag TAG] [--truth TEMPLATE] [--probabilities] [--force]
                                [--file KEY=TEMPLATE ...] [--device auto|cpu|cuda|mps]

Try it on fsaverage5 (the Benson 2014 atlas as its "rater"), with a winner of a grid:

    python -m autolabel.datasets.fsaverage --write-subject /tmp/subjects
    python -m autolabel.predict /tmp/subjects --model grid-search/demo/best/full-area --out /tmp/labels \\
        --truth '{hemi}.visual_area.mgz'

``PATH`` is a ``model.pt``, a cell folder or a summary's ``best/<inputs>-<prediction>/``; several
``--model``s of one prediction and input set are an ensemble, their probabilities averaged per
vertex before the labels are chosen. Each subject is read as the importer reads it
(``autolabel.datasets.flatmaps.read_subject``: the same files, ``--file`` overrides, projection, framing
and rasteriser), only the channels the models' input set needs, flattened at each model's own
image size and standardised with the training statistics in its ``model.pt``. The models run in
eval mode without gradients, a batch of subjects at a time, on the CPU unless ``--device`` says
otherwise. Each vertex then reads its labels where it lands in the image (the rule:
``autolabel.predict.vertices``). Outputs per subject (names: ``autolabel.predict.files``) go to
``DIR/<id>/`` with ``--out``, else into the subject's own ``surf/`` and ``label/``; an existing
file is refused without ``--force``. ``--truth`` scores each hemisphere with Dice on vertices
(``dice.csv``) and prints the mean per label.

Everything is read and checked before anything is written: a bad model, subject or file is one
line naming it and exit 2, and leaves no file behind. Exit codes: 0 done, 1 unexpected error
(traceback), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from autolabel.datasets.cortex import HEMIS, sample_labels
from autolabel.datasets.flatmaps import (
    FILES,
    Hemisphere,
    MissingFile,
    find_subjects,
    parse_files,
    read_codes,
    read_subject,
    read_surface,
    subject_image,
)
from autolabel.datasets.format import T1, DatasetError
from autolabel.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput
from autolabel.predict.files import (
    Outputs,
    plan_outputs,
    write_annot,
    write_codes,
    write_dice,
    write_probabilities,
)
from autolabel.predict.models import Ensemble, load_ensemble
from autolabel.predict.picture import SurfaceView, check_matplotlib, draw_subject
from autolabel.predict.vertices import choose_labels, surface_dice, vertex_probabilities
from autolabel.validation import error_lines

TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DICE_CSV = "dice.csv"


class Request(BaseModel):
    """What to label, with what, and where the files go (the command line's flags)."""

    model_config = ConfigDict(extra="forbid")

    subjects_dir: Path = Field(description="a FreeSurfer SUBJECTS_DIR: <id>/surf/ per subject")
    models: list[Path] = Field(min_length=1, description="model.pt files, cell folders or best/ folders")
    subjects: list[str] | None = Field(None, description="ids to label; default every folder with a surf/")
    out: Path | None = Field(None, description="write DIR/<id>/...; default the subjects' own surf/ and label/")
    tag: str = Field("autolabel", description="file names: <hemi>.<tag>_varea.mgz, ...")
    truth: str | None = Field(None, description="per-vertex true labels under surf/, {hemi} expanded")
    probabilities: bool = Field(False, description="also write each label's probability per vertex")
    force: bool = Field(False, description="overwrite existing output files")
    files: dict[str, str] = Field(default_factory=dict, description="--file KEY=TEMPLATE overrides")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("cpu", description="auto picks cuda, then mps, then cpu")
    batch_size: int = Field(8, ge=1, description="subjects through the models at once")

    @field_validator("tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not TAG.match(v):
            raise ValueError("use 1-64 letters, digits, '_', '.', '-' (it becomes part of file names)")
        return v

    @field_validator("truth")
    @classmethod
    def _truth(cls, v: str | None) -> str | None:
        if v is not None and (v.count("{hemi}") != 1 or "/" in v or v.replace("{hemi}", "").count("{")):
            raise ValueError("a file name under surf/ with {hemi} once, e.g. '{hemi}.visual_area.mgz'")
        return v


@dataclass
class Job:
    """One subject to label and where its files go."""

    sid: str
    outputs: Outputs


# ----------------------------------------------------------------------------- reading


def read_for_models(req: Request, ens: Ensemble, sid: str) -> dict[str, Hemisphere]:
    """The subject's hemispheres with exactly the channels the models need (the importer's reader)."""
    try:
        return read_subject(req.subjects_dir, sid, req.files, ens.channels, labels=False)
    except MissingFile as e:
        if not e.channels or set(e.channels) <= set(T1):
            raise
        raise BadInput(
            f"subject {sid}: {e.path}: missing, and the models' inputs {ens.inputs!r} need channel(s) "
            f"{', '.join(e.channels)} from it; provide it, point --file {e.key}=TEMPLATE at it, or use a model "
            f"whose inputs need no such map (an 'anat' model needs none: only the surfaces and morphometry)"
        ) from None


def read_truth(req: Request, ens: Ensemble, sid: str, hemis: dict[str, Hemisphere]) -> dict[str, np.ndarray] | None:
    """``--truth``: per-vertex codes of the models' prediction, one per vertex of each hemisphere."""
    if req.truth is None:
        return None
    surf = req.subjects_dir / sid / "surf"
    return {h: read_codes(surf / req.truth.format(hemi=h), sid, len(hemis[h].sphere), ens.labels) for h in HEMIS}


def picture_mesh(req: Request, sid: str, hemi: str, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """The surface the picture draws: ``inflated`` when the subject has it, else ``white``."""
    surf = req.subjects_dir / sid / "surf"
    files = FILES | req.files
    key = "inflated" if (surf / files["inflated"].format(hemi=hemi)).is_file() else "white"
    coords, faces = read_surface(surf / files[key].format(hemi=hemi), sid, key)
    if len(coords) != n_vertices:
        raise BadInput(f"subject {sid}: {surf / files[key].format(hemi=hemi)}: {len(coords)} vertices but the "
                       f"white surface has {n_vertices}; point --file {key}=TEMPLATE at this subject's own")
    return coords, faces


def check_subject(req: Request, ens: Ensemble, sid: str) -> Job:
    """Read and check everything of one subject; plan its files, refusing existing ones without --force."""
    hemis = read_for_models(req, ens, sid)
    read_truth(req, ens, sid, hemis)
    for hemi, h in hemis.items():
        picture_mesh(req, sid, hemi, len(h.sphere))
    root = req.out / sid if req.out else req.subjects_dir / sid
    outputs = plan_outputs(root, req.tag, ens.prediction, req.probabilities, own_dice=req.truth is not None and not req.out)
    refuse_existing(sid, outputs.paths(), req.force)
    return Job(sid, outputs)


def refuse_existing(sid: str, paths: list[Path], force: bool) -> None:
    """An existing output without --force, or a folder that cannot be written, is bad input."""
    for path in paths:
        if path.exists() and not force:
            raise BadInput(f"subject {sid}: {path}: exists; give --force to overwrite it, or another --tag or --out")
        folder = next(p for p in path.parents if p.exists())  # the nearest that exists: created below it
        if not os.access(folder, os.W_OK | os.X_OK):
            raise BadInput(f"subject {sid}: {folder}: not writable, so {path.name} cannot be written; give --out")


# ----------------------------------------------------------------------------- labelling


@dataclass
class Labelled:
    """One subject's result: per hemisphere, codes and probabilities per vertex, and what the picture needs."""

    sid: str
    codes: dict[str, np.ndarray]  # int32 [N]
    prob: dict[str, np.ndarray]  # float32 [N, L], averaged over the models
    truth: dict[str, np.ndarray] | None
    hemis: dict[str, Hemisphere]
    image: tuple[np.ndarray, dict]  # first model's (features [C, rows, cols], layouts): the picture's flatmap


def label_batch(req: Request, ens: Ensemble, sids: list[str]) -> list[Labelled]:
    """Flatten a batch of subjects at each model's size, run every model, average per vertex, choose labels."""
    hemis = {sid: read_for_models(req, ens, sid) for sid in sids}
    images: dict[tuple[int, int], list] = {}
    for size in dict.fromkeys(m.image_size for m in ens.members):
        images[size] = [subject_image(hemis[sid], size[0], size[1], ens.channels) for sid in sids]
    total = [{h: 0.0 for h in HEMIS} for _ in sids]
    for member in ens.members:
        batch = images[member.image_size]
        prob = member.probabilities(np.stack([feats for feats, _, _ in batch]))
        for i, (_, _, layouts) in enumerate(batch):
            for hemi, p in vertex_probabilities(prob[i], layouts).items():
                total[i][hemi] = total[i][hemi] + p
    out = []
    first = images[ens.members[0].image_size]
    for i, sid in enumerate(sids):
        prob = {h: (total[i][h] / len(ens.members)).astype(np.float32) for h in HEMIS}
        codes = {h: choose_labels(p, axis=1) for h, p in prob.items()}
        truth = read_truth(req, ens, sid, hemis[sid])
        out.append(Labelled(sid, codes, prob, truth, hemis[sid], (first[i][0], first[i][2])))
    return out


def dice_rows(result: Labelled, labels: tuple[str, ...]) -> list[dict]:
    rows = []
    for hemi in HEMIS:
        pred, truth = result.codes[hemi], result.truth[hemi]
        for k, (name, dice) in enumerate(zip(labels, surface_dice(pred, truth, len(labels))), 1):
            rows.append({"subject": result.sid, "hemisphere": hemi, "label": name, "dice": dice,
                         "predicted_vertices": int((pred == k).sum()), "true_vertices": int((truth == k).sum())})
    return rows


def codes_image(result: Labelled, codes: dict[str, np.ndarray], n_labels: int) -> np.ndarray:
    """Per-vertex codes rasterised as the importer rasterises labels: [rows, cols] codes, LH | RH."""
    _, layouts = result.image
    halves = []
    for hemi in HEMIS:
        onehot = sample_labels(layouts[hemi].raster, result.hemis[hemi].faces, codes[hemi], n_labels)
        halves.append(np.where(onehot.any(0), onehot.argmax(0) + 1, 0))
    return np.concatenate(halves, axis=1)


def surface_views(req: Request, result: Labelled) -> dict[str, SurfaceView]:
    """Each hemisphere's mesh for the picture, shaded by curvature (every input set reads it), with its codes."""
    views = {}
    for hemi in HEMIS:
        coords, faces = picture_mesh(req, result.sid, hemi, len(result.codes[hemi]))
        views[hemi] = SurfaceView(coords, faces, result.hemis[hemi].maps["curvature"], result.codes[hemi])
    return views


def write_subject(req: Request, ens: Ensemble, job: Job, result: Labelled, rows: list[dict]) -> None:
    """Every file of one subject, each atomically."""
    o = job.outputs
    for hemi in HEMIS:
        write_codes(o.labels[hemi], result.codes[hemi])
        write_annot(o.annots[hemi], result.codes[hemi], ens.prediction)
        if o.probabilities:
            write_probabilities(o.probabilities[hemi], result.prob[hemi])
    feats, _ = result.image
    truth = codes_image(result, result.truth, len(ens.labels)) if result.truth else None
    models = ", ".join(m.path.parent.name for m in ens.members)  # each model.pt's cell folder
    if len(ens.members) > 1:
        models = f"an ensemble of {models}" if len(models) < 90 else f"an ensemble of {len(ens.members)} models"
    title = f"{result.sid}: {ens.inputs}-{ens.prediction} by {models}"
    if rows:
        title += "\nsurface Dice " + " | ".join(
            f"{h} " + " ".join(f"{r['label']} {r['dice']:.3f}" for r in rows if r["hemisphere"] == h) for h in HEMIS)
    draw_subject(o.picture, title, ens.prediction,
                 feats[ens.channels.index("curvature")], codes_image(result, result.codes, len(ens.labels)), truth,
                 surface_views(req, result))
    if o.dice:
        write_dice(o.dice, rows)


def predict(req: Request) -> list[dict]:
    """Label every subject; returns the Dice rows (empty without --truth). Raises BadInput before writing anything."""
    from autolabel.state import configure_device, pick_device

    device = pick_device(req.device, "--device")
    configure_device(device)
    ens = load_ensemble(req.models, device)
    ids = find_subjects(req.subjects_dir, req.subjects)
    # 1. Check everything (models above, every subject's files, every output name) before writing anything.
    jobs = [check_subject(req, ens, sid) for sid in ids]
    if req.out and req.truth and (req.out / DICE_CSV).exists() and not req.force:
        raise BadInput(f"{req.out / DICE_CSV}: exists; give --force to overwrite it, or another --out")
    check_matplotlib()
    # 2. Label a batch of subjects at a time, writing each subject's files as it is done.
    rows: list[dict] = []
    for start in range(0, len(jobs), req.batch_size):
        batch = jobs[start : start + req.batch_size]
        for job, result in zip(batch, label_batch(req, ens, [j.sid for j in batch])):
            subject_rows = dice_rows(result, ens.labels) if result.truth else []
            write_subject(req, ens, job, result, subject_rows)
            rows += subject_rows
            counts = ", ".join(f"{h} " + " ".join(f"{n} {int((result.codes[h] == k).sum())}"
                                                  for k, n in enumerate(ens.labels, 1)) for h in HEMIS)
            print(f"{job.sid}: {counts} vertices -> {job.outputs.labels['lh'].parent}", flush=True)
    if req.out and req.truth:
        write_dice(req.out / DICE_CSV, rows)
    return rows


def mean_dice(rows: list[dict], labels: tuple[str, ...]) -> dict[str, float]:
    """Mean surface Dice per label over every subject and hemisphere."""
    return {name: float(np.mean([r["dice"] for r in rows if r["label"] == name])) for name in labels}


# ----------------------------------------------------------------------------- command line


def parse_request(argv: list[str] | None) -> Request:
    ap = argparse.ArgumentParser(prog="python -m autolabel.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("subjects_dir", type=Path, metavar="SUBJECTS_DIR")
    ap.add_argument("--model", action="append", required=True, type=Path, metavar="PATH",
                    help="model.pt, cell folder or best/<inputs>-<prediction>/; repeat for an ensemble")
    ap.add_argument("--subjects", nargs="+", metavar="ID", help="default: every folder with a surf/ inside")
    ap.add_argument("--out", type=Path, metavar="DIR", help="default: the subjects' own surf/ and label/")
    ap.add_argument("--tag", default="autolabel", help="file names <hemi>.<tag>_varea.mgz, ... (default autolabel)")
    ap.add_argument("--truth", metavar="TEMPLATE", help="true labels under surf/, e.g. '{hemi}.visual_area.mgz'")
    ap.add_argument("--probabilities", action="store_true", help="also write each label's probability per vertex")
    ap.add_argument("--force", action="store_true", help="overwrite existing output files")
    ap.add_argument("--file", action="append", default=[], metavar="KEY=TEMPLATE", help="rename an input file")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                    help="auto: cuda, then mps, then cpu (default cpu)")
    ap.add_argument("--batch-size", type=int, default=8, metavar="N", help="subjects through the models at once")
    args = ap.parse_args(argv)
    raw = {"subjects_dir": args.subjects_dir, "models": args.model, "subjects": args.subjects, "out": args.out,
           "tag": args.tag, "truth": args.truth, "probabilities": args.probabilities, "force": args.force,
           "files": parse_files(args.file), "device": args.device, "batch_size": args.batch_size}
    try:
        return Request.model_validate(raw)
    except ValidationError as e:
        field, msg = error_lines(e, raw)[0]
        raise BadInput(f"--{field.split('.')[0].replace('_', '-')}: {msg}") from None


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        req = parse_request(argv)
        rows = predict(req)
    except (BadInput, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if rows:
        labels = tuple(dict.fromkeys(r["label"] for r in rows))
        means = ", ".join(f"{k} {v:.3f}" for k, v in mean_dice(rows, labels).items())
        print(f"mean surface Dice over {len(rows) // len(labels)} hemispheres: {means}")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
