"""The dataset format (autolabel.datasets.format) and reading it (autolabel.datasets.cohort): validation, loading, resampling, partitions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from autolabel.datasets.cohort import open_cohort
from autolabel.datasets.format import (
    CHANNELS,
    INPUT_SETS,
    LABELS,
    DatasetError,
    split_subjects,
    write_dataset,
)
from autolabel.options import ExplicitPartition


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
    x, y = cohort.arrays(ids, "full", "ring")
    assert x.dtype == np.float32 and y.dtype == np.float32
    np.testing.assert_array_equal(x, np.stack([subjects[s][0] for s in ids]))
    np.testing.assert_array_equal(y, np.stack([subjects[s][1]["ring"] for s in ids]))
    # A subset comes back in INPUT_SETS order.
    x, _ = cohort.arrays(ids, "trac", "area")
    picked = [CHANNELS.index(c) for c in INPUT_SETS["trac"]]
    np.testing.assert_array_equal(x, np.stack([subjects[s][0][picked] for s in ids]))


def test_compressed_subject_files_load_too(tiny):
    root, subjects = tiny
    feats, labels = subjects["s2"]
    np.savez_compressed(root / "subjects" / "s2.npz", features=feats, **labels)
    x, y = open_cohort(root).arrays(["s2", "s1"], "full", "area")
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


def test_manifest_channel_stats_are_the_whole_cohorts_and_optional(tiny):
    # Features come back raw; the manifest's stats describe the cohort for other readers of the format.
    root, subjects = tiny
    cohort = open_cohort(root)
    x, _ = cohort.arrays(list(subjects), "full", "area")
    np.testing.assert_array_equal(x, np.stack([f for f, _ in subjects.values()]))
    m = json.loads((root / "manifest.json").read_text())
    np.testing.assert_allclose(m["channel_stats"]["mean"], x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m["channel_stats"]["std"], x.std(axis=(0, 2, 3)), rtol=1e-4)
    # A hand-written manifest without them opens just the same.
    del m["channel_stats"]
    (root / "manifest.json").write_text(json.dumps(m))
    again, _ = open_cohort(root).arrays(list(subjects), "full", "area")
    np.testing.assert_array_equal(again, x)


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
        ({"labels": {"area": 3}}, r"labels.area must be a list of label names \(strings\), got 3"),
        ({"channels": [{"x": 1}]}, r"'channels' must be a list of channel names \(strings\)"),
        ({"image_size": [True, 64]}, r"'image_size' must be \[rows, cols\] of positive integers"),
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
    x, y = cohort.arrays(ids, "anat", "area")
    down_x, down_y = cohort.arrays(ids, "anat", "area", image_size=(4, 8))
    up_x, up_y = cohort.arrays(ids, "nodw", "ring", image_size=(16, 32))
    assert down_x.shape == (3, 7, 4, 8) and down_y.shape == (3, 3, 4, 8)
    assert up_x.shape == (3, 12, 16, 32) and up_y.shape == (3, 5, 16, 32)
    assert down_x.dtype == up_x.dtype == np.float32
    # Area averaging: each output pixel is the mean of its 2x2 block; labels stay 0/1, nearest.
    np.testing.assert_allclose(down_x, x.reshape(3, 7, 4, 2, 8, 2).mean(axis=(3, 5)), rtol=1e-5, atol=1e-5)
    assert set(np.unique(up_y)) <= {0.0, 1.0}
    np.testing.assert_array_equal(up_y[:, :, ::2, ::2], cohort.arrays(ids, "nodw", "ring")[1])
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
