"""`TorchForceField` against OpenMM's Reference platform, and its expression translator."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

import openmm_bg.systems as bgs
from openmm_bg.energy.torchff.expressions import Expression, ExpressionError
from openmm_bg.energy.torchff.forcefield import TorchForceField, unsupported_forces

F64_TOL = 1e-6  # relative, energies and forces (float64); observed ~4e-9
F32_ENERGY_TOL = 2e-5  # relative to max(|E|, 1); observed ~2e-6
F32_FORCE_TOL = 1e-4  # max |dF| relative to max |F|; observed ~7e-6


def openmm_reference(system: openmm.System, xs: np.ndarray, parameters: dict | None = None):
    """Energies [batch] (kJ/mol) and forces [batch, n, 3] from the Reference platform."""
    platform = openmm.Platform.getPlatformByName("Reference")
    context = openmm.Context(system, openmm.VerletIntegrator(1.0), platform)
    for name, value in (parameters or {}).items():
        context.setParameter(name, value)
    energies, forces = [], []
    for x in xs:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
        forces.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return np.array(energies), np.array(forces)


def perturbed(positions: np.ndarray, n: int, sigma: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return positions[None] + sigma * rng.standard_normal((n, *positions.shape))


def assert_close(system, xs, dtype=torch.float64, energy_tol=F64_TOL, force_tol=F64_TOL, ff=None,
                 parameters=None):
    ref_e, ref_f = openmm_reference(system, xs, parameters)
    ff = ff or TorchForceField(system, dtype=dtype)
    energy, forces = ff.energy_and_forces(torch.as_tensor(xs))
    assert energy.dtype == dtype and forces.shape == xs.shape
    energy, forces = energy.double().numpy(), forces.double().numpy()
    scale = np.maximum(np.abs(ref_e), 1.0)
    assert np.all(np.abs(energy - ref_e) <= energy_tol * scale), (energy, ref_e)
    force_err = np.abs(forces - ref_f).max(axis=(1, 2)) / np.abs(ref_f).max(axis=(1, 2))
    assert np.all(force_err <= force_tol), force_err


# --------------------------------------------------------------------------------------------
# systems


@cache
def builtin(name: str, **options):
    return bgs.load(name, **options)


def _openmmtools(name: str):
    testsystems = pytest.importorskip("openmmtools.testsystems")
    test_system = getattr(testsystems, name)()
    return test_system.system, np.asarray(test_system.positions.value_in_unit(unit.nanometer))


SYSTEMS = [
    ("alanine_dipeptide", {}, 4),
    ("alanine_dipeptide", {"solvent": "implicit"}, 4),
    ("alanine_dipeptide", {"forcefield": "amber14"}, 3),
    ("alanine_dipeptide", {"forcefield": "amber14", "solvent": "implicit"}, 3),
    ("trpzip2", {}, 2),
    ("double_well", {}, 4),
    ("mueller_brown", {}, 4),
    ("dimer_in_solvent", {}, 4),
]


@pytest.mark.parametrize(("name", "options", "n"), SYSTEMS,
                         ids=[f"{n}-{'-'.join(o.values()) or 'default'}" for n, o, _ in SYSTEMS])
def test_builtin_systems_match_openmm_reference(name, options, n):
    ms = builtin(name, **options)
    assert_close(ms.system, perturbed(ms.positions, n))


@pytest.mark.parametrize("name", ["TolueneImplicit", "HostGuestVacuum"])
def test_openmmtools_systems_match_openmm_reference(name):
    system, positions = _openmmtools(name)
    assert_close(system, perturbed(positions, 3, seed=1))


def test_force_classes_covered():
    """The built-in systems exercise the standard and GB force classes this module translates."""
    seen = set()
    for name, options, _ in SYSTEMS:
        seen |= {type(f).__name__ for f in builtin(name, **options).system.getForces()}
    assert {"HarmonicBondForce", "HarmonicAngleForce", "PeriodicTorsionForce", "NonbondedForce",
            "GBSAOBCForce", "CustomGBForce", "CustomNonbondedForce", "CustomExternalForce",
            "CustomBondForce", "CustomCompoundBondForce"} <= seen


@pytest.mark.parametrize(("name", "options"), [("alanine_dipeptide", {"solvent": "implicit"}),
                                               ("trpzip2", {}), ("dimer_in_solvent", {})])
def test_float32_agrees_within_stated_tolerance(name, options):
    ms = builtin(name, **options)
    assert_close(ms.system, perturbed(ms.positions, 2, seed=3), dtype=torch.float32,
                 energy_tol=F32_ENERGY_TOL, force_tol=F32_FORCE_TOL)


# --------------------------------------------------------------------------------------------
# a hand-built system with every supported custom force


N_CUSTOM = 7


def custom_system() -> tuple[openmm.System, np.ndarray]:
    system = openmm.System()
    for _ in range(N_CUSTOM):
        system.addParticle(1.0)
    rng = np.random.default_rng(42)
    positions = rng.uniform(-0.6, 0.6, size=(N_CUSTOM, 3))

    ext = openmm.CustomExternalForce(
        "a*(x-x0)^2 + sin(y)*cos(z) + 0.1*step(x) + select(x0, 1, 2)*tanh(y) + min(x, y) + max(y, z)"
        " + abs(z) + exp(-x^2) + log(1 + y^2) + sqrt(1 + z^2) + sinh(x)/cosh(y) + tan(0.3*z)")
    ext.addGlobalParameter("a", 3.0)
    ext.addPerParticleParameter("x0")
    for p in range(N_CUSTOM):
        ext.addParticle(p, [0.1 * p])
    system.addForce(ext)

    bond = openmm.CustomBondForce("k*(r-r0)^2 + erf(r) + erfc(2*r) + atan(r) + atan2(r, 0.5) + square(r)"
                                  " + cube(r) + recip(1 + r) + sec(0.2*r) + csc(1 + r) + cot(1 + r)")
    bond.addPerBondParameter("k")
    bond.addPerBondParameter("r0")
    for p in range(N_CUSTOM - 1):
        bond.addBond(p, p + 1, [100.0 + p, 0.3])
    system.addForce(bond)

    angle = openmm.CustomAngleForce("k*(theta - t0)^2 + asin(theta/4) + acos(theta/4) + delta(theta)")
    angle.addPerAngleParameter("k")
    angle.addGlobalParameter("t0", 1.9)
    for p in range(N_CUSTOM - 2):
        angle.addAngle(p, p + 1, p + 2, [10.0 + p])
    system.addForce(angle)

    torsion = openmm.CustomTorsionForce("k*(1 + cos(2*theta - ph)) + 0.7*sin(theta) + 0.2*theta")
    torsion.addPerTorsionParameter("k")
    torsion.addPerTorsionParameter("ph")
    for p in range(N_CUSTOM - 3):
        torsion.addTorsion(p, p + 1, p + 2, p + 3, [3.0, 0.4 * p])
    system.addForce(torsion)

    nb = openmm.CustomNonbondedForce("eps*(sig/r)^12 - cq1*cq2/r + tab(type1, type2)*exp(-r);"
                                     " sig = 0.5*(s1 + s2); eps = sqrt(e1*e2)")
    for name in ("s", "e", "c", "type"):
        nb.addPerParticleParameter(name)
    nb.addComputedValue("cq", "scale*c")
    nb.addGlobalParameter("scale", 1.5)
    nb.addTabulatedFunction("tab", openmm.Discrete2DFunction(2, 2, [0.5, 1.0, 1.0, 2.0]))
    for p in range(N_CUSTOM):
        nb.addParticle([0.2 + 0.01 * p, 0.5, (-1) ** p * 0.3, p % 2])
    nb.addExclusion(0, 1)
    nb.addExclusion(2, 5)
    system.addForce(nb)

    compound = openmm.CustomCompoundBondForce(
        4, "k*distance(p1, p2) + angle(p1, p2, p3) + 0.5*dihedral(p1, p2, p3, p4) + x1*y2 - z3^2"
           " + w(idx)*x4")
    compound.addPerBondParameter("k")
    compound.addPerBondParameter("idx")
    compound.addTabulatedFunction("w", openmm.Discrete1DFunction([0.5, -1.5]))
    compound.addBond([0, 2, 4, 6], [2.0, 0])
    compound.addBond([1, 3, 5, 0], [1.0, 1])
    system.addForce(compound)

    gb = openmm.CustomGBForce()  # Reference allows one pair computed value per force
    gb.addPerParticleParameter("q")
    gb.addPerParticleParameter("a")
    gb.addGlobalParameter("g", 0.7)
    gb.addComputedValue("I", "a2*exp(-r^2) + 0.1*a1", openmm.CustomGBForce.ParticlePairNoExclusions)
    gb.addComputedValue("B", "1/(1 + I^2) + 0.1*x^2", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("g*q*B + y^2", openmm.CustomGBForce.SingleParticle)
    gb.addEnergyTerm("q1*q2*B1*B2/r", openmm.CustomGBForce.ParticlePair)
    gb.addEnergyTerm("0.1*exp(-r)*I1*B2", openmm.CustomGBForce.ParticlePairNoExclusions)
    gb2 = openmm.CustomGBForce()
    gb2.addPerParticleParameter("q")
    gb2.addComputedValue("J", "exp(-r)*q2 + q1", openmm.CustomGBForce.ParticlePair)
    gb2.addEnergyTerm("0.3*J*q", openmm.CustomGBForce.SingleParticle)
    gb2.addEnergyTerm("q1*J2/r", openmm.CustomGBForce.ParticlePair)
    gb2.addEnergyTerm("0.1*exp(-r)*J1*J2", openmm.CustomGBForce.ParticlePairNoExclusions)
    for p in range(N_CUSTOM):
        gb.addParticle([(-1) ** p * 0.5, 0.2 + 0.05 * p])
        gb2.addParticle([0.1 * p - 0.2])
    for force in (gb, gb2):
        force.addExclusion(0, 3)
        force.addExclusion(1, 2)
        system.addForce(force)

    harmonic = openmm.HarmonicBondForce()
    harmonic.addBond(0, 6, 0.4, 50.0)
    system.addForce(harmonic)
    hangle = openmm.HarmonicAngleForce()
    hangle.addAngle(6, 0, 1, 1.5, 30.0)
    system.addForce(hangle)
    periodic = openmm.PeriodicTorsionForce()
    periodic.addTorsion(6, 0, 1, 2, 3, 0.3, 2.0)  # non-symmetric phase: tests the dihedral sign
    periodic.addTorsion(5, 6, 0, 1, 1, 1.1, 1.5)
    system.addForce(periodic)
    rb = openmm.RBTorsionForce()
    rb.addTorsion(3, 4, 5, 6, 0.5, -1.0, 0.3, 0.7, -0.2, 0.1)
    system.addForce(rb)
    nonbonded = openmm.NonbondedForce()
    for p in range(N_CUSTOM):
        nonbonded.addParticle((-1) ** p * 0.2, 0.25, 0.3)
    nonbonded.addException(0, 1, 0.0, 1.0, 0.0)
    nonbonded.addException(1, 2, 0.05, 0.2, 0.4)
    system.addForce(nonbonded)
    system.addForce(openmm.CMMotionRemover())
    return system, positions


def test_custom_force_system_matches_openmm_reference():
    system, positions = custom_system()
    assert unsupported_forces(system) == []
    assert_close(system, perturbed(positions, 4, sigma=0.02))


def test_set_parameter_like_a_context():
    system, positions = custom_system()
    ff = TorchForceField(system)
    assert ff.get_parameter("a") == 3.0
    ff.set_parameter("a", 1.25)
    ff.set_parameter("scale", -0.5)
    xs = perturbed(positions, 2, sigma=0.02, seed=5)
    assert_close(system, xs, ff=ff, parameters={"a": 1.25, "scale": -0.5})
    with pytest.raises(KeyError, match="nope"):
        ff.set_parameter("nope", 1.0)


EXPRESSIONS = ["-x^2", "x^y^2", "2^-y", "-x*-y", "x - -y", "x/y/z", "-(x+y)^2", "x^-2", "x^1.5",
               "1e-1*x + .5*y + 2.5E1*z", "min(x, y)*max(x, z)", "select(step(x - 1), x, y)*3",
               "floor(3*x) + ceil(2*y) + x", "u^2; u = v + w; w = 2*z; v = x*y", "abs(z)^0.5 + exp(z)"]


@pytest.mark.parametrize("text", EXPRESSIONS)
def test_expression_values_match_openmm(text):
    system = openmm.System()
    system.addParticle(1.0)
    force = openmm.CustomExternalForce(text)
    force.addParticle(0, [])
    system.addForce(force)
    xs = np.array([[[1.3, 0.7, -0.4]], [[0.2, 1.9, 0.35]]])
    assert_close(system, xs)
    assert Expression(text).evaluate({"x": 1.3, "y": 0.7, "z": -0.4}) == pytest.approx(
        openmm_reference(system, xs[:1])[0][0], rel=1e-12)


def test_expression_errors():
    with pytest.raises(ExpressionError, match="unsupported function 'foo'"):
        Expression("foo(x)").check(["x"])
    with pytest.raises(ExpressionError, match="unknown variable"):
        Expression("x + q").check(["x"])
    with pytest.raises(ExpressionError, match="refers to itself"):
        Expression("a; a = b; b = a")
    with pytest.raises(ExpressionError):
        Expression("x + (y")
    assert Expression("2*c; c = 3").main == ("num", 6.0)  # constant definitions are folded


# --------------------------------------------------------------------------------------------
# batching, chunking, failures, refusals


def test_chunked_equals_unchunked_with_autograd():
    ms = builtin("alanine_dipeptide", solvent="implicit")
    xs = torch.as_tensor(perturbed(ms.positions, 10, seed=7))
    whole = TorchForceField(ms.system)
    chunked = TorchForceField(ms.system, chunk_size=3)
    assert whole.chunk_size >= 10 and chunked.chunk_size == 3
    x1 = xs.clone().requires_grad_()
    x2 = xs.clone().requires_grad_()
    e1, e2 = whole(x1), chunked(x2)
    (g1,) = torch.autograd.grad(e1.sum(), x1)
    (g2,) = torch.autograd.grad(e2.sum(), x2)
    torch.testing.assert_close(e1, e2, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-9)
    e3, f3 = chunked.energy_and_forces(xs)
    torch.testing.assert_close(e3, e1.detach(), rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(f3, -g1, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize(("name", "options"), [("alanine_dipeptide", {"solvent": "implicit"}),
                                               ("dimer_in_solvent", {})])
def test_nonfinite_rows_do_not_poison_other_rows(name, options):
    ms = builtin(name, **options)
    xs = torch.as_tensor(perturbed(ms.positions, 5, seed=11))
    bad = xs.clone()
    bad[1, 0, 0] = float("nan")
    bad[3, 2, 1] = float("inf")
    ff = TorchForceField(ms.system, chunk_size=2)
    good = [0, 2, 4]
    x = bad.clone().requires_grad_()
    energy = ff(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    e_ref, f_ref = ff.energy_and_forces(xs[good])
    torch.testing.assert_close(energy[good].detach(), e_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(-grad[good], f_ref, rtol=1e-12, atol=1e-12)
    assert not torch.isfinite(energy[1]) and not torch.isfinite(energy[3])
    e2, f2 = ff.energy_and_forces(bad)
    torch.testing.assert_close(f2[good], f_ref, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(f2[good]).all()


def _periodic_pme_system() -> openmm.System:
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(2, 0, 0), openmm.Vec3(0, 2, 0), openmm.Vec3(0, 0, 2))
    nonbonded = openmm.NonbondedForce()
    nonbonded.setNonbondedMethod(openmm.NonbondedForce.PME)
    for charge in (0.5, -0.5):
        system.addParticle(1.0)
        nonbonded.addParticle(charge, 0.3, 0.5)
    system.addForce(nonbonded)
    return system


def test_unsupported_forces_are_named_and_refused():
    system = _periodic_pme_system()
    system.addForce(openmm.AndersenThermostat(300.0, 1.0))
    system.addForce(openmm.CMMotionRemover())  # ignored, not a problem
    problems = unsupported_forces(system)
    assert len(problems) == 2
    assert problems[0].startswith("NonbondedForce") and "PME" in problems[0]
    assert problems[1].startswith("AndersenThermostat")
    with pytest.raises(ValueError, match="NonbondedForce.*PME.*AndersenThermostat"):
        TorchForceField(system)


def test_unsupported_custom_features_are_refused():
    system = openmm.System()
    system.addParticle(1.0)
    system.addParticle(1.0)
    gb = openmm.CustomGBForce()
    gb.addPerParticleParameter("q")
    gb.addTabulatedFunction("spline", openmm.Continuous1DFunction([0.0, 1.0, 4.0], 0.0, 2.0))
    gb.addEnergyTerm("spline(r)*q1*q2", openmm.CustomGBForce.ParticlePair)
    gb.addParticle([1.0])
    gb.addParticle([1.0])
    system.addForce(gb)
    external = openmm.CustomExternalForce("periodicdistance(x, y, z, 0, 0, 0)")
    external.addParticle(0, [])
    system.addForce(external)
    problems = unsupported_forces(system)
    assert problems[0].startswith("CustomGBForce") and "Continuous1DFunction" in problems[0]
    assert problems[1].startswith("CustomExternalForce") and "periodic" in problems[1]
    with pytest.raises(ValueError, match="CustomGBForce"):
        TorchForceField(system)


def test_virtual_sites_and_cmap_are_refused():
    system = openmm.System()
    for _ in range(5):
        system.addParticle(1.0)
    system.setVirtualSite(4, openmm.TwoParticleAverageSite(0, 1, 0.5, 0.5))
    cmap = openmm.CMAPTorsionForce()
    cmap.addMap(2, [0.0] * 4)
    cmap.addTorsion(0, 0, 1, 2, 3, 1, 2, 3, 0)
    system.addForce(cmap)
    problems = unsupported_forces(system)
    assert problems[0].startswith("virtual sites (particles [4])")
    assert problems[1].startswith("CMAPTorsionForce")
    with pytest.raises(ValueError, match="virtual sites.*CMAPTorsionForce"):
        TorchForceField(system)


def test_supported_systems_report_no_problems():
    for name, options, _ in SYSTEMS:
        assert unsupported_forces(builtin(name, **options).system) == [], name


def test_input_shape_is_checked():
    ff = TorchForceField(builtin("mueller_brown").system)
    with pytest.raises(ValueError, match=r"\[batch, 1, 3\]"):
        ff(torch.zeros(2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    ms = builtin("alanine_dipeptide", solvent="implicit")
    xs = torch.as_tensor(perturbed(ms.positions, 8, seed=2))
    e_cpu, f_cpu = TorchForceField(ms.system).energy_and_forces(xs)
    e_gpu, f_gpu = TorchForceField(ms.system, device="cuda").energy_and_forces(xs.cuda())
    torch.testing.assert_close(e_gpu.cpu(), e_cpu, rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(f_gpu.cpu(), f_cpu, rtol=1e-10, atol=1e-8)
    assert math.isfinite(float(e_gpu.sum()))


@pytest.mark.slow
def test_compiled_matches_eager():
    """``compile=True`` (torch.compile, about a minute to compile on CPU) gives the same numbers."""
    ms = builtin("dimer_in_solvent")
    xs = torch.as_tensor(perturbed(ms.positions, 6, seed=4))
    e1, f1 = TorchForceField(ms.system, compile=True).energy_and_forces(xs)
    e2, f2 = TorchForceField(ms.system).energy_and_forces(xs)
    torch.testing.assert_close(e1, e2, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f1, f2, rtol=1e-10, atol=1e-10)
