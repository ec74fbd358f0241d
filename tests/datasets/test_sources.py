"""Where a cell's dataset comes from (autolabel.datasets.sources): a local folder, the synthetic cache, an s3 prefix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autolabel import storage
from autolabel.datasets import sources
from autolabel.datasets.cohort import open_cohort
from autolabel.datasets.format import CHANNELS, LABELS, DatasetError, write_dataset
from autolabel.datasets.sources import open_dataset
from autolabel.datasets.synthetic import GENERATOR_VERSION
from autolabel.options import PathDataset, SyntheticDataset
from tests.conftest import s3_upload_dir

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, dict]:
    """A written dataset of 3 random subjects at 8x16, and its arrays."""
    rng = np.random.default_rng(0)
    subjects = {}
    for i in range(3):
        feats = rng.normal(i, 1 + i, (len(CHANNELS), 8, 16)).astype(np.float32)
        labels = {k: (rng.random((len(v), 8, 16)) < 0.3).astype(np.uint8) for k, v in LABELS.items()}
        subjects[f"s{i}"] = (feats, labels)
    return write_dataset(tmp_path / "ds", subjects), subjects


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOLABEL_CACHE", str(tmp_path / "c"))
    assert sources.cache_root() == tmp_path / "c"
    monkeypatch.delenv("AUTOLABEL_CACHE")
    assert sources.cache_root() == Path.home() / ".cache" / "autolabel"



def test_open_dataset_local_folder(tiny, tmp_path):
    cohort = open_dataset(PathDataset(path=str(tiny[0])))
    assert cohort.subjects == list(tiny[1])
    with pytest.raises(DatasetError, match=r"^dataset.path .*nope: no such folder"):
        open_dataset(PathDataset(path=str(tmp_path / "nope")))


def test_synthetic_cohort_is_generated_once_into_the_cache(tmp_path):
    spec = SyntheticDataset(seed=3, subjects=6, rows=32, cols=64)
    cohort = open_dataset(spec, cache_dir=tmp_path)
    assert cohort.root == tmp_path / f"synthetic-s3-n6-32x64-v{GENERATOR_VERSION}"
    assert len(cohort.subjects) == 6 and cohort.image_size == (32, 64)
    stamp = (cohort.root / "manifest.json").stat().st_mtime_ns
    assert open_dataset(spec, cache_dir=tmp_path).root == cohort.root
    assert (cohort.root / "manifest.json").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [cohort.root.name]


RACE = """
import sys, time
from pathlib import Path
from autolabel.datasets.sources import open_dataset
from autolabel.options import SyntheticDataset
cache, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(cache.parent / me).touch()
while not (cache.parent / other).exists():  # start both generators together
    time.sleep(0.005)
print(open_dataset(SyntheticDataset(subjects=16, rows=64, cols=128), cache_dir=cache).root)
"""


def test_concurrent_open_dataset_makes_one_cache(tmp_path):
    cache = tmp_path / "cache"
    procs = [
        subprocess.Popen([sys.executable, "-c", RACE, str(cache), me, other], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for me, other in (("a", "b"), ("b", "a"))
    ]
    roots = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert roots[0] == roots[1]
    assert [p.name for p in cache.iterdir()] == [Path(roots[0]).name]  # no temp folders left behind
    cohort = open_cohort(Path(roots[0]))
    assert len(cohort.subjects) == 16 and cohort.arrays(cohort.subjects[:2], "full", "area")[0].shape == (2, 14, 64, 128)


def test_s3_dataset_is_downloaded_once(s3_bucket, tiny, tmp_path):
    root, subjects = tiny
    s3_upload_dir(root, f"s3://{s3_bucket}/labs/flatmaps")
    spec = PathDataset(path=f"s3://{s3_bucket}/labs/flatmaps")
    cohort = open_dataset(spec, cache_dir=tmp_path)
    assert cohort.root == tmp_path / "s3" / s3_bucket / "labs" / "flatmaps"
    x, y = cohort.arrays(["s1"], "full", "area")
    np.testing.assert_array_equal(x[0], subjects["s1"][0])
    # Second open reads the cache: it works even once the objects are gone.
    client = storage.s3_client()
    for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]:
        client.delete_object(Bucket=s3_bucket, Key=obj["Key"])
    assert open_dataset(spec, cache_dir=tmp_path).subjects == list(subjects)


def test_s3_prefix_without_manifest(s3_bucket, tmp_path):
    with pytest.raises(DatasetError, match=rf"^s3://{s3_bucket}/empty/manifest.json: not found; upload a dataset"):
        open_dataset(PathDataset(path=f"s3://{s3_bucket}/empty"), cache_dir=tmp_path)
    assert not (tmp_path / "s3" / s3_bucket / "empty").exists()
    with pytest.raises(DatasetError, match=r"^dataset.path: s3://Bad_Bucket/x: invalid S3 bucket name"):
        open_dataset(PathDataset(path="s3://Bad_Bucket/x"), cache_dir=tmp_path)
