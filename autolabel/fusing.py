"""``--fused``: the trainer's cells formed into fused packs (autolabel/fused.py) and trained, each pack as one model.

    python -m autolabel.train CELL_A CELL_B CELL_C ... --fused

Cells fuse when :func:`fusion_key` says they have one shape: the same device, base model, data
(dataset, partition, inputs, prediction, image size: so the same input channels, labels and
images, held once on the device), batch size and epochs in every round, and number of repeats.
lr, gamma, BCE weight, seed and pretrained may differ. Among the cells of one shape, those that
stand at the same point (repeat, round, epoch; fresh cells all do) train as one pack; a cell that
fuses with no other trains as today. Cells that are complete, unreadable or alone in their shape
go to the trainer's usual path (autolabel.train), which skips, reports or trains them as always.

The packs train one after another in this process. For each cell of a pack: its folder's lock, its
inputs and checkpoint (autolabel.cell.start_run: bad input fails that cell alone, exit 2), then
the pack's epochs (:func:`train_together`), then each cell's model.pt and metrics.json. Exit codes
are a solo cell's: a diverged cell 3 (its pack-mates go on), a stop (SIGTERM, Ctrl-C, SIGHUP)
checkpoints every cell of the pack after the epoch in progress (143, 130, 129), and an error in
the pack's step (a CUDA fault, out of memory) ends its cells with 1 (a rerun resumes them).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from contextlib import ExitStack
from typing import Callable

from autolabel import storage
from autolabel.cell import (
    CellRun,
    checkpoint_due,
    checkpoint_if_due,
    close_epoch,
    finish_cell,
    lock_cell,
    needs_training,
    outcome,
    start_run,
    stop_if_asked,
    train_run,
    unexpected,
)
from autolabel.celldir import is_complete, load_cell, open_cell
from autolabel.control import RunControl
from autolabel.errors import EXIT_BAD_INPUT, EXIT_OK, BadInput
from autolabel.fused import (
    FusedPack,
    build_pack,
    clear_optimizer,
    export_optimizer,
    run_pack_epoch,
)
from autolabel.options import CellOptions, Plan
from autolabel.state import pick_device


def fusion_key(options: CellOptions, plan: Plan, device: str) -> str:
    """What cells must share to train as one vmapped model (see the module's docstring)."""
    data = options.model_dump(mode="json", include={"dataset", "partition", "inputs", "prediction", "image_size"})
    rounds = [(r.num_epochs, r.batch_size or options.batch_size) for r in plan.root]
    return json.dumps([device, options.base_model, options.until, rounds, data], sort_keys=True)


def peek_key(uri: str, force: bool, device: str | None) -> str | None:
    """A cell's fusion key from its options.json and plan.json; None for a cell the usual path
    should take (complete, unreadable, bad input: it reports them as always)."""
    try:
        with open_cell(uri, force=True) as cell:  # force: options and plan only, not the checkpoint
            if is_complete(cell.work) and not force:
                return None
            options, plan = load_cell(cell)
            return fusion_key(options, plan, str(pick_device(device or options.device, uri)))
    except (BadInput, storage.StorageError, OSError):
        return None


def form_packs(uris: list[str], force: bool, device: str | None) -> tuple[list[list[str]], list[str]]:
    """(groups of two or more cells of one shape, the cells left for the usual path), in the given order."""
    groups: dict[str, list[str]] = defaultdict(list)
    rest = []
    for uri in dict.fromkeys(uris):  # a cell named twice trains once
        key = peek_key(uri, force, device)
        if key is None:
            rest.append(uri)
        else:
            groups[key].append(uri)
    packs = [g for g in groups.values() if len(g) > 1]
    rest += [g[0] for g in groups.values() if len(g) == 1]
    return packs, rest


def train_packs(packs: list[list[str]], control: RunControl, force: bool, device: str | None,
                say_for: Callable[[str], Callable[[str], None]]) -> list[int]:  # fmt: skip
    """Train each group of cells (fused where they stand at one point); every cell's exit code.

    ``say_for(uri)`` is where a cell's progress lines go. Cells of one shape share their data
    on the device (RunControl.shared_data, as cells in threads do).
    """
    codes: list[int] = []
    control.shared_data = {}
    try:
        for uris in packs:
            if control.stop_requested:
                codes.append(control.stop_code)  # the packs not started wait for the rerun
                break
            codes += train_group(uris, control, force, device, say_for)
    finally:
        control.shared_data = None
    return codes


def train_group(uris: list[str], control: RunControl, force: bool, device: str | None,
                say_for: Callable[[str], Callable[[str], None]]) -> list[int]:  # fmt: skip
    """Lock, open and start each cell; then the cells at one point as one pack, a lone one solo."""
    codes: list[int] = []
    with ExitStack() as held:  # the locks and (for s3:// cells) scratch folders, until the group is done
        started: dict[tuple[int, int, int], list[CellRun]] = defaultdict(list)
        for uri in uris:
            run, code = start_cell(held, uri, control, force, device, say_for(uri))
            if run is None:
                codes.append(code)
            else:
                p = run.progress
                started[p.repeat, p.round, p.epoch].append(run)
        for runs in started.values():
            if len(runs) == 1:
                codes.append(settle(runs[0], lambda run=runs[0]: train_run(run)))
            else:
                codes += train_together(runs)
    return codes


def start_cell(held: ExitStack, uri: str, control: RunControl, force: bool, device: str | None,
               say: Callable[[str], None]) -> tuple[CellRun | None, int]:  # fmt: skip
    """(the started cell, 0) or (None, its exit code): as autolabel.cell.run_cell begins a cell,
    its lock and open folder kept in ``held``."""
    lock, refused = lock_cell(uri)
    if refused is not None:
        return None, refused
    if lock is not None:
        held.callback(lock.release)
    try:
        cell = held.enter_context(open_cell(uri, force, control.gate.idle))
        if not needs_training(cell, force, say):
            return None, EXIT_OK
        runs: list[CellRun] = []
        code = outcome(cell, control, lambda: runs.append(start_run(cell, control, force, device, say)))
        return (runs[0] if runs else None), code
    except storage.StorageError as e:
        print(e, file=sys.stderr, flush=True)
        return None, EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - one broken cell must not stop the others
        return None, unexpected(uri, e)


def settle(run: CellRun, work: Callable[[], object]) -> int:
    """``work`` for one cell, its end mapped to the cell's exit code as autolabel.cell.train_opened does."""
    try:
        return outcome(run.cell, run.control, work)
    except storage.StorageError as e:
        print(e, file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - one broken cell must not stop the others
        return unexpected(run.cell.uri, e)


def train_together(runs: list[CellRun]) -> list[int]:
    """Train cells that stand at one point as one fused pack; each cell's exit code.

    Per epoch: the pack's joint epoch (autolabel.fused), then for each live cell what a solo
    epoch ends with: close_epoch (a diverged cell ends here and leaves the pack's updates), the
    checkpoint when due (one decision for the pack, so its cells resume from one epoch) and the stop.
    """
    codes = [EXIT_OK] * len(runs)
    control = runs[0].control
    pack = None
    try:
        pack = build_pack(runs)
        while pack.live and pack.runs[pack.live[0]].progress.repeat < pack.runs[pack.live[0]].options.until:
            rows = run_pack_epoch(pack)
            for k, row in rows.items():
                codes[k] = settle(runs[k], lambda run=runs[k], row=row: close_epoch(run, row))
            leave(pack, [k for k in pack.live if codes[k] != EXIT_OK])
            if not pack.live:
                break
            stopping = control.stop_requested  # one look per epoch, as autolabel.cell.train_run
            due = checkpoint_due(runs[pack.live[0]], stopping)
            for k in list(pack.live):
                run = runs[k]
                if due and run.progress.epoch:  # a mid-round checkpoint carries the round's Adam
                    export_optimizer(pack, k)
                codes[k] = settle(run, lambda run=run: checkpoint_if_due(run, stopping, due))
                clear_optimizer(pack, k)
                if codes[k] == EXIT_OK:
                    codes[k] = settle(run, lambda run=run: stop_if_asked(run, stopping))
            leave(pack, [k for k in pack.live if codes[k] != EXIT_OK])
        for k in pack.live:
            codes[k] = settle(runs[k], lambda run=runs[k]: finish_cell(run))
    except Exception as e:  # noqa: BLE001 - the pack's step failed: each of its live cells ends with 1 (or 74)
        live = pack.live if pack is not None else range(len(runs))
        code = unexpected(" ".join(runs[k].cell.uri for k in live), e)
        for k in live:
            codes[k] = code
    return codes


def leave(pack: FusedPack, cells: list[int]) -> None:
    """These cells leave the pack (diverged, stopped, failed): Adam skips them from now on."""
    for k in cells:
        pack.adam.skip[k] = 1.0
        pack.live.remove(k)
