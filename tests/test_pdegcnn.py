"""PDE-G-CNN: exact 90-degree equivariance, morphological convolutions against a brute-force
reference, gradients to the metric parameters, kernel geometry, shapes and parameter count."""

import math

import numpy as np
import pytest
import torch

from ielstudio.core.models import build_model, count_parameters
from ielstudio.core.models.pdegcnn import (
    Convection,
    LiftConv,
    MorphologicalConv,
    build_pdegcnn,
    max_plus,
    min_plus,
    rotate_kernel,
    rotated_copies,
)


def _rot(t, k=1):
    return torch.rot90(t, k, dims=(-2, -1))


def _brute_dilation(f, K):
    """max over (m, i, j) of f[b, c, (o+m-mr) % O, y+i-r, x+j-r] - K[c, o, m, i, j]; outside = ignored."""
    B, C, O, H, W = f.shape
    M, S = K.shape[2], K.shape[3]
    mr, r = M // 2, S // 2
    out = np.full(f.shape, -np.inf)
    for b, c, o, y, x in np.ndindex(B, C, O, H, W):
        for m, i, j in np.ndindex(M, S, S):
            yy, xx = y + i - r, x + j - r
            if 0 <= yy < H and 0 <= xx < W:
                v = f[b, c, (o + m - mr) % O, yy, xx] - K[c, o, m, i, j]
                out[b, c, o, y, x] = max(out[b, c, o, y, x], v)
    return out


def _perturbed_net(seed=0, **kw):
    torch.manual_seed(seed)
    net = build_pdegcnn(1, 3, width=4, depth=1, **kw)  # 2 PDE layers
    with torch.no_grad():
        for layer in net.layers:
            layer.convection.shift.normal_(0.0, 1.0)
            layer.convection.turn.normal_(0.0, 0.7)
            layer.dilation.metric_raw.normal_(0.0, 0.5)
            layer.erosion.metric_raw.normal_(0.0, 0.5)
            layer.norm.running_mean.normal_(0.0, 0.3)
            layer.norm.running_var.uniform_(0.5, 2.0)
    return net


def test_quarter_turn_of_a_kernel_is_rot90():
    w = torch.randn(3, 2, 5, 5)
    assert torch.allclose(rotate_kernel(w, math.pi / 2), _rot(w), atol=1e-6)
    assert torch.allclose(rotate_kernel(w, math.pi), _rot(w, 2), atol=1e-6)
    copies = rotated_copies(w, 8)
    assert copies.shape == (8, 3, 2, 5, 5)
    assert torch.equal(copies[0], w)
    for k in range(6):
        assert torch.equal(copies[k + 2], _rot(copies[k]))  # exact by construction


def test_lift_rotates_space_and_shifts_orientations():
    lift = LiftConv(2, 3, orientations=8, kernel_size=5)
    x = torch.randn(2, 2, 17, 13)
    a = lift(_rot(x))
    b = torch.roll(_rot(lift(x)), 2, dims=2)
    assert a.shape == (2, 3, 8, 13, 17)
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("quarter_turns,kernel_size", [(1, 3), (2, 3), (3, 3), (1, 5)])
def test_network_is_equivariant_to_quarter_turns(quarter_turns, kernel_size):
    net = _perturbed_net(kernel_size=kernel_size).eval()
    x = torch.randn(2, 1, 20, 16)
    with torch.no_grad():
        out = net(x)
        out_rot = net(_rot(x, quarter_turns))
        feats = net.features(x)
        feats_rot = net.features(_rot(x, quarter_turns))
    assert out.shape == (2, 3, 20, 16)
    scale = out.abs().max().item()
    assert torch.allclose(out_rot, _rot(out, quarter_turns), atol=1e-5 * scale)
    expected = torch.roll(_rot(feats, quarter_turns), 2 * quarter_turns, dims=2)
    assert torch.allclose(feats_rot, expected, atol=1e-5 * feats.abs().max().item())
    # the orientation axis carries information, so the shift by 2 quarter-turn steps is checked
    assert not torch.allclose(feats, torch.roll(feats, 2, dims=2), atol=1e-2)


def test_network_in_training_mode_is_equivariant_too():
    net = _perturbed_net(seed=1).train()  # BatchNorm with batch statistics
    x = torch.randn(2, 1, 16, 16)
    out = net(x)
    out_rot = net(_rot(x))
    assert torch.allclose(out_rot, _rot(out), atol=1e-4 * out.abs().max().item())
    assert not torch.allclose(out, _rot(out), atol=1e-2)  # the test input is not symmetric


def test_convection_moves_along_the_local_frame():
    conv = Convection(1, 8)
    f = torch.zeros(1, 1, 8, 9, 9)
    f[0, 0, :, 4, 4] = 1.0
    with torch.no_grad():
        conv.shift[0] = torch.tensor([2.0, 0.0])  # two pixels along the orientation
    u = conv(f)[0, 0]
    # orientation 0 points along +x (column + 2), orientation 2 (90 deg) along +y (row - 2)
    assert u[0, 4, 6].item() == pytest.approx(1.0, abs=1e-5)
    assert u[2, 2, 4].item() == pytest.approx(1.0, abs=1e-5)
    assert u[4, 4, 2].item() == pytest.approx(1.0, abs=1e-5)
    # half a turn step: mass split equally between neighbouring orientations
    with torch.no_grad():
        conv.shift.zero_()
        conv.turn.fill_(0.5)
    u = conv(f)[0, 0, :, 4, 4]
    assert torch.allclose(u, torch.ones(8), atol=1e-5)  # every orientation had mass 1
    g = torch.zeros(1, 1, 8, 3, 3)
    g[0, 0, 7, 1, 1] = 1.0
    u = conv(g)[0, 0, :, 1, 1]
    assert u[7].item() == pytest.approx(0.5, abs=1e-6) and u[0].item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("M,S,O", [(3, 3, 4), (3, 5, 8), (1, 3, 4)])
def test_morphological_convolutions_match_brute_force(M, S, O):
    g = torch.Generator().manual_seed(M * 10 + S)
    f = torch.randn(2, 2, O, 5, 6, dtype=torch.float64, generator=g)
    K = 2 * torch.rand(2, O, M, S, S, dtype=torch.float64, generator=g)
    ref = _brute_dilation(f.numpy(), K.numpy())
    assert np.abs(max_plus(f, K).numpy() - ref).max() < 1e-12
    assert np.abs(max_plus(f, K, chunk=1).numpy() - ref).max() < 1e-12  # one row per chunk
    assert np.abs(max_plus(f, K, chunk=2 * M * S * S * 6).numpy() - ref).max() < 1e-12  # 2 of 5 rows
    ref_erosion = -_brute_dilation(-f.numpy(), K.numpy())
    assert np.abs(min_plus(f, K).numpy() - ref_erosion).max() < 1e-12


def test_morphological_module_uses_its_own_kernel():
    m = MorphologicalConv(2, 4, "erosion", kernel_size=3, orientation_size=3).double()
    f = torch.randn(1, 2, 4, 5, 5, dtype=torch.float64)
    ref = -_brute_dilation(-f.numpy(), m.kernel().detach().numpy())
    assert np.abs(m(f).detach().numpy() - ref).max() < 1e-12


def test_morphological_gradients_are_exact_away_from_ties():
    g = torch.Generator().manual_seed(3)
    f = torch.randn(1, 2, 4, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    K = torch.rand(2, 4, 3, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: max_plus(a, b, chunk=3 * 27 * 5), (f, K))  # 3 of 4 rows
    assert torch.autograd.gradcheck(lambda a, b: min_plus(a, b), (f, K))


def test_ties_pass_each_output_gradient_exactly_once():
    f = torch.zeros(1, 1, 4, 5, 5, requires_grad=True)
    K = torch.zeros(1, 4, 3, 3, 3, requires_grad=True)  # every offset ties
    out = max_plus(f, K)
    out.sum().backward()
    assert f.grad.sum().item() == out.numel()
    assert K.grad.sum().item() == -out.numel()


def test_kernel_values_follow_the_metric():
    m = MorphologicalConv(1, 8, kernel_size=5, orientation_size=3, alpha=0.65)
    beta = 1.3 / 0.3
    w1, w2, w3 = m.metric()[0].tolist()
    K = m.kernel().detach()[0]  # (O, M, S, S), centre index [., 1, 2, 2]
    assert K[0, 1, 2, 2].item() == 0.0
    # orientation 0 looks along +x: one pixel to the right is the main direction
    assert K[0, 1, 2, 3].item() == pytest.approx(w1 ** (beta / 2) / beta, rel=1e-5)
    assert K[0, 1, 1, 2].item() == pytest.approx(w2 ** (beta / 2) / beta, rel=1e-5)  # one pixel up: lateral
    # orientation 2 (90 degrees) looks up: there one pixel up is the main direction
    assert K[2, 1, 1, 2].item() == pytest.approx(w1 ** (beta / 2) / beta, rel=1e-5)
    # orientation 1 (45 degrees) looks up-right: the diagonal neighbour is sqrt(2) along the main axis
    assert K[1, 1, 1, 3].item() == pytest.approx((2 * w1) ** (beta / 2) / beta, rel=1e-5)
    assert K[1, 1, 1, 1].item() == pytest.approx((2 * w2) ** (beta / 2) / beta, rel=1e-5)
    # pure turn by one orientation step: c3 = 2 pi / 8
    assert K[0, 2, 2, 2].item() == pytest.approx((w3 * (math.pi / 4) ** 2) ** (beta / 2) / beta, rel=1e-5)
    assert w2 > w1  # elongated along the orientation at initialisation


def test_gradients_reach_metric_convection_and_lift():
    torch.manual_seed(0)
    net = build_pdegcnn(1, 2, width=4, depth=1)
    x = torch.randn(2, 1, 24, 24)
    y = (x[:, 0] > 0.3).long()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    for layer in net.layers:
        for morph in (layer.dilation, layer.erosion):
            g = morph.metric_raw.grad
            assert g is not None and (g.abs().sum(dim=0) > 0).all()  # main, lateral and angular
        assert layer.convection.shift.grad.abs().sum() > 0
        assert layer.convection.turn.grad.abs().sum() > 0
    assert net.lift.weight.grad.abs().sum() > 0


def test_shapes_parameter_count_and_registry():
    net = build_model("pdegcnn", 1, 3)  # width 16, depth 3 -> 6 PDE layers, O = 8
    per_layer = 3 * 16 + 2 * 3 * 16 + 16 * 16 + 2 * 16  # convection, metrics, mix, batch norm
    lift = 16 * 1 * 5 * 5 + 2 * 16
    assert count_parameters(net) == lift + 6 * per_layer + 16 * 3 + 3 == 3075
    small = build_pdegcnn(2, 2, width=4, depth=1)
    assert small(torch.randn(3, 2, 11, 9)).shape == (3, 2, 11, 9)
    with pytest.raises(ValueError):
        build_pdegcnn(1, 2, orientations=6)


def test_inference_path_matches_training_path_and_nan_does_not_crash():
    g = torch.Generator().manual_seed(5)
    f = torch.randn(2, 3, 4, 6, 7, generator=g)
    K = torch.rand(3, 4, 3, 3, 3, generator=g)
    with torch.no_grad():
        plain = max_plus(f, K)  # no arg-max bookkeeping
    tracked = max_plus(f.clone().requires_grad_(), K)
    assert torch.equal(plain, tracked.detach())
    f[0, 0, 0, 2, 2] = float("nan")
    f.requires_grad_()
    out = max_plus(f, K)
    out.sum().backward()  # NaN propagates, indices stay in range
    assert torch.isnan(out).any() and f.grad is not None
