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
    assert float(std.scale[2]) == 1.0
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


def test_multimodal_circular_dimension_is_rotated_so_its_gap_sits_at_the_boundary():
    # two modes, one straddling +-1 (the torsion's boundary), an empty region around -0.3..0.3 and 0.5
    g = torch.Generator().manual_seed(1)
    a = 0.99 + 0.05 * torch.randn(3000, generator=g, dtype=torch.float64)
    b = -0.5 + 0.05 * torch.randn(1000, generator=g, dtype=torch.float64)
    y = (torch.remainder(torch.cat([a, b]) + 1, 2) - 1)[:, None]
    std = Standardize.fit(y, identity_mask=[True])
    assert float(std.scale[0]) == 1.0 and bool(std.wrap[0])
    v, ld = std.inverse(y)
    assert bool((v.abs() <= 1).all()) and torch.all(ld == 0)
    # nothing of either mode lies near the new boundary: both modes are whole inside (-1, 1)
    assert float(v.abs().max()) < 0.9
    back, _ = std.forward(v)
    assert torch.allclose(back, y, atol=1e-12)
    assert std.in_domain(torch.tensor([[-1.0], [0.999]], dtype=torch.float64)).all()
