"""Segmenter registry and the compact U-Net: shapes for any size, padding, parameter counts."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ielstudio.core import models
from ielstudio.core.models import ARCHITECTURES, UNet, build_model, count_parameters


def test_unet_any_size_returns_input_size():
    torch.manual_seed(0)
    net = UNet(3, 4, width=4, depth=3).eval()
    assert net.size_multiple == 8
    for h, w in [(37, 45), (8, 8), (3, 5), (64, 1)]:
        with torch.no_grad():
            out = net(torch.rand(2, 3, h, w))
        assert out.shape == (2, 4, h, w)
        assert torch.isfinite(out).all()


def test_unet_reflect_pads_bottom_right_and_crops():
    torch.manual_seed(0)
    net = UNet(1, 2, width=4, depth=2).eval()
    x = torch.rand(1, 1, 13, 10)
    with torch.no_grad():
        out = net(x)
        padded = F.pad(x, (0, 2, 0, 3), mode="reflect")  # to 16 x 12
        ref = net(padded)
    assert padded.shape[-2:] == (16, 12)
    torch.testing.assert_close(out, ref[..., :13, :10], rtol=0, atol=0)


def test_unet_parameter_count_exact():
    # stem 1->4: 36+8+144+8 = 196; down 4->8: 288+16+576+16 = 896; up convT 8->4: 128+4 = 132;
    # dec 8->4: 288+8+144+8 = 448; head 4->2: 8+2 = 10  => 1682
    net = UNet(1, 2, width=4, depth=1)
    assert count_parameters(net) == 1682
    net.head.weight.requires_grad_(False)
    assert count_parameters(net) == 1682 - 8
    assert count_parameters(net, trainable_only=False) == 1682


def test_block_factory_is_used_at_every_level():
    calls = []

    def factory(c_in, c_out):
        calls.append((c_in, c_out))
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU())

    net = UNet(2, 3, width=8, depth=2, block_factory=factory)
    assert calls == [(2, 8), (8, 16), (16, 32), (32, 16), (16, 8)]
    assert net(torch.rand(1, 2, 20, 20)).shape == (1, 3, 20, 20)


def test_build_model_registry_and_errors():
    net = build_model("unet", 1, 3, width=4, depth=2)
    assert isinstance(net, UNet) and net.n_classes == 3 and net.size_multiple == 4
    assert net.model_spec == {"arch": "unet", "in_channels": 1, "n_classes": 3, "kw": {"width": 4, "depth": 2}}
    assert set(ARCHITECTURES) == {"unet", "parabolic", "hamiltonian", "second-order", "pdegcnn"}
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*unet"):
        build_model("resnet", 1, 2)


def test_missing_backbone_module_gives_clear_error(monkeypatch):
    monkeypatch.setitem(ARCHITECTURES, "ghost", models._lazy("no_such_backbone", "build", "x"))
    with pytest.raises(ImportError, match="architecture 'ghost' needs ielstudio.core.models.no_such_backbone.build"):
        build_model("ghost", 1, 2)


@pytest.mark.parametrize("arch", ["parabolic", "hamiltonian", "second-order", "pdegcnn"])
def test_pde_backbones_when_present(arch):
    module = "pdegcnn" if arch == "pdegcnn" else "pde_unet"
    if importlib.util.find_spec(f"ielstudio.core.models.{module}") is None:
        pytest.skip(f"{module} not written yet")
    torch.manual_seed(0)
    net = build_model(arch, 1, 2, width=4, depth=2)
    with torch.no_grad():
        out = net(torch.rand(1, 1, 19, 21))
    assert out.shape == (1, 2, 19, 21)


# ------------------------------------------------------------------ hostile input (issue 19)

@pytest.mark.parametrize("arch,kw,match", [
    ("unet", {"width": 4_000_000}, "width 4000000"),
    ("unet", {"depth": 40}, "depth 40"),
    ("unet", {"width": 0}, "width 0"),
    ("unet", {"width": 256, "depth": 5}, "8192 channels"),
    ("unet", {"width": 16.5}, "must be an integer"),
    ("pdegcnn", {"orientations": 100_000}, "orientations"),
    ("pdegcnn", {"layers": 10_000}, "layers"),
])
def test_build_model_refuses_sizes_beyond_the_limits(arch, kw, match):
    with pytest.raises(ValueError, match=match):
        build_model(arch, 1, 2, **kw)


def test_build_model_bounds_channels_and_classes():
    with pytest.raises(ValueError, match="in_channels"):
        build_model("unet", 10_000, 2)
    with pytest.raises(ValueError, match="n_classes"):
        build_model("unet", 1, 10**6)
    assert models.MODEL_LIMITS["width"] >= 64 and models.MAX_MODEL_CHANNELS >= 16 * 2**3
    build_model("unet", 3, models.MODEL_LIMITS["n_classes"], width=4, depth=1)  # at the limit: fine


def test_crafted_checkpoint_with_a_huge_model_is_refused_without_allocating(tmp_path):
    from ielstudio.core.errors import DataError
    from ielstudio.core.training import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, TrainConfig, load_checkpoint

    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": TrainConfig().to_dict(),
               "model": {"arch": "unet", "in_channels": 1, "n_classes": 2, "kw": {"width": 4_000_000, "depth": 3}},
               "state_dict": {}, "meta": {}}
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(DataError, match="width 4000000"):
        load_checkpoint(tmp_path / "evil.pt")
