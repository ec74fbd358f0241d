"""An opened dataset: its manifest checked, every subject file's array headers checked, arrays on demand.

    from autolabel.datasets.cohort import open_cohort
    cohort = open_cohort("/data/flatmaps")
    x, y = cohort.arrays(["100610"], inputs="full", prediction="area")   # [N,14,H,W] raw units, [N,3,H,W]

The layout and the names are the format's (autolabel/datasets/format.py); this is how it is read.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autolabel.datasets.format import (
    INPUT_SETS,
    MANIFEST,
    SUBJECTS_DIR,
    DatasetError,
    check_stats,
    read_manifest,
)


@dataclass
class Cohort:
    """An opened, validated dataset folder; arrays are read on demand."""

    root: Path
    subjects: list[str]
    channels: tuple[str, ...]
    labels: dict[str, tuple[str, ...]]
    image_size: tuple[int, int]

    def subject_file(self, subject: str) -> Path:
        return self.root / SUBJECTS_DIR / f"{subject}.npz"

    def arrays(
        self,
        subjects: list[str],
        inputs: str,
        prediction: str,
        image_size: tuple[int, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Features ``x`` float32 [N, C, H, W] (``INPUT_SETS[inputs]`` order) and labels ``y`` float32 0/1 [N, L, H, W].

        Features come in their raw units (mm, degrees, ...): the trainer standardises them
        with its training set's statistics (autolabel.state). With ``image_size`` different
        from the dataset's, features are resampled with area averaging (down) or
        bilinear interpolation (up) and labels with nearest neighbour.
        """
        picked = self._input_indices(inputs)
        names = self._label_names(prediction)
        self._check_known(subjects)
        x, y = self._read(subjects, picked, prediction, len(names))
        if image_size is not None and tuple(image_size) != self.image_size:
            x, y = resample(x, y, (int(image_size[0]), int(image_size[1])))
        return x, y

    def _input_indices(self, inputs: str) -> list[int]:
        if inputs not in INPUT_SETS:
            raise DatasetError(f"inputs {inputs!r}: unknown input set; use one of {', '.join(INPUT_SETS)}", field="inputs")
        missing = [c for c in INPUT_SETS[inputs] if c not in self.channels]
        if missing:
            raise DatasetError(
                f"{self.root / MANIFEST}: channels {missing} needed by inputs {inputs!r} are not in this dataset; "
                f"pick another input set or add the channels"
            )
        return [self.channels.index(c) for c in INPUT_SETS[inputs]]

    def _label_names(self, prediction: str) -> tuple[str, ...]:
        if prediction not in self.labels:
            raise DatasetError(
                f"{self.root / MANIFEST}: label set {prediction!r} is not in this dataset "
                f"(it has {sorted(self.labels)}); pick one of those as prediction"
            )
        return self.labels[prediction]

    def _check_known(self, subjects: list[str]) -> None:
        unknown = sorted(set(subjects) - set(self.subjects))
        if unknown:
            raise DatasetError(f"{self.root / MANIFEST}: unknown subject id(s) {unknown[:10]}; use ids from 'subjects'")

    def _read(
        self, subjects: list[str], picked: list[int], prediction: str, n_labels: int
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.image_size
        x = np.empty((len(subjects), len(picked), h, w), np.float32)
        y = np.empty((len(subjects), n_labels, h, w), np.float32)
        full = picked == list(range(len(self.channels)))
        feats = np.empty((len(self.channels), h, w), np.float32)  # reused buffers
        labels = np.empty((n_labels, h, w), np.uint8)
        for i, s in enumerate(subjects):
            path = self.subject_file(s)
            if full:
                read_member(path, "features", x[i])
            else:
                x[i] = read_member(path, "features", feats)[picked]
            y[i] = read_member(path, prediction, labels)
        return x, y


def open_cohort(root: Path) -> Cohort:
    """Open a local dataset folder, checking the manifest and every subject file's array headers."""
    root = Path(root).expanduser().resolve()
    m = read_manifest(root)
    cohort = Cohort(
        root=root,
        subjects=list(m["subjects"]),
        channels=tuple(m["channels"]),
        labels={k: tuple(v) for k, v in m["labels"].items()},
        image_size=(size := (m["image_size"][0], m["image_size"][1])),
    )
    check_stats(m, root / MANIFEST)
    expected = {"features": ((len(cohort.channels), *size), np.float32)}
    expected |= {k: ((len(v), *size), np.uint8) for k, v in cohort.labels.items()}
    for s in cohort.subjects:
        check_subject_file(cohort.subject_file(s), expected)
    return cohort


def check_subject_file(path: Path, expected: dict[str, tuple[tuple[int, ...], type]]) -> None:
    """Read only the .npy headers inside ``path`` and compare shapes and dtypes with the manifest."""
    if not path.is_file():
        raise DatasetError(f"{path}: missing; every id in manifest 'subjects' needs subjects/<id>.npz")
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            for key, (shape, dtype) in expected.items():
                if f"{key}.npy" not in names:
                    raise DatasetError(f"{path}: array {key!r} missing; it needs {sorted(expected)}")
                with z.open(f"{key}.npy") as f:
                    got_shape, fortran, got_dtype = read_npy_header(f)
                if tuple(got_shape) != shape or got_dtype != np.dtype(dtype) or fortran:
                    raise DatasetError(
                        f"{path}: array {key!r} is {got_dtype}{list(got_shape)}, expected "
                        f"{np.dtype(dtype)}{list(shape)} from manifest.json; rewrite the file"
                    )
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        if isinstance(e, DatasetError):
            raise
        raise DatasetError(f"{path}: not a readable .npz ({e}); rewrite it with numpy.savez") from None


def read_npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from a .npy stream positioned at its magic string."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def read_member(path: Path, key: str, out: np.ndarray | None = None) -> np.ndarray:
    """One array from an uncompressed .npz, read straight into ``out`` when its shape and dtype match.

    Reading into a preallocated array with one ``readinto`` skips numpy's zip copies;
    this is what keeps 181 full-size subjects (~380 MB) at about a second.
    """
    with open(path, "rb") as raw:
        try:
            with zipfile.ZipFile(raw) as z:
                info = z.getinfo(f"{key}.npy")
        except (KeyError, zipfile.BadZipFile) as e:
            raise DatasetError(f"{path}: cannot read array {key!r} ({e}); rewrite the file") from None
        if info.compress_type != zipfile.ZIP_STORED:
            with np.load(path) as z:  # compressed (numpy.savez_compressed): slower, still correct
                arr = z[key]
        else:
            # The member's data begins after its local header (30 bytes + name + extra field).
            raw.seek(info.header_offset)
            local = raw.read(30)
            name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            shape, fortran, dtype = read_npy_header(raw)
            if out is not None and out.shape == shape and out.dtype == dtype and not fortran and out.flags.c_contiguous:
                if raw.readinto(memoryview(out).cast("B")) != out.nbytes:
                    raise DatasetError(f"{path}: array {key!r} is truncated; rewrite the file")
                return out
            arr = np.fromfile(raw, dtype, count=int(np.prod(shape))).reshape(shape, order="F" if fortran else "C")
    if out is None:
        return arr
    if arr.shape != out.shape:
        raise DatasetError(f"{path}: array {key!r} has shape {arr.shape}, expected {out.shape}; rewrite the file")
    out[...] = arr
    return out


# ----------------------------------------------------------------------------- resampling


def resample(x: np.ndarray, y: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize features (area down, bilinear up) and labels (nearest) to ``size`` = (rows, cols)."""
    import torch  # deferred: only resampling needs it here
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    mode = "area" if size[0] <= h and size[1] <= w else "bilinear"
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    xt = F.interpolate(torch.from_numpy(x), size=size, mode=mode, **kwargs)
    # Nearest sampling at pixel centres keeps labels 0/1 and never invents a label.
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return xt.numpy(), np.ascontiguousarray(y[:, :, rows][:, :, :, cols])


