"""The dataset format, its validation, loading, resampling, partitions and the cache (local and s3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from autolabel import data, storage
from autolabel.data import (
    CHANNELS,
    INPUT_SETS,
    LABELS,
    DatasetError,
    open_cohort,
    open_dataset,
    split_subjects,
    write_dataset,
)
from autolabel.options import ExplicitPartition, PathDataset, SyntheticDataset
from autolabel.synthetic import GENERATOR_VERSION
from tests.conftest import s3_upload_dir

REPO = Path(__file__).resolve().parents[1]


def test_names_match_the_published_method():
    t1 = ("x", "y", "z", "curvature", "convexity", "thickness", "surface_area")
    fn = ("prf_x", "prf_y", "prf_sigma", "prf_cod")
    assert CHANNELS == t1 + ("myelin", "dwi_OR", "dwi_VOF") + fn
    assert INPUT_SETS == {
        "anat": t1,
        "t1t2": t1 + ("myelin",),
        "func": t1 + fn,
        "trac": t1 + ("dwi_OR", "dwi_VOF"),
        "not2": t1 + fn + ("dwi_OR", "dwi_VOF"),
        "nofn": t1 + ("myelin", "dwi_OR", "dwi_VOF"),
        "nodw": t1 + ("myelin",) + fn,
        "full": CHANNELS,
    }
    assert LABELS == {"area": ("V1", "V2", "V3"), "ring": ("E0", "E1", "E2", "E3", "E4")}


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AUTOLABEL_CACHE", str(tmp_path / "c"))
    assert data.cache_root() == tmp_path / "c"
    monkeypatch.delenv("AUTOLABEL_CACHE")
    assert data.cache_root() == Path.home() / ".cache" / "autolabel"


# ----------------------------------------------------------------------------- format round trip


def random_subjects(n: int = 5, size=(8, 16), channels=CHANNELS, seed: int = 0) -> dict:
    """Random features and one-hot-ish labels in the dataset's shapes."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        feats = rng.normal(i, 1 + i, (len(channels), *size)).astype(np.float32)
        labels = {k: (rng.random((len(v), *size)) < 0.3).astype(np.uint8) for k, v in LABELS.items()}
        out[f"s{i}"] = (feats, labels)
    return out


@pytest.fixture
def tiny(tmp_path) -> tuple[Path, dict]:
    subjects = random_subjects()
    return write_dataset(tmp_path / "ds", subjects), subjects


def test_round_trip_keeps_every_array(tiny):
    root, subjects = tiny
    cohort = open_cohort(root)
    assert cohort.subjects == list(subjects) and cohort.channels == CHANNELS
    assert cohort.labels == LABELS and cohort.image_size == (8, 16)
    ids = ["s3", "s0"]
    x, y = cohort.arrays(ids, "full", "ring", normalize=False)
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, np.stack([subjects[s][0] for s in ids]))
    np.testing.assert_array_equal(y, np.stack([subjects[s][1]["ring"] for s in ids]))
    # A subset comes back in INPUT_SETS order.
    x, _ = cohort.arrays(ids, "trac", "area", normalize=False)
    picked = [CHANNELS.index(c) for c in INPUT_SETS["trac"]]
    np.testing.assert_array_equal(x, np.stack([subjects[s][0][picked] for s in ids]))


def test_compressed_subject_files_load_too(tiny):
    root, subjects = tiny
    feats, labels = subjects["s2"]
    np.savez_compressed(root / "subjects" / "s2.npz", features=feats, **labels)
    x, y = open_cohort(root).arrays(["s2", "s1"], "full", "area", normalize=False)
    np.testing.assert_array_equal(x[0], feats)
    np.testing.assert_array_equal(y[0], labels["area"])
    np.testing.assert_array_equal(x[1], subjects["s1"][0])


def test_manifest_describes_the_format(tiny):
    root, subjects = tiny
    m = json.loads((root / "manifest.json").read_text())
    assert m["format"] == "autolabel-flatmaps" and m["format_version"] == 1
    assert m["channels"] == list(CHANNELS) and m["subjects"] == list(subjects)
    assert m["image_size"] == [8, 16] and m["dtype"] == "float32"
    with np.load(root / "subjects" / "s1.npz") as z:
        assert sorted(z.files) == ["area", "features", "ring"]
        assert z["features"].dtype == np.float32 and z["area"].dtype == np.uint8


def test_default_arrays_are_standardised_with_cohort_statistics(tiny):
    root, subjects = tiny
    cohort = open_cohort(root)
    x, _ = cohort.arrays(list(subjects), "full", "area")
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)
    # The same statistics are recomputed when a hand-written manifest has none.
    m = json.loads((root / "manifest.json").read_text())
    del m["channel_stats"]
    (root / "manifest.json").write_text(json.dumps(m))
    again, _ = open_cohort(root).arrays(list(subjects), "full", "area")
    np.testing.assert_allclose(again, x, atol=1e-4)


def test_a_dataset_may_hold_fewer_channels_and_label_sets(tmp_path):
    t1 = INPUT_SETS["anat"]
    subjects = {s: (f, {"area": lab["area"]}) for s, (f, lab) in random_subjects(3, channels=t1).items()}
    cohort = open_cohort(write_dataset(tmp_path / "t1", subjects, channels=t1, labels={"area": LABELS["area"]}))
    x, y = cohort.arrays(["s0"], "anat", "area")
    assert x.shape == (1, 7, 8, 16) and y.shape == (1, 3, 8, 16)
    with pytest.raises(DatasetError, match=r"channels \['myelin'\] needed by inputs 't1t2'"):
        cohort.arrays(["s0"], "t1t2", "area")
    with pytest.raises(DatasetError, match=r"label set 'ring' is not in this dataset"):
        cohort.arrays(["s0"], "anat", "ring")


def test_arrays_reject_unknown_names(tiny):
    cohort = open_cohort(tiny[0])
    with pytest.raises(DatasetError, match=r"^inputs 'everything': unknown input set; use one of anat"):
        cohort.arrays(["s0"], "everything", "area")
    with pytest.raises(DatasetError, match=r"unknown subject id\(s\) \['nobody'\]"):
        cohort.arrays(["s0", "nobody"], "full", "area")


# ----------------------------------------------------------------------------- validation


def rewrite_manifest(root: Path, **changes) -> None:
    m = json.loads((root / "manifest.json").read_text())
    for key, value in changes.items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    (root / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"channels": ["x", "y", "depth"] + list(CHANNELS[3:])}, r"unknown channel name\(s\) \['depth'\] in 'channels'"),
        ({"channels": ["x", "x"]}, r"'channels' must be a non-empty list without repeats"),
        ({"labels": {"area": ["V1", "V2"]}}, r"labels.area is \['V1', 'V2'\]; it must be \['V1', 'V2', 'V3'\]"),
        ({"labels": {"wang": ["V1"]}}, r"unknown label set 'wang' in 'labels'"),
        ({"format_version": 7}, r"'format'/'format_version' are 'autolabel-flatmaps'/7; this reader needs"),
        ({"image_size": [8]}, r"'image_size' must be \[rows, cols\] of positive integers, got \[8\]"),
        ({"subjects": None}, r"field 'subjects' missing or not a list"),
        ({"subjects": ["s0", "s0"]}, r"'subjects' must be unique ids"),
        ({"subjects": ["../etc"]}, r"'subjects' must be unique ids .*bad: \['../etc'\]"),
        ({"dtype": "float16"}, r"'dtype' is 'float16'; features must be stored as float32"),
        ({"channel_stats": {"mean": [0.0]}}, r"'channel_stats' must be .*or delete it"),
    ],
)
def test_manifest_errors_name_the_file_and_field(tiny, changes, message):
    root = tiny[0]
    rewrite_manifest(root, **changes)
    with pytest.raises(DatasetError, match=message) as e:
        open_cohort(root)
    assert str(e.value).startswith(str(root.resolve() / "manifest.json"))
    assert "\n" not in str(e.value)


def test_missing_or_broken_manifest(tmp_path, tiny):
    with pytest.raises(DatasetError, match=r"manifest.json: not found; a dataset folder needs manifest.json"):
        open_cohort(tmp_path)
    (tiny[0] / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"manifest.json: not valid JSON"):
        open_cohort(tiny[0])


def test_subject_files_are_checked_against_the_manifest(tiny):
    root, subjects = tiny
    feats, labels = subjects["s2"]
    np.savez(root / "subjects" / "s2.npz", features=feats[:, :4], **labels)
    with pytest.raises(DatasetError, match=r"s2.npz: array 'features' is float32\[14, 4, 16\], expected float32\[14, 8, 16\]"):
        open_cohort(root)
    np.savez(root / "subjects" / "s2.npz", features=feats, area=labels["area"])
    with pytest.raises(DatasetError, match=r"s2.npz: array 'ring' missing"):
        open_cohort(root)
    (root / "subjects" / "s2.npz").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"s2.npz: not a readable .npz"):
        open_cohort(root)
    (root / "subjects" / "s2.npz").unlink()
    with pytest.raises(DatasetError, match=r"s2.npz: missing; every id in manifest 'subjects' needs"):
        open_cohort(root)


def test_write_dataset_refuses_bad_subjects(tmp_path):
    feats, labels = random_subjects(1)["s0"]
    with pytest.raises(DatasetError, match=r"subject id 'a/b': use 1-64 letters"):
        write_dataset(tmp_path / "a", {"a/b": (feats, labels)})
    with pytest.raises(DatasetError, match=r"subject t: features shape \(13, 8, 16\), expected \(14, 8, 16\)"):
        write_dataset(tmp_path / "b", {"t": (feats[:13], labels)})
    with pytest.raises(DatasetError, match=r"subject t: label set 'ring' must hold only 0 and 1"):
        write_dataset(tmp_path / "c", {"t": (feats, labels | {"ring": labels["ring"] * 2})})
    with pytest.raises(DatasetError, match=r"subject t: label set 'area' shape None"):
        write_dataset(tmp_path / "d", {"t": (feats, {"ring": labels["ring"]})})
    with pytest.raises(DatasetError, match=r"subject t: given twice"):
        write_dataset(tmp_path / "f", [("t", feats, labels), ("t", feats, labels)])
    with pytest.raises(DatasetError, match=r"no subjects to write"):
        write_dataset(tmp_path / "e", {})
    assert not (tmp_path / "b" / "manifest.json").exists()


# ----------------------------------------------------------------------------- resampling


def test_resampling_to_another_image_size(tiny):
    root, subjects = tiny
    cohort = open_cohort(root)
    ids = ["s0", "s1", "s4"]
    x, y = cohort.arrays(ids, "anat", "area", normalize=False)
    down_x, down_y = cohort.arrays(ids, "anat", "area", image_size=(4, 8), normalize=False)
    up_x, up_y = cohort.arrays(ids, "nodw", "ring", image_size=(16, 32), normalize=False)
    assert down_x.shape == (3, 7, 4, 8) and down_y.shape == (3, 3, 4, 8)
    assert up_x.shape == (3, 12, 16, 32) and up_y.shape == (3, 5, 16, 32)
    assert down_x.dtype == up_x.dtype == np.float32
    # Area averaging: each output pixel is the mean of its 2x2 block; labels stay 0/1, nearest.
    np.testing.assert_allclose(down_x, x.reshape(3, 7, 4, 2, 8, 2).mean(axis=(3, 5)), rtol=1e-5, atol=1e-5)
    assert set(np.unique(up_y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(up_y[:, :, ::2, ::2], cohort.arrays(ids, "nodw", "ring", normalize=False)[1])
    np.testing.assert_array_equal(down_y, y[:, :, 1::2, 1::2])


# ----------------------------------------------------------------------------- partitions


def test_fraction_split_is_deterministic_and_seed_free():
    ids = [f"sub{i:03d}" for i in range(50)]
    train, val = split_subjects(ids, 0.2)
    assert (train, val) == split_subjects(list(ids), 0.2)
    assert len(val) == 10 and sorted(train + val) == ids and not set(train) & set(val)
    # Order of the input list does not change who validates.
    assert set(split_subjects(ids[::-1], 0.2)[1]) == set(val)
    # Extremes still leave one subject on each side.
    assert [len(s) for s in split_subjects(ids[:3], 0.01)] == [2, 1]
    assert [len(s) for s in split_subjects(ids[:3], 0.99)] == [1, 2]


def test_split_errors():
    with pytest.raises(DatasetError, match=r"^partition: 1 subject\(s\) cannot be split"):
        split_subjects(["only"], 0.5)
    with pytest.raises(DatasetError, match=r"^partition: unknown subject id\(s\) \['100610', '999'\]"):
        split_subjects(["a", "b", "c"], ExplicitPartition(train=["a", 100610], validation=["999"]))
    with pytest.raises(ValidationError, match="at least 1 item"):
        ExplicitPartition(train=[], validation=["a"])
    assert split_subjects(["a", "b", "c"], ExplicitPartition(train=["c", "a"], validation=["b"])) == (["c", "a"], ["b"])


# ----------------------------------------------------------------------------- opening and the cache


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
from autolabel.data import open_dataset
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
    x, y = cohort.arrays(["s1"], "full", "area", normalize=False)
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
