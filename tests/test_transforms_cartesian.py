"""CartesianTransform on the toy and particle systems."""

from __future__ import annotations

import pytest
import torch

import openmm_bg.systems as bgs
from openmm_bg.transforms import CartesianTransform


def _data(ms, n=200, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, ms.n_atoms, 3, generator=g, dtype=torch.float64)
    x = torch.as_tensor(ms.positions) + scale * noise
    x[..., 0] *= 2.0  # anisotropic, correlated data
    x[..., 1] += 0.5 * x[..., 0]
    return x


@pytest.mark.parametrize("name, n_dof", [("double_well", 2), ("mueller_brown", 2), ("dimer_in_solvent", 76)])
def test_free_dims_round_trip_and_log_det(name, n_dof):
    ms = bgs.load(name)
    data = _data(ms)
    t = CartesianTransform.from_system(ms, data)
    assert t.n_dof == n_dof and not t.circular_mask.any() and t.dims.unbounded_mask.all()
    y, ld_inv = t.inverse(data[:10])
    x, ld_fwd = t.forward(y)
    free = torch.as_tensor(ms.free_dims)
    assert torch.allclose(x[:, free], data[:10][:, free], atol=1e-10)
    assert (x[:, ~free] == 0).all(), "confined z is set to 0"
    assert torch.allclose(ld_inv + ld_fwd, torch.zeros(10, dtype=torch.float64))
    jac = torch.autograd.functional.jacobian(lambda yy: t.forward(yy[None])[0][0][free], y[0])
    assert jac.shape == (n_dof, n_dof)
    assert torch.linalg.slogdet(jac)[1].item() == pytest.approx(ld_fwd[0].item(), abs=1e-9)
    # whitened training data: zero mean, unit covariance
    yd, _ = t.inverse(data)
    assert yd.mean(0).abs().max() < 1e-8
    if n_dof < len(data):
        assert torch.allclose(torch.cov(yd.T), torch.eye(n_dof, dtype=torch.float64), atol=1e-2)  # ridge


def test_identity_without_data_and_float32():
    ms = bgs.load("mueller_brown")
    t = CartesianTransform.from_system(ms)
    x = torch.tensor([[[0.3, -0.2, 0.7]]])
    y, ld = t.inverse(x)
    assert y.dtype == torch.float32 and torch.equal(y, torch.tensor([[0.3, -0.2]])) and ld.item() == 0.0
    x2, _ = t.forward(y)
    assert torch.equal(x2, torch.tensor([[[0.3, -0.2, 0.0]]]))


def test_all_dims_free_and_shape_errors():
    t = CartesianTransform(2, _data(bgs.load("double_well"), n=50).repeat(1, 2, 1))
    assert t.n_dof == 6
    with pytest.raises(ValueError, match=r"\[batch, 6\]"):
        t.forward(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="shape"):
        CartesianTransform(2, free_dims=[[True, True, False]])
