"""Tests of flows/artifacts.py under a real Prefect API: the cells table, the markdown, progress.

    .venv/bin/python -m pytest -q tests/test_artifacts.py
"""

from __future__ import annotations

import json

import pytest

from flows import artifacts as A


def test_artifact_key_is_valid():
    assert A.artifact_key("Demo Grid_v2.1") == "demo-grid-v2-1"
    assert A.artifact_key("___") == "grid"


def test_progress_wording():
    assert A.progress_text(3, 8) == "3/8 finished"
    assert A.progress_text(0, 0) == A.NOTHING_TO_TRAIN and "0/0" not in A.progress_text(0, 0)


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
    # Best first, a compact set of columns, numbers formatted (the full rows are in summary.csv).
    best = max(rows, key=lambda r: r["mean_dice"])
    assert table[0]["cell"] == best["label"]
    assert float(table[0]["mean Dice"]) == pytest.approx(best["mean_dice"], abs=5e-5)
    assert list(table[0]) == ["cell", "mean Dice", "Dice V1", "Dice V2", "Dice V3", "Dice E0", "Dice E1", "Dice E2",
                              "Dice E3", "Dice E4", "status", "epochs", "cost"]  # fmt: skip
    assert table[0]["mean Dice"] == f"{best['mean_dice']:.4f}" and table[0]["cost"].startswith("$")
    assert [float(t["mean Dice"]) for t in table] == sorted((float(t["mean Dice"]) for t in table), reverse=True)
    assert by["demo-summary"].type == "markdown" and "- lr: matters" in by["demo-summary"].data
    assert by["demo-progress"].type == "progress" and by["demo-progress"].data == 100.0
    assert by["demo-progress"].description == "4/4 finished"

    @flow
    def nothing() -> object:
        return A.start_progress(0, key="Demo-idle")

    with get_client(sync_client=True) as client:
        idle = client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[nothing()])))[0]
    assert idle.data == 100.0 and idle.description == A.NOTHING_TO_TRAIN
