"""Where a cell's dataset comes from: a local folder, a synthetic cohort generated once, or an s3 prefix downloaded once.

Generated and downloaded datasets live in one cache (``$AUTOLABEL_CACHE``, default
``~/.cache/autolabel``), each built in a temporary folder and renamed into place, so
concurrent trainers end up with one complete copy.

    from autolabel.datasets.sources import open_dataset
    from autolabel.options import SyntheticDataset
    cohort = open_dataset(SyntheticDataset(subjects=16, rows=64, cols=128))
"""

from __future__ import annotations

import os
from pathlib import Path

from autolabel.datasets.cohort import Cohort, open_cohort
from autolabel.datasets.format import MANIFEST, DatasetError, publish
from autolabel.datasets.fsaverage import ensure_cohort as ensure_fsaverage
from autolabel.datasets.synthetic import GENERATOR_VERSION, generate_cohort
from autolabel.options import FsaverageDataset, PathDataset, SyntheticDataset
from autolabel.storage import StorageError, download_prefix, split_s3


def cache_root() -> Path:
    """Where generated and downloaded datasets live: ``$AUTOLABEL_CACHE`` or ``~/.cache/autolabel``."""
    env = os.environ.get("AUTOLABEL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autolabel"


def open_dataset(spec: SyntheticDataset | FsaverageDataset | PathDataset, cache_dir: Path | None = None) -> Cohort:
    """Open the dataset a cell names: generate a synthetic cohort or download an s3 prefix once, into the cache."""
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    if isinstance(spec, FsaverageDataset):  # before synthetic: it shares the size fields
        return open_cohort(ensure_fsaverage(spec, cache))
    if isinstance(spec, SyntheticDataset):
        return open_cohort(ensure_synthetic(spec, cache))
    if spec.path.startswith("s3://"):
        return open_cohort(ensure_downloaded(spec.path, cache))
    root = Path(spec.path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"dataset.path {spec.path}: no such folder; give a dataset folder or s3://bucket/prefix",
                           field="dataset")
    return open_cohort(root)


def synthetic_dir(spec: SyntheticDataset, cache: Path) -> Path:
    """The cache folder of a synthetic cohort: its parameters and the generator's version name it."""
    return cache / f"synthetic-s{spec.seed}-n{spec.subjects}-{spec.rows}x{spec.cols}-v{GENERATOR_VERSION}"


def ensure_synthetic(spec: SyntheticDataset, cache: Path) -> Path:
    """Generate the cohort unless the cache has it; concurrent callers all end up with one copy."""
    target = synthetic_dir(spec, cache)
    if not (target / MANIFEST).is_file():
        publish(target, lambda tmp: generate_cohort(tmp, spec.seed, spec.subjects, spec.rows, spec.cols))
    return target


def ensure_downloaded(uri: str, cache: Path) -> Path:
    """Download ``uri`` into ``<cache>/s3/<bucket>/<prefix>`` once; later calls reuse it."""
    try:
        bucket, key = split_s3(uri)
    except StorageError as e:
        raise DatasetError(f"dataset.path: {e}", field="dataset") from None
    target = cache / "s3" / bucket / key if key else cache / "s3" / bucket
    if not (target / MANIFEST).is_file():

        def fetch(tmp: Path) -> None:
            download_prefix(uri, tmp)
            if not (tmp / MANIFEST).is_file():
                raise DatasetError(f"{uri.rstrip('/')}/{MANIFEST}: not found; upload a dataset folder to this prefix")

        publish(target, fetch)
    return target
