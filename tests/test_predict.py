"""python -m autolabel.predict on a real brain: fsaverage5 as a FreeSurfer subject, labelled by cells
trained here on the fsaverage cohort; its outputs, its surface Dice, the round trip through the
importer, the far side of the sphere, ensembles, and every bad input of issue 21."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage

from autolabel.datasets import flatmaps
from autolabel.datasets.cohort import open_cohort
from autolabel.datasets.cortex import HEMIS, lay_out, sample_labels
from autolabel.datasets.fsaverage import (
    FS5_VERTICES,
    read_atlas,
    write_fsaverage5_subject,
)
from autolabel.errors import EXIT_BAD_INPUT
from autolabel.predict import command as predict
from autolabel.predict.models import load_ensemble
from autolabel.predict.vertices import choose_labels, vertex_probabilities
from tests.conftest import FSAVERAGE_PAIR_DATASET, built_once, train_quietly

ROWS, COLS = FSAVERAGE_PAIR_DATASET["rows"], FSAVERAGE_PAIR_DATASET["cols"]  # the main model's images
TRUTH = "{hemi}.visual_area_7deg.mgz"  # the atlas's V1-V3 within 7 degrees: the fsaverage cohort's labels
# The main model is the anat cell of the session's fsaverage pair (tests/conftest.py; the science
# check's): 32 subjects, 2+1 epochs at batch 2.
TINY = {"kind": "fsaverage", "subjects": 16, "rows": 32, "cols": 64}  # an epoch: ~1.7 s on one core
# The ensemble's second model sees images of another size than the main one (two members agree on
# vertices, not pixels): 8 subjects at 64x128, one epoch.
SMALL_BIG = {"kind": "fsaverage", "subjects": 8, "rows": 64, "cols": 128}
TINY_PLAN = [{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 1}]
# Rings are harder: after 3 epochs this model labels E0 and E4 (55-98 vertices each on fsaverage5).
RING_PLAN = [{"lr": 0.003, "bce_weight": 0.75, "num_epochs": 3}]


# ----------------------------------------------------------------------------- fixtures


def save_mgz(path: Path, values: np.ndarray) -> None:
    nib.save(nib.MGHImage(np.asarray(values, np.float32).reshape(-1, 1, 1), np.eye(4)), path)


def read_mgz(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def subjects_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("subjects")
    write_fsaverage5_subject(root, "fsaverage5")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory, fsaverage_pair) -> dict[str, Path]:
    """Real cells trained on the fsaverage cohort: the main anat-area model (the fsaverage pair's)
    and three tiny ones (trained once for both test workers; the tests only read them)."""
    cells = {
        "small": ({"inputs": "anat", "prediction": "area", "dataset": SMALL_BIG}, TINY_PLAN),
        "ring": ({"inputs": "anat", "prediction": "ring", "dataset": TINY}, RING_PLAN),
        "t1t2": ({"inputs": "t1t2", "prediction": "area", "dataset": TINY}, TINY_PLAN),
    }
    root = built_once(tmp_path_factory, "predict-models", lambda root: train_quietly(cells, root))
    return {"main": fsaverage_pair["anat"] / "model.pt"} | {name: root / name / "model.pt" for name in cells}


def run(*args) -> tuple[int, str, str]:
    """predict.main in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = predict.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def labelled(subjects_dir, models, tmp_path_factory) -> tuple[Path, str]:
    """The main model's labels of fsaverage5 in OUT, with --truth and --probabilities; (OUT, stdout)."""
    out = tmp_path_factory.mktemp("labelled") / "out"
    code, stdout, stderr = run(subjects_dir, "--model", models["main"], "--out", out, "--truth", TRUTH,
                               "--probabilities")
    assert code == 0, stderr
    return out, stdout


def codes_of(out: Path, hemi: str, name: str = "autolabel_varea") -> np.ndarray:
    return read_mgz(out / "fsaverage5" / "surf" / f"{hemi}.{name}.mgz").ravel()


def truth_of(subjects_dir: Path, hemi: str) -> np.ndarray:
    return read_mgz(subjects_dir / "fsaverage5" / "surf" / TRUTH.format(hemi=hemi)).ravel().astype(int)


# ----------------------------------------------------------------------------- outputs


def test_each_hemisphere_gets_one_int32_code_per_vertex_and_its_probabilities(labelled):
    out, _ = labelled
    for hemi in HEMIS:
        img = nib.load(out / "fsaverage5" / "surf" / f"{hemi}.autolabel_varea.mgz")
        assert img.get_data_dtype() == np.dtype(">i4") and img.shape == (FS5_VERTICES, 1, 1)
        codes = np.asarray(img.dataobj).ravel()
        assert set(np.unique(codes)) == {0, 1, 2, 3}, np.unique(codes)
        prob = read_mgz(out / "fsaverage5" / "surf" / f"{hemi}.autolabel_varea_probabilities.mgz")
        assert prob.shape == (FS5_VERTICES, 1, 1, 3) and prob.dtype.kind == "f" and prob.dtype.itemsize == 4
        assert prob.min() >= 0 and prob.max() <= 1
        np.testing.assert_array_equal(choose_labels(prob[:, 0, 0, :], axis=1), codes)
    assert (out / "fsaverage5" / "label" / "autolabel_varea.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_annotations_read_back_with_their_names_and_distinct_colours(labelled):
    out, _ = labelled
    for hemi in HEMIS:
        labels, ctab, names = nib.freesurfer.read_annot(str(out / "fsaverage5" / "label" / f"{hemi}.autolabel_varea.annot"))
        assert [n.decode() for n in names] == ["none", "V1", "V2", "V3"]
        np.testing.assert_array_equal(labels, codes_of(out, hemi))
        assert len({tuple(c) for c in ctab[:, :3]}) == 4
        assert tuple(ctab[1, :3]) == (220, 30, 30)  # V1 red: the area table, not the ring one


def test_v1_surface_dice_is_clearly_above_chance(labelled, subjects_dir, capsys):
    out, _ = labelled
    for hemi in HEMIS:
        pred, truth = codes_of(out, hemi), truth_of(subjects_dir, hemi)
        layout = lay_out(*read_faces_and_sphere(subjects_dir, hemi), hemi, ROWS, COLS // 2)
        # Chance: the same number of V1 vertices, placed at random among the vertices in the image.
        n = int(layout.front.sum())
        p, t = (pred == 1).sum(), (truth == 1).sum()
        chance = 2 * p * t / n / (p + t)
        dice = 2 * ((pred == 1) & (truth == 1)).sum() / (p + t)
        with capsys.disabled():
            print(f"\n{hemi}: V1 surface Dice {dice:.3f}, chance {chance:.3f}")
        assert dice >= 0.7 and dice >= chance + 0.5


def read_faces_and_sphere(subjects_dir: Path, hemi: str):
    sphere, faces = nib.freesurfer.read_geometry(str(subjects_dir / "fsaverage5" / "surf" / f"{hemi}.sphere.reg"))
    return sphere.astype(np.float64), faces.astype(np.int64)


def test_dice_csv_agrees_with_an_independent_dice_and_the_printed_means(labelled, subjects_dir):
    out, stdout = labelled
    lines = (out / "dice.csv").read_text().splitlines()
    assert lines[0].split(",")[:4] == ["subject", "hemisphere", "label", "dice"]
    rows = [dict(zip(lines[0].split(","), line.split(","))) for line in lines[1:]]
    assert len(rows) == 6
    mine = {}
    for hemi in HEMIS:
        pred, truth = codes_of(out, hemi), truth_of(subjects_dir, hemi)
        for k, name in enumerate(("V1", "V2", "V3"), 1):
            both = np.logical_and(pred == k, truth == k).sum()
            mine[hemi, name] = 2.0 * both / (np.count_nonzero(pred == k) + np.count_nonzero(truth == k))
    for row in rows:
        assert row["subject"] == "fsaverage5"
        assert float(row["dice"]) == pytest.approx(mine[row["hemisphere"], row["label"]], abs=1e-6)
    means = {name: np.mean([mine[h, name] for h in HEMIS]) for name in ("V1", "V2", "V3")}
    assert f"V1 {means['V1']:.3f}, V2 {means['V2']:.3f}, V3 {means['V3']:.3f}" in stdout


# ----------------------------------------------------------------------------- the round trip


def model_image_codes(models, subjects_dir, tmp_path) -> np.ndarray:
    """The main model's own image-space prediction of fsaverage5: imported, read back, run, labelled per pixel."""
    assert flatmaps.main(["import", str(subjects_dir), str(tmp_path / "image"), "--rows", str(ROWS), "--cols",
                          str(COLS)]) == 0
    x, _ = open_cohort(tmp_path / "image").arrays(["fsaverage5"], "anat", "area")
    member = load_ensemble([models["main"]], torch.device("cpu")).members[0]
    return choose_labels(member.probabilities(x)[0])


def test_surface_labels_imported_again_give_back_the_models_image(labelled, models, subjects_dir, tmp_path, capsys):
    """The vertex step inverts the importer's rasteriser up to what fsaverage5's mesh can hold (about 760
    vertices in each 32x32 half-image: 1.3 pixels per vertex, a border bends only at vertices)."""
    out, _ = labelled
    image = model_image_codes(models, subjects_dir, tmp_path)
    # The predicted labels, imported as the subject's visual_area.
    surf = out / "fsaverage5" / "surf"
    root = tmp_path / "again"
    shutil.copytree(subjects_dir / "fsaverage5", root / "fsaverage5")
    for hemi in HEMIS:
        shutil.copy(surf / f"{hemi}.autolabel_varea.mgz", root / "fsaverage5" / "surf")
    assert flatmaps.main(["import", str(root), str(tmp_path / "back"), "--rows", str(ROWS), "--cols", str(COLS),
                          "--file", "visual_area={hemi}.autolabel_varea.mgz"]) == 0
    _, y = open_cohort(tmp_path / "back").arrays(["fsaverage5"], "anat", "area")
    back = np.where(y[0].any(0), y[0].argmax(0) + 1, 0)
    dice = [2 * ((back == k) & (image == k)).sum() / ((back == k).sum() + (image == k).sum()) for k in (1, 2, 3)]
    # What is lost lies on the borders: pixels a triangle of the mesh cannot split as the image does.
    border = ndimage.morphological_gradient(image, size=3) > 0
    off = back != image
    near = (ndimage.distance_transform_edt(~border)[off] <= 1).mean()
    with capsys.disabled():
        print(f"\nround trip: Dice V1 {dice[0]:.3f} V2 {dice[1]:.3f} V3 {dice[2]:.3f}, mean {np.mean(dice):.3f}; "
              f"pixels agree {1 - off.mean():.3f}, {near:.0%} of the others within 1 px of a border")
    assert dice[0] >= 0.93 and np.mean(dice) >= 0.88
    assert near >= 0.8


def test_on_a_dense_mesh_the_round_trip_loses_far_less(models, subjects_dir, tmp_path, capsys):
    """The same image read back through full-resolution fsaverage's sphere (163,842 vertices, ~3 per pixel
    here, as a FreeSurfer subject's own mesh): the loss above is fsaverage5's sparse vertices."""
    image = model_image_codes(models, subjects_dir, tmp_path)
    member = load_ensemble([models["main"]], torch.device("cpu")).members[0]
    x, _ = open_cohort(tmp_path / "image").arrays(["fsaverage5"], "anat", "area")
    prob = member.probabilities(x)[0]
    atlas = {hemi: read_atlas(hemi) for hemi in HEMIS}  # fsaverage's registered sphere and mesh
    layouts = {hemi: lay_out(a["sphere"], a["faces"], hemi, ROWS, COLS // 2) for hemi, a in atlas.items()}
    halves = []
    for hemi, vertex_prob in vertex_probabilities(prob, layouts).items():
        onehot = sample_labels(layouts[hemi].raster, atlas[hemi]["faces"], choose_labels(vertex_prob, axis=1), 3)
        halves.append(np.where(onehot.any(0), onehot.argmax(0) + 1, 0))
    back = np.concatenate(halves, axis=1)
    dice = [2 * ((back == k) & (image == k)).sum() / ((back == k).sum() + (image == k).sum()) for k in (1, 2, 3)]
    with capsys.disabled():
        print(f"\ndense round trip: Dice V1 {dice[0]:.3f} V2 {dice[1]:.3f} V3 {dice[2]:.3f}")
    # V2, the thinnest band (a few pixels across at this size), has the most border per pixel.
    assert min(dice) >= 0.94 and np.mean(dice) >= 0.96


def test_vertices_on_the_far_side_of_the_sphere_are_not_labelled(labelled, models, subjects_dir, tmp_path):
    out, _ = labelled
    image = model_image_codes(models, subjects_dir, tmp_path)
    halves = {"lh": image[:, : COLS // 2], "rh": image[:, COLS // 2 :]}
    landed_on_labels = 0
    for hemi in HEMIS:
        layout = lay_out(*read_faces_and_sphere(subjects_dir, hemi), hemi, ROWS, COLS // 2)
        col, row = layout.px[:, 0], layout.px[:, 1]
        far = ~layout.front & (col >= 0) & (col < COLS // 2) & (row >= 0) & (row < ROWS)
        assert far.sum() > 100  # the far side lands on the same pixels as the near side
        under = halves[hemi][row[far].astype(int), col[far].astype(int)]
        landed_on_labels += int((under > 0).sum())
        assert (codes_of(out, hemi)[far] == 0).all()
        prob = read_mgz(out / "fsaverage5" / "surf" / f"{hemi}.autolabel_varea_probabilities.mgz")
        assert (prob[far] == 0).all()
    assert landed_on_labels > 0, "no far-side vertex lands on a labelled pixel: the test could not fail"


# ----------------------------------------------------------------------------- ensembles, rings, placement


def test_an_ensemble_averages_the_probabilities_of_its_models(labelled, models, subjects_dir, tmp_path):
    out, _ = labelled
    code, _, err = run(subjects_dir, "--model", models["small"], "--out", tmp_path / "small", "--probabilities")
    assert code == 0, err
    code, _, err = run(subjects_dir, "--model", models["main"], "--model", models["small"], "--out",
                       tmp_path / "both", "--probabilities", "--tag", "ens")
    assert code == 0, err
    for hemi in HEMIS:
        main = read_mgz(out / "fsaverage5" / "surf" / f"{hemi}.autolabel_varea_probabilities.mgz")
        small = read_mgz(tmp_path / "small" / "fsaverage5" / "surf" / f"{hemi}.autolabel_varea_probabilities.mgz")
        both = read_mgz(tmp_path / "both" / "fsaverage5" / "surf" / f"{hemi}.ens_varea_probabilities.mgz")
        assert not np.allclose(main, small, atol=0.05)  # two different models (32x64 and 64x128)
        np.testing.assert_allclose(both, (main + small) / 2, atol=1e-6)
        codes = codes_of(tmp_path / "both", hemi, "ens_varea")
        np.testing.assert_array_equal(codes, choose_labels(both[:, 0, 0, :], axis=1))


def test_a_ring_model_writes_rings_with_their_own_names_and_colours(models, subjects_dir, tmp_path):
    code, _, err = run(subjects_dir, "--model", models["ring"], "--out", tmp_path)
    assert code == 0, err
    for hemi in HEMIS:
        codes = codes_of(tmp_path, hemi, "autolabel_vring")
        assert codes.shape == (FS5_VERTICES,) and set(np.unique(codes)) <= set(range(6)) and codes.max() > 0
        labels, ctab, names = nib.freesurfer.read_annot(str(tmp_path / "fsaverage5" / "label" / f"{hemi}.autolabel_vring.annot"))
        assert [n.decode() for n in names] == ["none", "E0", "E1", "E2", "E3", "E4"]
        assert len({tuple(c) for c in ctab[:, :3]}) == 6 and tuple(ctab[1, :3]) != (220, 30, 30)
        np.testing.assert_array_equal(labels, codes)


def test_an_anat_model_from_a_best_folder_labels_a_subject_without_prf_maps_in_place(models, subjects_dir, tmp_path):
    """No --out: the subject's own surf/ and label/; a second run is refused without --force."""
    # A grid's layout: best/<stratum>/best.json names a cell under cells/ (flows/summary.py).
    cell = tmp_path / "grid" / "cells" / "0123456789abcdef"
    cell.mkdir(parents=True)
    shutil.copy(models["small"], cell / "model.pt")
    best = tmp_path / "grid" / "best" / "anat-area"
    best.mkdir(parents=True)
    (best / "best.json").write_text(json.dumps({"stratum": "anat-area", "id": cell.name}))
    root = tmp_path / "subjects"
    shutil.copytree(subjects_dir / "fsaverage5", root / "s1")
    for path in (root / "s1" / "surf").glob("*.mgz"):
        path.unlink()  # no pRF maps, no labels
    code, stdout, err = run(root, "--model", best)
    assert code == 0, err
    assert (root / "s1" / "surf" / "lh.autolabel_varea.mgz").is_file()
    assert (root / "s1" / "label" / "rh.autolabel_varea.annot").is_file()
    assert (root / "s1" / "label" / "autolabel_varea.png").is_file()
    stamp = (root / "s1" / "surf" / "lh.autolabel_varea.mgz").stat().st_mtime_ns
    code, _, err = run(root, "--model", best)
    assert code == EXIT_BAD_INPUT and "exists" in err and "--force" in err
    assert (root / "s1" / "surf" / "lh.autolabel_varea.mgz").stat().st_mtime_ns == stamp
    assert run(root, "--model", best, "--force")[0] == 0
    assert not list(root.rglob(".*.tmp")), "an atomic write left its temporary file"


def test_renamed_files_are_read_with_file_overrides(models, subjects_dir, tmp_path):
    root = tmp_path / "subjects"
    shutil.copytree(subjects_dir / "fsaverage5", root / "s1")
    for hemi in HEMIS:
        (root / "s1" / "surf" / f"{hemi}.curv").rename(root / "s1" / "surf" / f"{hemi}.curvature")
    err = run_bad(root, "--model", models["small"], "--out", tmp_path / "refused")
    assert "lh.curv: missing" in err and "--file curv=TEMPLATE" in err
    code, _, err = run(root, "--model", models["small"], "--out", tmp_path / "out", "--file", "curv={hemi}.curvature")
    assert code == 0, err
    assert (tmp_path / "out" / "s1" / "surf" / "lh.autolabel_varea.mgz").is_file()


# ----------------------------------------------------------------------------- bad input


@pytest.fixture
def one_subject(subjects_dir, tmp_path) -> Path:
    root = tmp_path / "subjects"
    shutil.copytree(subjects_dir / "fsaverage5", root / "s1")
    return root


def run_bad(*args) -> str:
    """A run that must refuse: exit 2, one line on stderr, and nothing written."""
    args = [str(a) for a in args]
    out = Path(args[args.index("--out") + 1]) if "--out" in args else None
    code, _, err = run(*args)
    assert code == EXIT_BAD_INPUT, err
    assert len(err.strip().splitlines()) == 1, err
    assert out is None or not out.exists(), "a refused run wrote files"
    return err


def test_a_model_needing_a_channel_the_subject_lacks_names_it(models, one_subject, tmp_path):
    err = run_bad(one_subject, "--model", models["t1t2"], "--out", tmp_path / "out")
    assert "subject s1" in err and "lh.myelin.mgz" in err and "myelin" in err and "'anat' model needs none" in err


def test_a_path_that_is_no_model_is_named(one_subject, tmp_path):
    (tmp_path / "model.pt").write_text("not a model")
    err = run_bad(one_subject, "--model", tmp_path / "model.pt", "--out", tmp_path / "out")
    assert str(tmp_path / "model.pt") in err and "not a model.pt" in err
    (tmp_path / "empty").mkdir()
    err = run_bad(one_subject, "--model", tmp_path / "empty", "--out", tmp_path / "out")
    assert str(tmp_path / "empty") in err and "no model here" in err


def test_models_that_disagree_are_refused(models, one_subject, tmp_path):
    err = run_bad(one_subject, "--model", models["small"], "--model", models["ring"], "--out", tmp_path / "out")
    assert str(models["ring"]) in err and "'ring'" in err and "one prediction" in err
    err = run_bad(one_subject, "--model", models["small"], "--model", models["t1t2"], "--out", tmp_path / "out")
    assert str(models["t1t2"]) in err and "'t1t2'" in err and "one input set" in err


def test_an_unknown_subject_id_is_named(models, one_subject, tmp_path):
    err = run_bad(one_subject, "--model", models["small"], "--subjects", "s1", "nobody", "--out", tmp_path / "out")
    assert "subject nobody" in err and "unknown subject" in err


def test_a_map_whose_vertex_count_differs_from_the_surfaces_is_named(models, one_subject, tmp_path):
    nib.freesurfer.write_morph_data(str(one_subject / "s1" / "surf" / "lh.curv"), np.zeros(FS5_VERTICES - 2, np.float32))
    err = run_bad(one_subject, "--model", models["small"], "--out", tmp_path / "out")
    assert "subject s1" in err and "lh.curv" in err and f"{FS5_VERTICES - 2} values" in err


def test_truth_with_codes_outside_the_prediction_is_named(models, one_subject, tmp_path):
    save_mgz(one_subject / "s1" / "surf" / "rh.bad.mgz", np.full(FS5_VERTICES, 4))
    save_mgz(one_subject / "s1" / "surf" / "lh.bad.mgz", np.zeros(FS5_VERTICES))
    err = run_bad(one_subject, "--model", models["small"], "--truth", "{hemi}.bad.mgz", "--out", tmp_path / "out")
    assert "subject s1" in err and "rh.bad.mgz" in err and "3 V3" in err


def test_one_bad_subject_in_a_batch_leaves_every_subject_unwritten(models, one_subject):
    shutil.copytree(one_subject / "s1", one_subject / "s2")
    (one_subject / "s2" / "surf" / "rh.sulc").unlink()
    before = sorted(one_subject.rglob("*"))
    err = run_bad(one_subject, "--model", models["small"])  # no --out: it would write into s1/ first
    assert "subject s2" in err and "rh.sulc" in err
    assert sorted(one_subject.rglob("*")) == before


def test_an_inflated_surface_of_another_mesh_is_named_before_anything_is_written(models, one_subject, tmp_path):
    coords, faces = nib.freesurfer.read_geometry(str(one_subject / "s1" / "surf" / "lh.inflated"))
    nib.freesurfer.write_geometry(str(one_subject / "s1" / "surf" / "lh.inflated"), coords[:-5], faces[:100])
    err = run_bad(one_subject, "--model", models["small"], "--out", tmp_path / "out")
    assert "subject s1" in err and "lh.inflated" in err and f"{FS5_VERTICES - 5} vertices" in err
