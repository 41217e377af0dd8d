"""The fixed standardisation layer: exact inverse, log-det, wrapping on the circle."""

import torch

from openmm_bg.flows import Standardize


def test_round_trip_and_log_det_with_wrapping():
    g = torch.Generator().manual_seed(0)
    y = torch.stack([0.12 + 0.01 * torch.randn(500, generator=g, dtype=torch.float64),
                     torch.remainder(0.98 + 0.03 * torch.randn(500, generator=g, dtype=torch.float64) + 1, 2) - 1,
                     torch.rand(500, generator=g, dtype=torch.float64) * 2 - 1], 1)
    std = Standardize.fit(y, wrap_mask=[False, True, False], identity_mask=[False, False, True])
    # the wrapped dimension straddles +-1: its centre is found on the circle, its spread is small
    assert abs(abs(float(std.shift[1])) - 0.98) < 0.01 and float(std.scale[1]) < 0.05
    assert float(std.shift[2]) == 0.0 and float(std.scale[2]) == 1.0
    v, ld_inv = std.inverse(y)
    assert abs(float(v[:, 0].std()) - 1) < 0.05 and abs(float(v[:, 1].std()) - 1) < 0.05
    back, ld = std.forward(v)
    assert torch.allclose(back, y, atol=1e-12)
    assert torch.allclose(ld + ld_inv, torch.zeros(500, dtype=torch.float64))
    jac = torch.autograd.functional.jacobian(lambda t: std.forward(t[None])[0][0], v[0])
    assert torch.allclose(torch.linalg.slogdet(jac)[1], ld[0])
    assert std.in_domain(v).all()
    far = v.clone()
    far[0, 1] = 1.2 / float(std.scale[1])  # more than half a period away: not injective any more
    assert not std.in_domain(far)[0] and std.in_domain(far)[1:].all()
