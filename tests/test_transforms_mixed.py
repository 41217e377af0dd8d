"""MixedTransform on MD frames of alanine dipeptide and perturbed trpzip2: round trips, exact log-dets."""

from __future__ import annotations

import math

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

import openmm_bg.systems as bgs
from openmm_bg.transforms import (
    ConstraintError,
    MixedTransform,
    apply_rigid,
    random_rotation,
    randomize_orientation,
)
from openmm_bg.transforms.core import SO3_VOLUME


def langevin_frames(ms, n_frames: int, steps: int, seed: int) -> np.ndarray:
    """``[n_frames, n_atoms, 3]`` nm from a short Langevin run (Reference platform)."""
    integrator = openmm.LangevinMiddleIntegrator(ms.temperature * unit.kelvin, 5.0 / unit.picosecond,
                                                 0.001 * unit.picosecond)
    integrator.setRandomNumberSeed(seed)
    integrator.setConstraintTolerance(1e-8)
    context = openmm.Context(ms.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ms.positions)
    context.applyConstraints(1e-8)
    context.setVelocitiesToTemperature(ms.temperature * unit.kelvin, seed)
    frames = []
    for _ in range(n_frames):
        integrator.step(steps)
        frames.append(context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    return np.asarray(frames)


def random_pose(x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rot = random_rotation(x.shape[0], generator=g, dtype=torch.float64)
    return apply_rigid(x, rot, 3.0 * torch.randn(x.shape[0], 3, generator=g, dtype=torch.float64))


@pytest.fixture(scope="module")
def ala():
    ms = bgs.load("alanine_dipeptide")
    frames = langevin_frames(ms, n_frames=40, steps=100, seed=1)
    return ms, torch.as_tensor(frames), MixedTransform.from_system(ms, frames)


@pytest.fixture(scope="module")
def trp():
    ms = bgs.load("trpzip2")
    g = torch.Generator().manual_seed(2)
    noise = torch.randn(40, ms.n_atoms, 3, generator=g, dtype=torch.float64)
    frames = torch.as_tensor(ms.positions) + 0.01 * noise
    with pytest.warns(UserWarning, match="regularised"):  # 40 frames < 102 core coordinates
        transform = MixedTransform.from_system(ms, frames)
    return ms, frames, transform


@pytest.fixture(scope="module")
def ala_hbonds():
    ms = bgs.load("alanine_dipeptide", constraints="hbonds")
    frames = langevin_frames(ms, n_frames=20, steps=100, seed=3)
    return ms, torch.as_tensor(frames), MixedTransform.from_system(ms, frames)


def torsion_aware_diff(t: MixedTransform, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a - b
    circ = t.dims.circular_mask
    d[:, circ] = torch.remainder(d[:, circ] + 1.0, 2.0) - 1.0
    return d.abs().max()


@pytest.mark.parametrize("system", ["ala", "trp"])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_round_trip_x_y_x(system, dtype, tol, request):
    ms, frames, t = request.getfixturevalue(system)
    x = random_pose(frames[:20], seed=5).to(dtype)
    y, ld_inv, rot, trans = t.inverse(x, return_frame=True)
    assert y.dtype == dtype and y.shape == (20, 3 * ms.n_atoms - 6)
    x2, ld_fwd = t.forward(y, rot, trans)
    assert x2.dtype == dtype
    assert (x2 - x).abs().max() <= tol
    assert (ld_inv + ld_fwd).abs().max() <= (1e-9 if dtype == torch.float64 else 1e-3)
    # y -> x -> y (in the body frame)
    xb, _ = t.forward(y)
    y3, _ = t.inverse(xb)
    assert torsion_aware_diff(t, y3, y) <= (1e-9 if dtype == torch.float64 else 1e-4)


def test_body_frame_convention(ala):
    _, frames, t = ala
    x, _ = t.forward(t.inverse(random_pose(frames[:4], 0))[0])
    c0, c1, c2 = t.zmatrix.core[:3]
    assert x[:, c0].abs().max() < 1e-12
    assert x[:, c1, 1:].abs().max() < 1e-12 and (x[:, c1, 0] > 0).all()
    assert x[:, c2, 2].abs().max() < 1e-12 and (x[:, c2, 1] > 0).all()


def full_jacobian_logdet(t: MixedTransform, y: torch.Tensor, rot: torch.Tensor, trans: torch.Tensor) -> float:
    """log|det| of the square 3N x 3N matrix [dx/dy | translations | rotation generators]."""
    def f(yy):
        return t.forward(yy[None], rot[None], trans[None])[0][0].reshape(-1)

    jac = torch.autograd.functional.jacobian(f, y)
    x = f(y).reshape(-1, 3)
    cols = [jac]
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = 1.0
        cols.append(e.expand_as(x).reshape(-1, 1))                               # translation e_k
        cols.append(torch.linalg.cross(e.expand_as(x), x - trans).reshape(-1, 1))  # rotation omega_k x x_i
    m = torch.cat(cols, dim=1)
    assert m.shape == (x.numel(), x.numel())
    return torch.linalg.slogdet(m)[1].item()


def test_log_det_matches_square_jacobian(ala):
    ms, frames, t = ala
    x = random_pose(frames[::10], seed=7)
    y, ld_inv, rot, trans = t.inverse(x, return_frame=True)
    _, ld_fwd = t.forward(y, rot, trans)
    for b in range(len(x)):
        expected = full_jacobian_logdet(t, y[b], rot[b], trans[b])
        assert abs(ld_fwd[b].item() - expected) < 1e-8
        assert abs(-ld_inv[b].item() - expected) < 1e-8
    assert torch.allclose(ld_fwd + ld_inv, torch.zeros_like(ld_fwd), atol=1e-10)


def test_rotation_measure_volume_constant():
    assert SO3_VOLUME == pytest.approx(8 * math.pi**2)


def test_dims_metadata(ala):
    ms, _, t = ala
    d = t.dims
    n_rows = ms.n_atoms - 3
    assert t.n_dof == 60 == len(d)
    assert d.positive_mask.sum() == n_rows and d.bounded_mask.sum() == n_rows
    assert d.circular_mask.sum() == n_rows and d.unbounded_mask.sum() == 3
    assert torch.equal(t.circular_mask, d.circular_mask)
    assert d.lower[d.circular_mask].eq(-1).all() and d.upper[d.circular_mask].eq(1).all()
    assert d.lower[d.bounded_mask].eq(0).all() and d.upper[d.bounded_mask].eq(1).all()
    assert d.period == 2.0
    phi, psi = t.torsion_index(4, 6, 8, 14), t.torsion_index(16, 14, 8, 6)
    assert d.kinds[phi] == "torsion" and t.proper_torsion_mask[phi] and t.proper_torsion_mask[psi]
    x = torch.as_tensor(ms.positions)[None]
    y, _ = t.inverse(x)
    assert torch.allclose(y[0, phi] * math.pi, ms.reaction_coordinates["phi"](x))
    assert torch.allclose(y[0, psi] * math.pi, ms.reaction_coordinates["psi"](x))
    assert t.in_domain(y).all()
    with pytest.raises(KeyError):
        t.torsion_index(0, 1, 2, 3)


def test_y_in_domain_and_torsion_range(ala):
    _, frames, t = ala
    y, _ = t.inverse(random_pose(frames, 3))
    tors = y[:, t.dims.torsion_dims]
    assert (tors >= -1).all() and (tors < 1).all()
    ang = y[:, t.dims.angle_dims]
    assert (ang > 0).all() and (ang < 1).all()
    assert (y[:, t.dims.bond_dims] > 0).all()


def test_out_of_domain_and_degenerate_rows_are_masked_not_raised(ala):
    _, frames, t = ala
    y, _ = t.inverse(frames[:5])
    bad = y.clone()
    bad[1, t.dims.angle_dims[0]] = 1.3        # angle beyond pi
    bad[2, t.dims.bond_dims[0]] = -0.1         # negative bond
    bad[3, t.dims.torsion_dims[0]] = 1.0       # torsion outside [-1, 1)
    x, ld = t.forward(bad)
    assert torch.isfinite(ld[[0, 4]]).all() and torch.isfinite(x[[0, 4]]).all()
    assert torch.isnan(ld[1:4]).all() and torch.isnan(x[1:4]).all()
    # degenerate Cartesian input: NaN, collinear frame atoms, zero-length bond
    xd = frames[:4].clone()
    xd[1, 0, 0] = float("nan")
    c0, c1, c2 = t.zmatrix.core[:3]
    xd[2, [c0, c1, c2]] = torch.tensor([[0.0, 0, 0], [0.15, 0, 0], [0.3, 0, 0]], dtype=xd.dtype)
    xd[3, 0] = xd[3, 1]
    y, ld = t.inverse(xd)
    assert torch.isfinite(ld[0]) and torch.isfinite(y[0]).all()
    assert not torch.isfinite(ld[1:]).any()


def test_inverse_is_rotation_invariant_and_randomize_orientation(ala):
    _, frames, t = ala
    x = frames[:8]
    y0, ld0 = t.inverse(x)
    g = torch.Generator().manual_seed(11)
    xr, rot = randomize_orientation(x, generator=g)
    assert torch.allclose(xr.mean(1), x.mean(1), atol=1e-12)
    y1, ld1 = t.inverse(xr)
    assert torsion_aware_diff(t, y1, y0) < 1e-9 and torch.allclose(ld0, ld1)
    r = random_rotation(20000, generator=g, dtype=torch.float64)
    assert torch.allclose(torch.linalg.det(r), torch.ones(20000, dtype=torch.float64))
    assert r.mean(0).abs().max() < 0.03  # Haar: E[R] = 0


def test_gradients_flow(ala):
    _, frames, t = ala
    y, _ = t.inverse(frames[:4].float())
    y = y.detach().requires_grad_(True)
    x, ld = t.forward(y)
    (x.square().sum() + ld.sum()).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_constrained_transform(ala_hbonds, ala):
    ms, frames, t = ala_hbonds
    n_cons = len(ms.constraints)
    assert n_cons == 12 and len(t.fixed_bonds) == 12
    assert t.n_dof == 3 * 22 - 6 - 12
    assert t.dims.positive_mask.sum() == 19 - 12
    x = random_pose(frames, seed=4)
    y, ld_inv, rot, trans = t.inverse(x, return_frame=True)
    x2, ld_fwd = t.forward(y, rot, trans)
    deviation = max(abs(np.linalg.norm(frames[:, i] - frames[:, j], axis=-1) - d).max()
                    for i, j, d in ms.constraints)
    assert (x2 - x).abs().max() <= deviation + 1e-10
    assert torch.allclose(ld_inv + ld_fwd, torch.zeros_like(ld_fwd), atol=1e-10)
    # where constraints hold exactly, the log-det is the unconstrained one (fixed-bond measure)
    _, _, t_free = ala
    t_free_same = MixedTransform(t.zmatrix, frames)  # same Z-matrix and whitening, no constraints
    xb, _ = t.forward(y)
    for i, j, d in ms.constraints:
        assert torch.allclose(torch.linalg.norm(xb[:, i] - xb[:, j], dim=-1), torch.tensor(d, dtype=xb.dtype))
    _, ld_c = t.inverse(xb)
    _, ld_u = t_free_same.inverse(xb)
    assert torch.allclose(ld_c, ld_u, atol=1e-10)


@pytest.mark.parametrize("constraints, match", [("allbonds", "inside the Cartesian core"),
                                                ("hangles", "not a bond")])
def test_unsupported_constraints_raise(constraints, match):
    ms = bgs.load("alanine_dipeptide", constraints=constraints)
    with pytest.raises(ConstraintError, match=match):
        MixedTransform.from_system(ms, ms.positions[None].repeat(3, 0) + np.random.default_rng(0).normal(
            0, 0.01, (3, 22, 3)))


def test_ring_closure_constraint_raises():
    ms = bgs.load("trpzip2", constraints="allbonds")
    from openmm_bg.transforms import build_zmatrix

    zm = build_zmatrix(ms.topology, cartesian=[0, 60, 120])  # no constrained pair inside the core
    frames = ms.positions[None] + np.random.default_rng(0).normal(0, 0.01, (5, ms.n_atoms, 3))
    with pytest.raises(ConstraintError, match="ring"):
        MixedTransform(zm, frames, constraints=ms.constraints)


def test_from_system_refuses_external_potential():
    ms = bgs.load("mueller_brown")
    with pytest.raises(ValueError, match="CartesianTransform"):
        MixedTransform.from_system(ms, ms.positions[None])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(ala):
    _, frames, t = ala
    y, ld = t.inverse(frames[:8])
    tg = t.to("cuda")
    yg, ldg = tg.inverse(frames[:8].cuda())
    xg, _ = tg.forward(yg)
    assert torch.allclose(yg.cpu(), y, atol=1e-10) and torch.allclose(ldg.cpu(), ld, atol=1e-8)
    assert xg.device.type == "cuda"


def test_float_cast_keeps_float64_parameters(ala_hbonds):
    _, frames, t = ala_hbonds
    y, ld = t.inverse(frames[:3])
    t.float()  # e.g. a generator cast to float32 for training
    try:
        assert t.whitening.scale.dtype == torch.float64 and t._fixed_values.dtype == torch.float64
        y2, ld2 = t.inverse(frames[:3])
        assert torch.equal(y, y2) and torch.equal(ld, ld2)
    finally:
        t.double()
