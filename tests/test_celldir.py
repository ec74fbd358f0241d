"""The cell directory: the one atomic writer, the one metrics.json reader, completeness."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from autolabel import celldir
from autolabel.options import CellMetrics


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    # In a child with a known umask: celldir reads the umask once at import.
    code = (
        "import os, sys; os.umask(0o027)\n"
        "from pathlib import Path; from autolabel import celldir\n"
        "celldir.write_json_atomic(Path(sys.argv[1]) / 'a.json', {'x': 1})\n"
        "celldir.write_atomic(Path(sys.argv[1]) / 'b.bin', lambda p: p.write_bytes(b'1'))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640, name  # 0666 & ~0027, not mkstemp's 0600


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    celldir.write_json_atomic(path, {"status": "complete"})

    def broken(p):
        p.write_text("{half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        celldir.write_atomic(path, broken)
    assert json.loads(path.read_text()) == {"status": "complete"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_read_metrics_says_what_it_found(tmp_path):
    cell = tmp_path / "cell"
    cell.mkdir()
    assert celldir.read_metrics(cell) is None  # not written yet
    celldir.write_json_atomic(cell / celldir.METRICS, CellMetrics(status="complete", mean_dice=0.8).model_dump())
    m = celldir.read_metrics(cell)
    assert isinstance(m, CellMetrics) and m.mean_dice == 0.8 and celldir.is_complete(cell)

    (cell / celldir.METRICS).write_text('{"status": "complete", "surprise": 1}')  # a field nobody declared
    problem = celldir.read_metrics(cell)
    assert isinstance(problem, str) and str(cell / celldir.METRICS) in problem and "\n" not in problem
    assert not celldir.is_complete(cell)

    (cell / celldir.METRICS).unlink()
    (cell / celldir.METRICS).mkdir()  # not a regular file
    problem = celldir.read_metrics(cell)
    assert isinstance(problem, str) and "unreadable" in problem and not celldir.is_complete(cell)


def test_complete_ids_count_only_cell_folders_that_say_complete(tmp_path):
    for name, status in (("a", "complete"), ("b", "failed")):
        (tmp_path / name).mkdir()
        celldir.write_json_atomic(tmp_path / name / celldir.METRICS, {"status": status})
    (tmp_path / "c").mkdir()  # no metrics yet
    (tmp_path / "stray-file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "a")  # a cell folder may be a link: the trainer follows it
    assert celldir.complete_ids(tmp_path) == {"a", "link"}  # so the count does (the plan keeps the grid's ids)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / celldir.METRICS).write_text('{"status": "comp')  # cut short
    done, unreadable = celldir.scan_cells(tmp_path)
    assert done == {"a", "link"} and list(unreadable) == ["d"] and "unreadable metrics.json" in unreadable["d"]
    assert celldir.complete_ids(tmp_path / "missing") == set()
