"""Tests of flows/artifacts.py under a real Prefect API: the cells table, the markdown, progress.

    .venv/bin/python -m pytest -q tests/test_artifacts.py
"""

from __future__ import annotations

import json

import pytest

from flows import artifacts as A
from tests.summary_grid import grid  # noqa: F401 - a fixture


def test_artifact_key_is_valid():
    assert A.artifact_key("Demo Grid_v2.1") == "demo-grid-v2-1"
    assert A.artifact_key("___") == "grid"


@pytest.mark.slow
def test_artifacts_created_under_a_real_prefect_api(grid, prefect_api):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    _, cells, rows, result = grid

    @flow
    def publish() -> dict:
        progress = A.start_progress(4, key="Demo-progress")
        for done in range(1, 5):
            A.update_progress(progress, done, 4)
        return A.publish_artifacts(result, key_prefix="Demo"), progress

    ids, progress = publish()
    assert set(ids) == {"demo-cells", "demo-summary"}
    # Other tests of the session may publish under the same keys: read these very artifacts.
    with get_client(sync_client=True) as client:
        keys = ["demo-cells", "demo-summary", "demo-progress"]
        wanted = [*ids.values(), progress]
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=wanted)))
    by = {a.key: a for a in arts}
    assert set(by) == set(keys)
    table = json.loads(by["demo-cells"].data)
    assert by["demo-cells"].type == "table" and len(table) == len(cells)
    assert table[0]["id"] == rows[0]["id"] and table[0]["mean_dice"] == pytest.approx(rows[0]["mean_dice"])
    assert by["demo-summary"].type == "markdown" and "- lr: matters" in by["demo-summary"].data
    assert by["demo-progress"].type == "progress" and by["demo-progress"].data == 100.0
    assert by["demo-progress"].description == "4/4 finished"
