"""The pure parts of `make image-test` (deployments/image_test.py); the build itself is `make image-test`.

    .venv/bin/python -m pytest -q tests/test_image_build.py
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deployments import image_test

ROOT = Path(__file__).resolve().parents[1]


def test_torch_pins_are_the_pyprojects_and_refuse_an_unpinned_torch(tmp_path):
    assert [p.split("==")[0] for p in image_test.torch_pins()] == ["torch", "torchvision"]
    loose = tmp_path / "pyproject.toml"
    loose.write_text('[project]\nname = "x"\ndependencies = ["torch>=2", "torchvision==0.29.1"]\n')
    with pytest.raises(image_test.StageFailed, match=r"pyproject.toml.*must pin torch and torchvision"):
        image_test.torch_pins(loose)


def test_the_base_tag_follows_its_inputs():
    tag = image_test.base_tag(["torch==2.14.1", "torchvision==0.29.1"])
    assert tag.startswith(image_test.BASE_REPO + ":")
    assert tag == image_test.base_tag(["torch==2.14.1", "torchvision==0.29.1"])
    assert tag != image_test.base_tag(["torch==2.14.0", "torchvision==0.29.1"])


def test_pip_volumes_carry_the_hosts_settings_and_the_folders_they_name(tmp_path, monkeypatch):
    wheels, index = tmp_path / "wheels", tmp_path / "index"
    wheels.mkdir()
    (index / "simple").mkdir(parents=True)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{index}/simple https://example.invalid/simple")
    work = tmp_path / "work"
    work.mkdir()
    volumes = image_test.pip_volumes(work)
    conf = (work / "pip.conf").read_text()
    assert f"find-links = {wheels}\n" in conf and f"extra-index-url = file://{index}/simple " in conf
    assert all(flag == "-v" for flag in volumes[::2])
    mounts = volumes[1::2]
    assert f"{work / 'pip.conf'}:/etc/pip.conf:ro" in mounts
    # a file index is mounted with the folder above it: its pages link to ../../files/
    assert f"{wheels}:{wheels}:ro" in mounts and f"{index}:{index}:ro" in mounts
    assert not any("example.invalid" in m for m in mounts), "a remote index is not a mount"


def test_the_tiny_cell_is_valid_for_the_trainer(tmp_path):
    from autolabel.options import CellOptions, Plan

    image_test.write_tiny_cell(tmp_path)
    CellOptions.model_validate_json((tmp_path / "options.json").read_text())
    Plan.model_validate_json((tmp_path / "plan.json").read_text())
