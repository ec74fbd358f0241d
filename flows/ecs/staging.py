"""A cell's files between the grid's local folder and S3, as the ECS runner moves them.

    upload_inputs(s3, grid_dir / "cells" / cell_id, "s3://bucket/grid/cells/<id>")
    download_results(s3, "s3://bucket/grid/cells/<id>", grid_dir / "cells" / cell_id)

The local folder is the source of a cell's inputs, S3 the source of its progress: a local
checkpoint goes up only where S3 has none, so a stale one never replaces newer progress.
Results come down through the cell folder's one atomic writer, metrics.json last, so the
summary reads a finished ECS cell exactly as a local one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from autolabel.celldir import CHECKPOINT, INPUTS, METRICS, MODEL, write_atomic
from autolabel.storage import exists, join, list_keys, split_s3


def upload_inputs(s3: Any, local: Path, uri: str) -> None:
    """options.json and plan.json up; a local checkpoint only where S3 has none."""
    for name in INPUTS:
        path = local / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the flow writes it before launching")
        put(s3, path, join(uri, name))
    ckpt = local / CHECKPOINT
    if ckpt.is_file() and not exists(join(uri, CHECKPOINT), s3):
        put(s3, ckpt, join(uri, CHECKPOINT))


def download_results(s3: Any, uri: str, local: Path, models: bool = True) -> None:
    """Everything the trainer wrote except the checkpoint (and model.pt unless ``models``);
    metrics.json last and atomically."""
    skip = {*INPUTS, CHECKPOINT, *(() if models else (MODEL,))}
    keys = [k for k in ours(s3, uri) if k not in skip]
    for rel in sorted(keys, key=lambda k: k == METRICS):
        get(s3, join(uri, rel), local / rel)


def ours(s3: Any, uri: str) -> list[str]:
    """Keys under ``uri``, relative to it; any this runner would not write itself is ignored."""

    def valid(rel: str) -> bool:
        try:
            return bool(join(uri, rel))  # the same validation as every key we write
        except ValueError:
            return False

    return [rel for rel in list_keys(uri, s3) if valid(rel)]


def put(s3: Any, path: Path, uri: str) -> None:
    bucket, key = split_s3(uri)
    s3.upload_file(str(path), bucket, key)


def get(s3: Any, uri: str, dest: Path) -> None:
    """Download through the cell folder's one atomic writer: readers see the old file or the
    whole new one, with a plain file's permissions."""
    bucket, key = split_s3(uri)
    write_atomic(dest, lambda tmp: s3.download_file(bucket, key, str(tmp)))
