"""PDE residual blocks (Ruthotto & Haber): negative semi-definite symmetric layer, stability,
reversibility, weight bounds, TV-in-time penalty, U-Net plumbing."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd.functional import jacobian

from ielstudio.core.models import build_model, count_parameters
from ielstudio.core.models.pde_blocks import (
    HamiltonianBlock,
    ParabolicBlock,
    PDELevelBlock,
    SecondOrderBlock,
    SymmetricLayer,
    project_pde_weights_,
    tv_in_time_penalty,
)
from ielstudio.core.models.pde_unet import build_pde_unet


def _symmetric_layer(c, activation, normalize, seed, weight_scale=0.3):
    torch.manual_seed(seed)
    layer = SymmetricLayer(c, activation=activation, normalize=normalize).double()
    with torch.no_grad():
        layer.weight.normal_(0.0, weight_scale)
        if layer.bias is not None:
            layer.bias.normal_(0.0, 0.5)  # some units active, some not
    return layer


def _jacobian(fn, y):
    n = y.numel()
    return jacobian(fn, y).reshape(n, n)


@pytest.mark.parametrize("activation", ["relu", "leaky"])
def test_symmetric_layer_jacobian_is_negative_semidefinite(activation):
    # The form the paper proves: F(Y) = -K^T sigma(K Y + b); J = -K^T diag(sigma') K.
    for seed in range(3):
        layer = _symmetric_layer(3, activation, normalize=False, seed=seed)
        y = torch.randn(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
        J = _jacobian(layer, y)
        assert torch.allclose(J, J.T, atol=1e-12)  # K^T sigma' K is symmetric
        eig = torch.linalg.eigvalsh(0.5 * (J + J.T))
        assert eig.max() <= 1e-10
        assert eig.min() < -1e-2  # not trivially zero


def test_normalised_layer_jacobian_is_nsd_only_in_the_linear_limit():
    # With N the Jacobian is -K^T D_sigma S P K / rms: symmetric NSD when sigma is the identity
    # on the active region and S = 1 (all units active, scale 1); here bias keeps every unit on.
    layer = _symmetric_layer(3, "relu", normalize=True, seed=0)
    with torch.no_grad():
        layer.norm.bias.fill_(10.0)  # relu' = 1 everywhere
    y = torch.randn(1, 3, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    J = _jacobian(layer, y)
    eig = torch.linalg.eigvalsh(0.5 * (J + J.T))
    assert eig.max() <= 1e-10 and eig.min() < -1e-2


def _operator_norm_sq(layer, shape):
    """Largest eigenvalue of K^T K (K with zero padding) and its eigenvector, from the explicit matrix."""
    k = layer.kernel().detach()
    n = shape[1] * shape[2] * shape[3]
    basis = torch.eye(n, dtype=k.dtype).view(n, *shape[1:])
    Kmat = F.conv2d(basis, k, padding=1).reshape(n, n).T  # column j = K e_j
    lam, vecs = torch.linalg.eigh(Kmat.T @ Kmat)
    v = vecs[:, -1].reshape(1, *shape[1:]).expand(shape[0], *shape[1:]).contiguous()
    return lam[-1].item(), v


@pytest.mark.parametrize("activation", ["relu", "leaky"])
def test_parabolic_step_does_not_amplify_perturbations_below_the_step_limit(activation):
    shape = (2, 4, 8, 8)
    torch.manual_seed(0)
    block = ParabolicBlock(4, steps=3, activation=activation, normalize=False).double()
    with torch.no_grad():
        for layer in block.layers:
            layer.weight.normal_(0.0, 0.3)
            layer.bias.normal_(0.0, 0.5)
    lam = max(_operator_norm_sq(layer, shape)[0] for layer in block.layers)
    block.h = 1.9 / lam  # forward Euler limit for y' = -K^T D K y with 0 <= D <= 1 is 2/lam
    g = torch.Generator().manual_seed(2)
    for scale in (1e-3, 1.0, 10.0):
        y = torch.randn(shape, dtype=torch.float64, generator=g)
        dy = scale * torch.randn(shape, dtype=torch.float64, generator=g)
        d_out = block(y + dy) - block(y)
        assert d_out.norm() <= dy.norm() * (1 + 1e-6)


def test_parabolic_step_beyond_the_limit_amplifies_by_the_predicted_factor():
    # Negative control: every unit active (sigma' = 1), h = 3/lam along the top eigenvector
    # of K^T K gives the Euler amplification |1 - h lam| = 2 exactly.
    shape = (1, 4, 8, 8)
    torch.manual_seed(0)
    block = ParabolicBlock(4, steps=1, activation="relu", normalize=False).double()
    layer = block.layers[0]
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.3)
        layer.bias.fill_(100.0)
    lam, v = _operator_norm_sq(layer, shape)
    block.h = 3.0 / lam
    y = torch.randn(shape, dtype=torch.float64)
    d_out = block(y + 1e-3 * v) - block(y)
    assert (d_out.norm() / (1e-3 * v.norm())).item() == pytest.approx(2.0, rel=1e-6)


def test_hamiltonian_block_is_reversible():
    torch.manual_seed(0)
    block = HamiltonianBlock(8, steps=3).double()
    with torch.no_grad():
        for layer in [*block.f1, *block.f2]:
            layer.weight.normal_(0.0, 0.3)
    x = torch.randn(2, 8, 12, 12, dtype=torch.float64)
    out = block(x)
    assert (out - x).abs().max() > 0.1  # the block does something
    assert torch.allclose(block.inverse(out), x, atol=1e-10, rtol=0)
    with pytest.raises(ValueError):
        HamiltonianBlock(7)


def test_second_order_block_is_reversible_from_its_last_two_states():
    torch.manual_seed(0)
    block = SecondOrderBlock(6, steps=4, h=0.7).double()
    with torch.no_grad():
        for layer in block.layers:
            layer.weight.normal_(0.0, 0.3)
    y0 = torch.randn(2, 6, 10, 10, dtype=torch.float64)
    last, before_last = block.forward_states(y0)
    assert torch.equal(last, block(y0))
    assert (last - y0).abs().max() > 0.1
    assert torch.allclose(block.inverse(last, before_last), y0, atol=1e-10, rtol=0)


def test_second_order_single_step_is_y0_plus_h2_f():
    block = SecondOrderBlock(3, steps=1, h=0.5).double()
    y0 = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    expected = y0 + 0.25 * block.layers[0](y0)  # Y_{-1} = Y_0
    assert torch.allclose(block(y0), expected, atol=1e-14)


def test_kernel_weights_stay_in_unit_box():
    torch.manual_seed(0)
    layer = SymmetricLayer(4)
    with torch.no_grad():
        layer.weight.normal_(0.0, 3.0)
    assert layer.weight.abs().max() > 1.0
    k = layer.kernel()
    assert k.min() >= -1.0 and k.max() <= 1.0
    assert torch.equal(k, layer.weight.clamp(-1, 1))
    # the forward pass uses the clamped weight
    y = torch.randn(2, 4, 7, 7)
    ref = -F.conv_transpose2d(F.relu(layer.norm(F.conv2d(y, k, padding=1))), k, padding=1)
    assert torch.allclose(layer(y), ref, atol=1e-6)
    # a few large optimiser steps followed by projection keep the stored weights in the box
    opt = torch.optim.SGD(layer.parameters(), lr=50.0)
    for _ in range(3):
        opt.zero_grad()
        layer(y).pow(2).sum().backward()
        opt.step()
        project_pde_weights_(layer)
        assert layer.weight.abs().max() <= 1.0
    assert (layer.weight.abs() == 1.0).sum() > 0  # the bound was active


def test_tv_in_time_penalty_counts_changes_between_steps():
    block = ParabolicBlock(2, steps=3)
    with torch.no_grad():
        for layer in block.layers:
            layer.weight.fill_(0.2)
    assert tv_in_time_penalty(block).item() == 0.0
    with torch.no_grad():
        block.layers[1].weight[0, 0, 1, 1] = 0.7  # +0.5 at the middle step: |0.5| + |-0.5|
    assert tv_in_time_penalty(block).item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        block.layers[1].weight[0, 0, 1, 1] = 5.0  # clamped to 1: |0.8| + |-0.8|
    assert block.tv_in_time_penalty().item() == pytest.approx(1.6, abs=1e-6)
    # a model without PDE blocks has zero penalty
    assert tv_in_time_penalty(torch.nn.Conv2d(1, 1, 3)).item() == 0.0


@pytest.mark.parametrize("kind", ["parabolic", "hamiltonian", "second-order"])
def test_level_block_and_unet(kind):
    level = PDELevelBlock(3, 8, kind)
    assert level(torch.randn(2, 3, 9, 11)).shape == (2, 8, 9, 11)
    net = build_model(kind, 1, 3, width=8, depth=2)
    x = torch.randn(2, 1, 21, 19)
    out = net(x)
    assert out.shape == (2, 3, 21, 19)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    assert tv_in_time_penalty(net).item() > 0.0  # random init: steps differ
    assert count_parameters(net) > 0


def test_hamiltonian_unet_has_fewer_weights_than_parabolic():
    p = count_parameters(build_pde_unet("parabolic", 1, 2, width=16, depth=3))
    h = count_parameters(build_pde_unet("hamiltonian", 1, 2, width=16, depth=3))
    assert h < 0.6 * p


def test_bad_block_names_raise():
    with pytest.raises(ValueError):
        build_pde_unet("elliptic", 1, 2)
    with pytest.raises(ValueError):
        PDELevelBlock(3, 7, "hamiltonian")
    with pytest.raises(ValueError):
        build_pde_unet("hamiltonian", 1, 2, width=15)
    with pytest.raises(ValueError):
        build_pde_unet("parabolic", 1, 2, steps=0)
