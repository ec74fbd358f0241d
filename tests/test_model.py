"""The U-Net of the published method: parameter counts, shapes, local-only ImageNet weights."""

from __future__ import annotations

import pytest
import torch
import torchvision

from autolabel.model import (
    WEIGHT_FILES,
    ModelError,
    adapt_first_conv,
    build_model,
    count_parameters,
)


@pytest.mark.parametrize("base_model, expected", [("resnet18", 17_850_371), ("resnet34", 27_965_955)])
def test_parameter_count_matches_the_published_model(base_model, expected):
    assert count_parameters(build_model(base_model, feature_count=14, segment_count=3)) == expected


def test_output_is_one_logit_per_label_at_input_resolution():
    model = build_model("resnet18", feature_count=7, segment_count=5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 7, 32, 64))
    assert out.shape == (2, 5, 32, 64)
    first = model.encoder.stem[0]
    assert (first.in_channels, first.kernel_size, first.stride, first.padding, first.bias) == (7, (7, 7), (2, 2), (3, 3), None)


def test_unknown_base_model_is_refused():
    with pytest.raises(ModelError, match="resnet50.*resnet18, resnet34"):
        build_model("resnet50", 14, 3)


def test_missing_pretrained_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOLABEL_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(ModelError) as err:
        build_model("resnet18", 14, 3, pretrained=True)
    message = str(err.value)
    assert str(tmp_path / "weights" / "resnet18-f37072fd.pth") in message
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message


def test_pretrained_weights_load_from_a_local_file(tmp_path, monkeypatch):
    # A real torchvision state dict in torchvision's file name stands in for the ImageNet file.
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(reference, tmp_path / WEIGHT_FILES["resnet18"])
    monkeypatch.setenv("AUTOLABEL_WEIGHTS", str(tmp_path))
    model = build_model("resnet18", 14, 3, pretrained=True)
    assert torch.equal(model.encoder.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
    assert torch.equal(model.encoder.stem[1].running_var, reference["bn1.running_var"])
    expected = adapt_first_conv(reference["conv1.weight"], 14)
    assert torch.equal(model.encoder.stem[0].weight, expected)


def test_first_conv_adaptation_keeps_the_response_to_a_uniform_input():
    rgb = torch.randn(64, 3, 7, 7)
    adapted = adapt_first_conv(rgb, 14)
    assert adapted.shape == (64, 14, 7, 7)
    torch.testing.assert_close(adapted.sum(dim=1), rgb.sum(dim=1))
