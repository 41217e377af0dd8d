"""The "torch" / "auto" backends of OpenMMEnergy (needs openmm_bg.energy.torchff.forcefield)."""

import logging

import numpy as np
import openmm
import pytest
import torch

pytest.importorskip("openmm_bg.energy.torchff.forcefield")

from openmm_bg.energy import OpenMMEnergy  # noqa: E402
from openmm_bg.energy.torch_backend import TorchBackend, TorchBackendError  # noqa: E402
from openmm_bg.systems import load  # noqa: E402


@pytest.fixture(scope="module")
def ala_systems():
    return {s: load("alanine_dipeptide", solvent=s) for s in ("vacuum", "implicit")}


@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_torch_backend_matches_openmm_reference(ala_systems, solvent):
    ms = ala_systems[solvent]
    reference = OpenMMEnergy(ms, platform="Reference")
    energy = OpenMMEnergy(ms, backend="torch")
    assert energy.backend == "torch" and energy._impl.max_relative_error <= 1e-6
    rng = np.random.default_rng(0)
    x_np = ms.positions[None] + 0.005 * rng.standard_normal((6, ms.n_atoms, 3))
    x_np[2, 0, 0] = np.nan
    x_np = x_np.astype(np.float32).astype(np.float64)  # the positions the float32 input holds
    u_ref, f_ref = reference.evaluate(x_np)
    x = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
    u = energy(x)
    assert u.dtype == torch.float64 and torch.isposinf(u[2])
    ok = torch.isfinite(u_ref)
    np.testing.assert_allclose(u[ok].detach().numpy(), u_ref[ok].numpy(), rtol=1e-6)  # the self-check level
    u[ok].sum().backward()
    assert torch.all(x.grad[2] == 0)
    np.testing.assert_allclose(x.grad[ok].numpy(), -f_ref[ok].numpy(), rtol=1e-6, atol=1e-6)


def test_self_check_refuses_disagreement(ala_systems):
    ms = ala_systems["vacuum"]
    with pytest.raises(TorchBackendError, match="disagrees with OpenMM"):
        TorchBackend(ms.system, ms.positions, tolerance=1e-30)  # no float64 sum agrees to 1e-30


def _system_with_cmap():
    system = openmm.System()
    for _ in range(2):
        system.addParticle(12.0)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.15, 1000.0)
    system.addForce(bond)
    system.addForce(openmm.CMAPTorsionForce())  # no torch translation
    return system


def test_unsupported_force_torch_raises_auto_falls_back(caplog):
    system = _system_with_cmap()
    with pytest.raises(TorchBackendError, match="CMAPTorsionForce"):
        OpenMMEnergy(system, temperature=300.0, backend="torch")
    with caplog.at_level(logging.INFO, logger="openmm_bg.energy"):
        energy = OpenMMEnergy(system, temperature=300.0, backend="auto", platform="Reference")
    assert energy.backend == "openmm"
    assert "CMAPTorsionForce" in caplog.text
    u = energy([[[0, 0, 0], [0.25, 0, 0]]])
    assert u.item() == pytest.approx(0.5 * 1000.0 * 0.1**2 / energy.kT, rel=1e-12)


def test_auto_picks_torch_when_supported(ala_systems, caplog):
    with caplog.at_level(logging.INFO, logger="openmm_bg.energy"):
        energy = OpenMMEnergy(ala_systems["vacuum"], backend="auto")
    assert energy.backend == "torch" and "torch force field" in caplog.text
