"""What training will need, checked before anything launches: the dry run and the flow call one function.

    problems = check_run(cells, grid_dir)     # [] or one "where: field: problem" line each

The spec's own checks (flows.spec.parse) see each value alone; these see what a cell's trainer
would meet: the output folder, the dataset it reads (its manifest, its subject ids, its
channels), the partition of that dataset and the image size the network needs. No torch, no
numpy (unless a path dataset or explicit ids need it), no Prefect, no training data read: only manifests, and a generated cohort's ids and size
come from its spec (autolabel.datasets.format.subject_ids), without generating it.
"""

from __future__ import annotations

import os
from pathlib import Path

from autolabel import celldir
from autolabel.options import (
    ExplicitPartition,
    PathDataset,
    partition_problem,
    split_counts,
    training_problem,
)
from flows.spec.cells import Cell, cell_dir, is_grid_folder

# What the flow writes or reads in a cell folder: each must be a regular file where it exists
# (a folder or a device in its place would stop the writer or the trainer with a traceback).
CELL_FILES = (*celldir.INPUTS, celldir.METRICS, celldir.CHECKPOINT, celldir.HISTORY, celldir.LOG,
              celldir.MODEL, celldir.RUNNER_LOG)


def check_run(cells: list[Cell], grid_dir: Path) -> list[str]:
    """Every problem that would stop these cells' training, one line each (a line once, however many cells)."""
    problems = out_dir_problems(Path(grid_dir))
    seen: set[str] = set()
    for c in cells:
        for line in cell_problems(c) + cell_file_problems(cell_dir(grid_dir, c)):
            if line not in seen:
                seen.add(line)
                problems.append(line)
    return problems


def out_dir_problems(grid_dir: Path) -> list[str]:
    """The output folder must be a writable folder, or creatable in a writable one; an existing one
    must be a grid's (a run writes cells/, plots/, best/ and summary.* there)."""
    existing = grid_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return [f"--out {grid_dir}: {existing} is a file, not a folder; give a folder"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"--out {grid_dir}: {existing} is not writable; give a folder you can write"]
    if not is_grid_folder(grid_dir):
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in grid_dir.iterdir())
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        return [f"--out {grid_dir}: holds files that are not a grid's ({shown}); a run writes cells/, plots/, best/ "
                "and summary.* there, so give an empty folder or a grid's own"]
    return []


def cell_file_problems(folder: Path) -> list[str]:
    """A cell folder that exists must be a folder, and its files regular files (links are followed)."""
    if not os.path.lexists(folder):
        return []
    if not folder.is_dir():
        return [f"{folder}: not a folder; remove it (the flow writes the cell there)"]
    return [f"{folder / name}: not a regular file; remove it and rerun" for name in CELL_FILES
            if os.path.lexists(folder / name) and not (folder / name).is_file()]


def generated_ids(n: int, partition) -> list[str]:
    """A generated cohort's ids, known from its size (autolabel.datasets.format.subject_ids); only read
    for an explicit partition, since that module needs numpy and the dry run stays light."""
    if not isinstance(partition, ExplicitPartition):
        return [str(i) for i in range(n)]  # only their number matters
    from autolabel.datasets.format import subject_ids

    return subject_ids(n)


def cell_problems(cell: Cell) -> list[str]:
    """What this cell's dataset, partition, inputs and image size would refuse at training time."""
    o = cell.options
    where = f"cell {cell.label}"
    ds = o.dataset
    if isinstance(ds, PathDataset):
        if ds.path.startswith("s3://"):
            return []  # read by the trainer once downloaded
        from autolabel.datasets.format import (  # numpy: only for a path dataset
            DatasetError,
            read_manifest,
        )

        try:
            m = read_manifest(Path(ds.path).expanduser())
        except DatasetError as e:
            return [f"{where}: dataset: {e}"]
        subjects, size = list(m["subjects"]), (m["image_size"][0], m["image_size"][1])
    else:
        subjects, size = generated_ids(ds.subjects, o.partition), (ds.rows, ds.cols)
    unknown = partition_problem(o.partition, subjects)
    if unknown:
        return [f"{where}: {unknown}"]
    train, _ = split_counts(o.partition, len(subjects))
    batches = tuple(r.batch_size or o.batch_size for r in cell.plan.root)
    problem = training_problem(train, tuple(o.image_size) if o.image_size else size, batches)
    problems = [f"{where}: {problem}"] if problem else []
    if isinstance(ds, PathDataset):
        from autolabel.datasets.format import (
            missing_channels,  # only path datasets can lack a channel
        )

        lacking = missing_channels(ds, o.inputs)
        if lacking:
            subject, channel = lacking[0]
            more = f" (and {len(lacking) - 1} more subject/channel pairs)" if len(lacking) > 1 else ""
            problems.append(f"{where}: inputs: {o.inputs!r} needs channel {channel!r}, which subject {subject!r} "
                            f"of {ds.path} lacks{more}; choose an input set the dataset has")
    return problems
