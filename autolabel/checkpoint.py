"""A cell's two torch files: ``checkpoint.pt`` (the exact resume point) and ``model.pt`` (the result).

A checkpoint carries the options and plan that made it (a rerun with others refuses it),
the whole :class:`autolabel.state.Progress`, the weights, the optimizer and scheduler of a
round in progress, and the RNG state. ``model.pt`` carries the best weights and what
:func:`load_trained` needs to rebuild the model:

    from autolabel.checkpoint import load_trained
    model, info = load_trained("cell/model.pt")   # inputs: (x - info["feature_mean"]) / info["feature_std"]
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

import torch

from autolabel.celldir import (
    CHECKPOINT,
    HISTORY,
    MODEL,
    OPTIONS,
    PLAN,
    CellDir,
    load_cell,
    read_history,
    read_metrics,
    write_atomic,
    write_metrics,
)
from autolabel.errors import BadInput
from autolabel.model import build_model
from autolabel.options import CellMetrics, CellOptions, Plan, RepeatResult, RoundResult
from autolabel.state import Data, Progress

CHECKPOINT_FORMAT = 1
# A checkpoint that cannot be resumed: what to do for this cell alone (the flow's --force would
# retrain every cell of the grid).
RESTART = "delete this file to train this cell from scratch (the trainer's --force on this cell does the same)"


def save_checkpoint(
    cell: CellDir, model, optimizer, scheduler, progress: Progress, options: CellOptions, plan: Plan
) -> None:
    """Everything a rerun needs to continue exactly after this epoch."""
    cuda = next(model.parameters()).device.type == "cuda"
    weights = own_storage(model.state_dict())
    saved = dict(vars(progress))
    # Usually a best-so-far state equals the current weights; pointing it at them lets
    # torch.save store those tensors once, which keeps the checkpoint near 3x the model.
    for key in ("round_best", "repeat_best", "best"):
        if saved[key] is not None and same_weights(saved[key]["state"], weights):
            saved[key] = saved[key] | {"state": weights}
    state = {
        "format": CHECKPOINT_FORMAT,
        "options": options.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json"),
        "progress": saved,
        "model": weights,
        # A new round starts with a new optimizer, so only a mid-round checkpoint needs one.
        "optimizer": optimizer.state_dict() if progress.epoch else None,
        "scheduler": scheduler.state_dict() if progress.epoch else None,
        "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if cuda else None},
    }
    write_atomic(cell.work / CHECKPOINT, lambda p: torch.save(state, p))


def own_storage(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights, those that view a larger tensor copied out: a fused pack's cell holds views
    of the pack's stacked weights (autolabel/fused.py), and torch.save writes a view's whole
    storage, which would put every cell of the pack into each checkpoint."""
    return {k: v.clone() if v.untyped_storage().nbytes() > v.numel() * v.element_size() else v
            for k, v in weights.items()}  # fmt: skip


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold equal tensors (``a`` may live on another device)."""
    return a is b or all(torch.equal(a[k], b[k].to(a[k].device)) for k in b)


def load_checkpoint(cell: CellDir, options: CellOptions, plan: Plan) -> dict | None:
    """The checkpoint if there is one for these very options and plan."""
    path = cell.work / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        reason = type(e).__name__
        raise BadInput(f"{cell.name(CHECKPOINT)}: unreadable ({reason}); {RESTART}") from None
    if state.get("format") != CHECKPOINT_FORMAT:
        raise BadInput(f"{cell.name(CHECKPOINT)}: unknown format; {RESTART}")
    if state["options"] != options.model_dump(mode="json") or state["plan"] != plan.model_dump(mode="json"):
        raise BadInput(
            f"{cell.name(CHECKPOINT)}: written for different {OPTIONS}/{PLAN}; {RESTART}"
        )
    return state


def restore(ckpt: dict, model, optimizer, scheduler, device: torch.device, init_lock: threading.Lock) -> None:
    """Load a checkpoint into a model built as for its repeat, and into the optimizer and scheduler
    of its round (None at a round boundary: the next round makes new ones); then the RNG state."""
    model.load_state_dict(ckpt["model"])
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        match_device(optimizer, device)
        scheduler.load_state_dict(ckpt["scheduler"])
    with init_lock:  # the process-wide RNG: not while another cell's thread seeds its model
        torch.set_rng_state(ckpt["rng"]["torch"])
        if ckpt["rng"]["cuda"] is not None and device.type == "cuda":
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])


def match_device(optimizer: torch.optim.Adam, device: torch.device) -> None:
    """After load_state_dict: the lr, flags and step counters as :func:`autolabel.loop.new_optimizer` makes them here.

    A state dict carries its groups' settings, so one saved on another device (or by an
    older version) would otherwise bring a float lr or a CPU step that a graph cannot use.
    """
    cuda = device.type == "cuda"
    for group in optimizer.param_groups:
        lr = float(group["lr"])
        group["lr"] = torch.tensor(lr, device=device) if cuda else lr
        group["fused"] = group["capturable"] = cuda
        group["foreach"] = None
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            if "step" in state:
                state["step"] = state["step"].to(device if cuda else "cpu", torch.float32)
            # Moments laid out like their parameter (channels_last on CUDA): fused Adam requires it,
            # and a state saved on CPU comes back contiguous.
            for key, value in state.items():
                if key != "step" and isinstance(value, torch.Tensor) and value.shape == param.shape:
                    state[key] = torch.empty_like(param).copy_(value)


def save_model(cell: CellDir, progress: Progress, data: Data, options: CellOptions, plan: Plan) -> None:
    """model.pt: the best weights and everything :func:`load_trained` needs to rebuild the model."""
    best = progress.best
    state = {
        "state_dict": {k: v.cpu().contiguous() for k, v in best["state"].items()},
        "base_model": options.base_model,
        "inputs": options.inputs,
        "prediction": options.prediction,
        "channels": list(data.channels),
        "labels": list(data.labels),
        "feature_mean": data.mean,
        "feature_std": data.std,
        "image_size": list(data.x_train.shape[-2:]),  # [rows, cols] it trained at: what predict flattens to
        "options": options.model_dump(mode="json"),
        "plan": plan.model_dump(mode="json"),
        "best": {k: best[k] for k in ("repeat", "round", "epoch", "val_loss", "val_dice_loss", "dice")},
    }
    write_atomic(cell.work / MODEL, lambda p: torch.save(state, p))


def rebuild_metrics(cell: CellDir, options: CellOptions, plan: Plan, problem: str) -> CellMetrics | None:
    """metrics.json again, from model.pt and history.csv, when both say the cell finished (a
    metrics.json cut short or corrupted after the fact must not cost the training again); None
    when they do not (then the cell is trained again). ``problem``: what was wrong with the old one.

    The best result comes from model.pt; every round's and repeat's result from history.csv by
    the trainer's own rules (autolabel/loop.py); what neither file holds (the device, image
    counts) stays unset, and the message says the metrics were rebuilt.
    """
    rows = read_history(cell.work)
    if not (cell.work / MODEL).is_file() or rows is None or len(rows) != options.until * plan.total_epochs:
        return None
    try:
        info = torch.load(cell.work / MODEL, map_location="cpu", weights_only=True)
        best, labels = info["best"], list(info["labels"])
    except Exception:  # noqa: BLE001 - an unreadable model.pt: the cell is trained again
        return None
    rounds, repeats = round_results(rows), []
    for r in sorted({x.repeat for x in rounds}):
        top = min((x for x in rounds if x.repeat == r), key=lambda x: x.val_dice_loss)  # first of equals, as the trainer
        repeats.append(RepeatResult(repeat=r, best_round=top.round, val_dice_loss=top.val_dice_loss))
    dice = dict(zip(labels, best["dice"]))
    return CellMetrics(
        status="complete",
        message=f"rebuilt from {MODEL} and {HISTORY} ({problem})",
        best_val_dice_loss=best["val_dice_loss"], dice=dice, mean_dice=sum(dice.values()) / len(dice),
        rounds=rounds, repeats=repeats, best_repeat=best["repeat"], best_round=best["round"],
        best_epoch=best["epoch"], epochs=len(rows), wall_seconds=round(sum(float(x["seconds"]) for x in rows), 3),
    )


def recover_metrics(cell: CellDir, say: Callable[[str], None]) -> bool:
    """An unreadable metrics.json of a cell whose model.pt and history.csv show it finished is
    rebuilt from them (:func:`rebuild_metrics`) rather than the cell trained again."""
    problem = read_metrics(cell.work)
    if not isinstance(problem, str):
        return False
    try:
        options, plan = load_cell(cell)
    except BadInput:  # training will say so, in its own words
        return False
    metrics = rebuild_metrics(cell, options, plan, problem.split(": ", 1)[-1])
    if metrics is None:
        say(f"{problem}; {MODEL} and {HISTORY} do not show a finished cell: training it again")
        return False
    write_metrics(cell, metrics)
    say(f"{problem}; rebuilt from {MODEL} and {HISTORY}, which show the cell finished: nothing trained again")
    return True


def round_results(rows: list[dict]) -> list[RoundResult]:
    """Each round's result from history.csv rows: its first epoch of lowest validation loss."""
    out: dict[tuple[int, int], RoundResult] = {}
    for x in rows:
        key, loss = (int(x["repeat"]), int(x["round"])), float(x["val_loss"])
        if key not in out or loss < out[key].val_loss:
            out[key] = RoundResult(repeat=key[0], round=key[1], best_epoch=int(x["epoch"]), val_loss=loss,
                                   val_dice_loss=float(x["val_dice"]))
    return [out[k] for k in sorted(out)]


def load_trained(path: str | Path, device: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a trained model from model.pt; returns (model in eval mode, the rest of the file).

    Inputs must be standardised as in training: ``(x - feature_mean) / feature_std`` per channel.
    """
    info = torch.load(path, map_location=device, weights_only=True)
    # Built on the meta device, the model takes the file's tensors as they are: no random
    # initialisation to overwrite (0.14 s for ResNet-18's U-Net on a 2-core CPU, 2026-12-06).
    with torch.device("meta"):
        model = build_model(info["base_model"], len(info["channels"]), len(info["labels"]))
    model.load_state_dict(info.pop("state_dict"), assign=True)
    return model.to(device).eval(), info
