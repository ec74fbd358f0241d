"""Trained models for labelling: one ``model.pt`` or several of the same prediction, averaged.

    from autolabel.predict.models import load_ensemble
    ens = load_ensemble(["grid/best/anat-area", "grid/cells/3f2a.../model.pt"], device)
    prob = ens.members[0].probabilities(feats)   # feats [N, C, rows, cols] raw units -> [N, L, rows, cols]

A model is named by its ``model.pt``, the cell folder holding it, or a summary's
``best/<inputs>-<prediction>/`` folder (its ``best.json`` names the cell, which lies in the
grid's ``cells/``). Every member must predict the same labels from the same channels;
image sizes may differ, since probabilities are averaged on the surface
(``autolabel.predict``), where every model's pixels land on the same vertices.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autolabel.celldir import MODEL
from autolabel.checkpoint import load_trained
from autolabel.datasets.format import INPUT_SETS, LABELS, MANIFEST
from autolabel.errors import BadInput
from autolabel.state import scale_features

BEST_JSON = "best.json"  # written by the summary into best/<inputs>-<prediction>/ (flows/summary.py)
KEYS = ("base_model", "inputs", "prediction", "channels", "labels", "feature_mean", "feature_std")


@dataclass
class Member:
    """One trained model, in eval mode on its device, and how its inputs must look."""

    path: Path  # its model.pt
    model: torch.nn.Module
    mean: np.ndarray  # [C] training-set statistics: inputs are (x - mean) / std (autolabel.state.scale_features)
    std: np.ndarray
    device: torch.device
    image_size: tuple[int, int]  # (rows, cols) it trained at

    @torch.no_grad()
    def probabilities(self, feats: np.ndarray) -> np.ndarray:
        """Per-label sigmoid probabilities float32 [N, L, rows, cols] of raw features [N, C, rows, cols].

        Standardised with the training statistics from model.pt; BatchNorm uses its running
        statistics (eval mode), so a subject's labels do not depend on the others in its batch.
        """
        self.model.eval()
        x = scale_features(np.asarray(feats, np.float32), self.mean, self.std)  # the trainer's own scaling
        x = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return torch.sigmoid(self.model(x).float()).cpu().numpy()


@dataclass
class Ensemble:
    """Members that agree on what they predict and from which channels."""

    members: list[Member]
    inputs: str
    prediction: str  # "area" or "ring"
    channels: tuple[str, ...]
    labels: tuple[str, ...]


def resolve_model(path: Path) -> Path:
    """The model.pt a ``--model`` PATH names: the file, a cell folder's, or a best/ folder's cell's."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / MODEL).is_file():
        return path / MODEL
    if (path / BEST_JSON).is_file():
        try:
            cell_id = json.loads((path / BEST_JSON).read_text())["id"]
        except (OSError, ValueError, KeyError, TypeError):
            raise BadInput(f"{path / BEST_JSON}: unreadable or without 'id'; rebuild it with the grid's summary") from None
        cell = path.resolve().parent.parent / "cells" / str(cell_id)  # best/<stratum>/ -> <grid>/cells/<id>/
        if not (cell / MODEL).is_file():
            raise BadInput(
                f"{path}: its cell {cell} has no {MODEL} (an ECS grid keeps it in S3 unless the run downloads models); "
                f"copy it there or give the model.pt itself"
            )
        return cell / MODEL
    raise BadInput(f"{path}: no model here; give a model.pt, a cell folder holding one, or a best/<inputs>-<prediction>/ folder")


def model_image_size(info: dict, path: Path) -> tuple[int, int]:
    """(rows, cols) the model trained at: model.pt's own record, else its options (older files)."""
    if info.get("image_size"):
        return int(info["image_size"][0]), int(info["image_size"][1])
    options = info.get("options") or {}
    if options.get("image_size"):
        return int(options["image_size"][0]), int(options["image_size"][1])
    dataset = options.get("dataset") or {}
    if dataset.get("kind", "synthetic") in ("synthetic", "fsaverage"):
        return int(dataset.get("rows", 128)), int(dataset.get("cols", 256))
    manifest = Path(str(dataset.get("path", ""))).expanduser() / MANIFEST
    if manifest.is_file():
        size = json.loads(manifest.read_text())["image_size"]
        return int(size[0]), int(size[1])
    raise BadInput(f"{path}: does not say its image size and its dataset {manifest} is not here; retrain it, "
                   f"or set image_size in its options")


def load_member(path: Path, device: torch.device) -> tuple[Member, dict]:
    """One model.pt on ``device``; anything else at ``path`` is bad input naming it."""
    model_pt = resolve_model(path)
    try:
        model, info = load_trained(model_pt, device=str(device))
    except Exception as e:  # noqa: BLE001 - torch.load and load_state_dict raise many types for a non-model
        raise BadInput(f"{model_pt}: not a model.pt written by autolabel.train ({type(e).__name__}); "
                       f"give a trained cell's model.pt") from None
    missing = [k for k in KEYS if k not in info]
    if missing or info["inputs"] not in INPUT_SETS or info["prediction"] not in LABELS:
        raise BadInput(f"{model_pt}: not a model.pt written by autolabel.train (fields {missing or ['inputs', 'prediction']})")
    if tuple(info["channels"]) != INPUT_SETS[info["inputs"]] or tuple(info["labels"]) != LABELS[info["prediction"]]:
        raise BadInput(f"{model_pt}: its channels or labels do not match its inputs {info['inputs']!r} and "
                       f"prediction {info['prediction']!r}; retrain it")
    mean = np.asarray(info["feature_mean"], dtype=np.float32)
    std = np.asarray(info["feature_std"], dtype=np.float32)
    return Member(model_pt, model, mean, std, device, model_image_size(info, model_pt)), info


def load_ensemble(paths: list[Path], device: torch.device) -> Ensemble:
    """Every ``--model``, checked to predict the same labels from the same channels."""
    members, infos = zip(*(load_member(Path(p), device) for p in paths))
    seen = [m.path.resolve() for m in members]
    if len(set(seen)) != len(seen):
        raise BadInput(f"--model: {next(p for p in seen if seen.count(p) > 1)} is given twice; name each model once")
    first, head = infos[0], members[0].path
    for member, info in zip(members[1:], infos[1:]):
        if info["prediction"] != first["prediction"]:
            raise BadInput(f"{member.path}: predicts {info['prediction']!r} but {head} predicts "
                           f"{first['prediction']!r}; an ensemble averages models of one prediction")
        if tuple(info["channels"]) != tuple(first["channels"]):
            raise BadInput(f"{member.path}: reads inputs {info['inputs']!r} but {head} reads "
                           f"{first['inputs']!r}; an ensemble averages models of one input set")
    return Ensemble(list(members), first["inputs"], first["prediction"], tuple(first["channels"]), tuple(first["labels"]))
