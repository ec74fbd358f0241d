"""The importer on a real brain (fsaverage5 written as a FreeSurfer subject), its bad inputs, and show."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from autolabel.datasets import flatmaps
from autolabel.datasets.cohort import open_cohort
from autolabel.datasets.cortex import frame_pixels, project
from autolabel.datasets.format import missing_channels
from autolabel.datasets.fsaverage import (
    FS5_VERTICES,
    read_atlas,
    write_fsaverage5_subject,
)
from autolabel.errors import EXIT_BAD_INPUT, EXIT_NO_SPACE
from autolabel.options import FsaverageDataset, PathDataset

ROWS, COLS = 128, 256
HALF = COLS // 2


@pytest.fixture(scope="module")
def subjects_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("subjects")
    write_fsaverage5_subject(root, "fsaverage5")
    return root


@pytest.fixture(scope="module")
def imported(subjects_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("imported") / "fs5"
    assert flatmaps.main(["import", str(subjects_dir), str(out), "--rows", str(ROWS), "--cols", str(COLS)]) == 0
    return open_cohort(out)


def hemi_halves(a):
    return {"lh": a[..., :HALF], "rh": a[..., HALF:]}


def subject_arrays(cohort):
    with np.load(cohort.subject_file("fsaverage5")) as z:
        return z["features"], z["area"], z["ring"]


def test_import_writes_the_dataset_without_optional_channels(imported):
    assert imported.subjects == ["fsaverage5"]
    assert imported.image_size == (ROWS, COLS)
    assert "myelin" not in imported.channels and "prf_x" in imported.channels and "thickness" in imported.channels
    source = json.loads((imported.root / "manifest.json").read_text())["source"]
    assert source["missing_channels"] == {"fsaverage5": ["myelin", "dwi_OR", "dwi_VOF"]}
    assert missing_channels(imported.root, "anat") == []
    assert ("fsaverage5", "myelin") in missing_channels(imported.root, "full")


def test_visual_areas_are_contiguous_and_ordered(imported):
    feats, area, _ = subject_arrays(imported)
    thickness = feats[imported.channels.index("thickness")]
    for hemi, (a, th) in {h: (hemi_halves(area)[h], hemi_halves(thickness)[h]) for h in ("lh", "rh")}.items():
        # 1. Each area mostly one region. V2 and V3 are a dorsal and a ventral arm that meet only at the
        #    foveal confluence, a few fsaverage5 vertices wide: there a thin join may break (lh V3 keeps 80%).
        for k, (name, share) in enumerate((("V1", 0.95), ("V2", 0.75), ("V3", 0.75))):
            comps, n = ndimage.label(a[k])
            sizes = np.bincount(comps.ravel())[1:]
            assert sizes.max() >= share * a[k].sum(), f"{hemi} {name}: {n} regions, sizes {sorted(sizes)[-4:]}"
        # 2. V2 is what lies on V1's border, where the border meets another area.
        ring = ndimage.binary_dilation(a[0], iterations=2) & ~a[0].astype(bool)
        labelled = ring & a[1:].any(0)
        assert a[1][labelled].mean() >= 0.85, f"{hemi}: V1's border is {a[1][labelled].mean():.2f} V2"
        # 3. Striate cortex is thinner (Benson atlas V1 on fsaverage5: ~1.8 mm against ~2.0-2.1).
        v1, v2, v3 = (th[a[k].astype(bool)].mean() for k in range(3))
        assert v1 < v2 - 0.1 and v1 < v3 - 0.1, f"{hemi}: thickness V1 {v1:.2f} V2 {v2:.2f} V3 {v3:.2f}"


def test_v1_agrees_with_an_independent_rasterisation_of_the_full_atlas(imported):
    """Each pixel takes the label of the nearest of fsaverage's 163,842 atlas vertices: V1 at Dice >= 0.9.

    The importer saw only fsaverage5's 10,242 vertices and labelled pixels through its
    triangles; this reference uses the full-resolution atlas and no triangles at all.
    """
    from scipy.spatial import cKDTree

    _, area, _ = subject_arrays(imported)
    cc, rr = np.meshgrid(np.arange(HALF) + 0.5, np.arange(ROWS) + 0.5)
    centres = np.column_stack([cc.ravel(), rr.ravel()])
    for hemi, mine in hemi_halves(area[0]).items():
        atlas = read_atlas(hemi)
        uv, front = project(atlas["sphere"], hemi)
        px = frame_pixels(uv[front], hemi, ROWS, HALF)
        _, nearest = cKDTree(px).query(centres)
        theirs = (atlas["varea"][front][nearest] == 1).reshape(ROWS, HALF)
        dice = 2 * (theirs & (mine > 0)).sum() / (theirs.sum() + (mine > 0).sum())
        assert dice >= 0.9, f"{hemi}: V1 Dice {dice:.3f} against the full-resolution atlas"


def test_channels_follow_the_conventions(imported):
    feats, area, ring = subject_arrays(imported)
    prf_x = hemi_halves(feats[imported.channels.index("prf_x")])
    v1 = hemi_halves(area[0].astype(bool))
    # Each hemisphere maps the opposite visual field.
    assert (prf_x["lh"][v1["lh"]] > 0).mean() > 0.95 and (prf_x["rh"][v1["rh"]] < 0).mean() > 0.95
    # Rings lie within V1-V3 and within 7 degrees.
    assert not (ring.any(0) & ~area.any(0)).any()
    assert ring.sum() > 0.2 * area.sum()


def test_show_draws_a_picture(imported, tmp_path):
    png = tmp_path / "fs5.png"
    assert flatmaps.main(["show", str(imported.root), "fsaverage5", "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


# ----------------------------------------------------------------------------- optional channels


def test_an_optional_channel_only_one_subject_has_is_left_out_and_named(subjects_dir, tmp_path):
    root = tmp_path / "subjects"
    for sid in ("a", "b"):
        shutil.copytree(subjects_dir / "fsaverage5", root / sid)
    for hemi in ("lh", "rh"):
        thick = nib.freesurfer.read_morph_data(str(root / "a" / "surf" / f"{hemi}.thickness"))
        nib.save(nib.MGHImage((2.0 - thick).astype(np.float32).reshape(-1, 1, 1), np.eye(4)),
                 root / "a" / "surf" / f"{hemi}.myelin.mgz")
    out = tmp_path / "out"
    assert flatmaps.main(["import", str(root), str(out), "--rows", "32", "--cols", "64"]) == 0
    assert "myelin" not in open_cohort(out).channels
    assert missing_channels(out, "t1t2") == [("b", "myelin")]
    assert missing_channels(PathDataset(path=str(out)), "t1t2") == [("b", "myelin")]
    assert ("a", "dwi_OR") in missing_channels(out, "nofn")
    assert missing_channels(FsaverageDataset(), "full") == []


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def one_subject(subjects_dir, tmp_path):
    root = tmp_path / "subjects"
    shutil.copytree(subjects_dir / "fsaverage5", root / "s1")
    return root


def run_bad(root, tmp_path, capsys, *extra):
    out = tmp_path / "out"
    code = flatmaps.main(["import", str(root), str(out), "--rows", "32", "--cols", "64", *extra])
    err = capsys.readouterr().err.strip()
    assert code == EXIT_BAD_INPUT
    assert len(err.splitlines()) == 1, err
    assert not out.exists(), "a failed import left files in OUT"
    assert not list(tmp_path.glob(".out.tmp-*")), "a failed import left its temporary folder"
    return err


def test_a_missing_file_is_named(one_subject, tmp_path, capsys):
    (one_subject / "s1" / "surf" / "rh.prf_eccentricity.mgz").unlink()
    err = run_bad(one_subject, tmp_path, capsys)
    assert "subject s1" in err and "rh.prf_eccentricity.mgz" in err and "missing" in err


def test_a_map_with_the_wrong_vertex_count_is_named(one_subject, tmp_path, capsys):
    nib.save(nib.MGHImage(np.zeros((FS5_VERTICES - 2, 1, 1), np.float32), np.eye(4)),
             one_subject / "s1" / "surf" / "lh.prf_radius.mgz")
    err = run_bad(one_subject, tmp_path, capsys)
    assert "subject s1" in err and "lh.prf_radius.mgz" in err and f"{FS5_VERTICES - 2} values" in err


def test_nans_are_named(one_subject, tmp_path, capsys):
    path = one_subject / "s1" / "surf" / "lh.thickness"
    thick = nib.freesurfer.read_morph_data(str(path))
    thick[100] = np.nan
    nib.freesurfer.write_morph_data(str(path), thick)
    err = run_bad(one_subject, tmp_path, capsys)
    assert "subject s1" in err and "lh.thickness" in err and "NaN" in err


def test_an_unknown_subject_id_is_named(one_subject, tmp_path, capsys):
    err = run_bad(one_subject, tmp_path, capsys, "--subjects", "s1", "nobody")
    assert "subject nobody" in err and "unknown subject" in err


def test_a_bad_file_in_a_later_subject_leaves_nothing(one_subject, tmp_path, capsys):
    shutil.copytree(one_subject / "s1", one_subject / "s2")
    (one_subject / "s2" / "surf" / "lh.visual_area.mgz").unlink()
    err = run_bad(one_subject, tmp_path, capsys)
    assert "subject s2" in err and "lh.visual_area.mgz" in err


def test_renamed_files_are_read(one_subject, tmp_path):
    surf = one_subject / "s1" / "surf"
    for hemi in ("lh", "rh"):
        (surf / f"{hemi}.prf_polar_angle.mgz").rename(surf / f"{hemi}.angle.mgz")
    out = tmp_path / "out"
    assert flatmaps.main(["import", str(one_subject), str(out), "--rows", "32", "--cols", "64",
                          "--file", "prf_polar_angle={hemi}.angle.mgz"]) == 0
    assert open_cohort(out).subjects == ["s1"]


@pytest.mark.parametrize("where", ["full", "read-only", "below-a-file"])
def test_an_out_that_cannot_be_written_is_one_line_and_leaves_nothing(one_subject, small_disk, capsys, where):
    """OUT on a full disk (exit 74, free space), on a read-only folder or below a regular file (exit 2)."""
    import subprocess

    from tests.conftest import fill

    disk = small_disk(256)
    if where == "full":
        fill(disk)
    elif where == "read-only":
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)  # as root, chmod would not stop a write
    else:
        (disk / "a-file").write_text("not a folder")
    out = disk / "a-file" / "out" if where == "below-a-file" else disk / "out"
    code = flatmaps.main(["import", str(one_subject), str(out), "--rows", "32", "--cols", "64"])
    err = capsys.readouterr().err.strip()
    assert code == (EXIT_NO_SPACE if where == "full" else EXIT_BAD_INPUT)
    assert len(err.splitlines()) == 1 and "Traceback" not in err and str(out) in err, err
    assert ("disk full" in err) == (where == "full")
    assert not out.exists() and not list(disk.glob(".out.tmp-*")), "a failed import left files"
