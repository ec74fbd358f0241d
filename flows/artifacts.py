"""The summary in Prefect: a cells table, the summary markdown and a progress bar, as artifacts.

    publish_artifacts(summary, key_prefix=artifact_key(grid_dir.name))
    progress = start_progress(len(packs), key=artifact_key(name) + "-progress")
    update_progress(progress, done, len(packs))

Prefect is imported inside each function, so the dry run and the statistics never load it.
``_sync=True`` makes Prefect's dual sync/async helpers run synchronously even when called from
an async flow, where they would otherwise return an un-awaited coroutine.
"""

from __future__ import annotations

import re
from uuid import UUID

from flows.summary.report import Summary, cells_table

# What the progress bar says when a run has no pack to train (a rerun of a finished grid).
NOTHING_TO_TRAIN = "nothing to train in this run: the summary was rebuilt from the cells on disk"


def artifact_key(text: str) -> str:
    """A valid Prefect artifact key (lowercase letters, digits, dashes) from any name."""
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return key or "grid"


def publish_artifacts(summary: Summary, key_prefix: str) -> dict[str, UUID]:
    """Create the cells table and the summary markdown artifacts; returns their ids by key."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    prefix = artifact_key(key_prefix)
    n = len(summary.rows)
    table = cells_table(summary.rows)
    return {
        f"{prefix}-cells": create_table_artifact(
            table=table, key=f"{prefix}-cells", description=f"{n} cells of grid {summary.title}", _sync=True
        ),
        f"{prefix}-summary": create_markdown_artifact(
            markdown=summary.markdown, key=f"{prefix}-summary", description=f"summary of grid {summary.title}",
            _sync=True,
        ),
    }


def start_progress(total: int, key: str) -> UUID:
    """A progress artifact at 0% (100% when there is nothing to run)."""
    from prefect.artifacts import create_progress_artifact

    return create_progress_artifact(
        progress=0.0 if total else 100.0, key=artifact_key(key), description=progress_text(0, total), _sync=True
    )


def progress_text(done: int, total: int) -> str:
    """'3/8 finished' (packs of cells), or what an empty run means."""
    return f"{done}/{total} finished" if total else NOTHING_TO_TRAIN


def update_progress(artifact_id: UUID, done: int, total: int) -> None:
    """Move the progress artifact to done/total."""
    from prefect.artifacts import update_progress_artifact

    pct = 100.0 * done / total if total else 100.0
    update_progress_artifact(
        artifact_id=artifact_id, progress=min(pct, 100.0), description=progress_text(done, total), _sync=True
    )
