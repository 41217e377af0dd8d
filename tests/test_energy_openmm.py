"""OpenMMEnergy against direct OpenMM evaluations: values, gradients, failures, worker pool.

Worker pools are slow to start, so each (system, n_workers) energy is built once per module.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time

import numpy as np
import openmm
import openmm.unit as unit
import pytest
import torch

import openmm_bg.energy.platforms as platforms
from openmm_bg.energy import OpenMMEnergy, PeriodicSystemError, WorkerError, close_energies, energy_for
from openmm_bg.energy.workers import WorkerPool, capped_torch_threads
from openmm_bg.systems import load

SYSTEMS = {
    "double_well": dict(name="double_well"),
    "mueller_brown": dict(name="mueller_brown"),
    "dimer_in_solvent": dict(name="dimer_in_solvent"),
    "ala_vacuum": dict(name="alanine_dipeptide", solvent="vacuum"),
    "ala_implicit": dict(name="alanine_dipeptide", solvent="implicit"),
}


@pytest.fixture(scope="module")
def molecular_systems():
    return {key: load(**spec) for key, spec in SYSTEMS.items()}


@pytest.fixture(scope="module")
def energies(molecular_systems):
    """Cache of OpenMMEnergy objects keyed by (system key, n_workers); pools closed at the end."""
    cache: dict = {}

    def get(key: str, n_workers: int) -> OpenMMEnergy:
        if (key, n_workers) not in cache:
            cache[key, n_workers] = OpenMMEnergy(molecular_systems[key], n_workers=n_workers)
        return cache[key, n_workers]

    yield get
    for energy in cache.values():
        energy.close()


def perturbed(ms, n: int, scale: float = 0.01, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ms.positions[None] + scale * rng.standard_normal((n, ms.n_atoms, 3))


def direct(ms, x: np.ndarray, platform: str, properties: dict | None = None):
    """Energies (kT) and forces (kT/nm) from a plain OpenMM context, through the Quantity API."""
    context = openmm.Context(ms.system, openmm.VerletIntegrator(1.0 * unit.femtosecond),
                             openmm.Platform.getPlatformByName(platform), properties or {})
    kT = (unit.MOLAR_GAS_CONSTANT_R * ms.temperature * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    u, f = [], []
    for xb in x:
        context.setPositions([openmm.Vec3(*r) for r in xb] * unit.nanometer)
        state = context.getState(getEnergy=True, getForces=True)
        u.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT)
        f.append(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer) / kT)
    return np.array(u), np.array(f)


def direct_same_platform(energy: OpenMMEnergy, ms, x):
    return direct(ms, x, energy.platform_name, energy.properties)


# ---------------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("n_workers", [1, 2])
@pytest.mark.parametrize("key", list(SYSTEMS))
def test_energy_and_gradient_match_direct_openmm(energies, molecular_systems, key, n_workers):
    ms = molecular_systems[key]
    energy = energies(key, n_workers)
    x_np = perturbed(ms, 37, scale=0.005 if ms.n_atoms > 1 else 0.3)
    u_ref, f_ref = direct_same_platform(energy, ms, x_np)
    x = torch.tensor(x_np, requires_grad=True)
    u = energy(x)
    assert u.dtype == torch.float64 and u.shape == (37,)
    np.testing.assert_allclose(u.detach().numpy(), u_ref, rtol=1e-8, atol=1e-10)
    u.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), -f_ref, rtol=1e-8, atol=1e-8 * np.abs(f_ref).max())


@pytest.mark.parametrize("key", ["ala_vacuum", "ala_implicit", "double_well"])
def test_reference_platform_matches_system_reference(molecular_systems, key):
    ms = molecular_systems[key]
    energy = OpenMMEnergy(ms, platform="Reference")
    x = perturbed(ms, 5, scale=0.005 if ms.n_atoms > 1 else 0.3, seed=1)
    u_ref, _ = direct(ms, x, "Reference")
    np.testing.assert_allclose(energy(x).numpy(), u_ref, rtol=1e-10)
    assert energy.reference_energy == pytest.approx(direct(ms, ms.positions[None], "Reference")[0][0], rel=1e-10)


def test_double_well_analytic_gradient(molecular_systems):
    ms = molecular_systems["double_well"]
    energy = OpenMMEnergy(ms, platform="Reference")
    x = torch.tensor([[[1.0, 0.5, 0.0]], [[-1.7, -0.3, 0.0]]], dtype=torch.float64, requires_grad=True)
    energy(x).sum().backward()
    x1, x2 = x.detach()[:, 0, 0], x.detach()[:, 0, 1]
    np.testing.assert_allclose(x.grad[:, 0, 0], 4 * x1**3 - 12 * x1 + 1, rtol=1e-10)
    np.testing.assert_allclose(x.grad[:, 0, 1], x2, rtol=1e-10)


@pytest.mark.parametrize("key", ["ala_vacuum", "ala_implicit"])
def test_gradient_matches_finite_differences(molecular_systems, key):
    ms = molecular_systems[key]
    energy = OpenMMEnergy(ms, platform="Reference")
    x0 = perturbed(ms, 3, scale=0.003, seed=2)
    x = torch.tensor(x0, requires_grad=True)
    energy(x).sum().backward()
    rng = np.random.default_rng(3)
    h = 1e-5
    for b in range(3):
        for atom, dim in zip(rng.integers(0, ms.n_atoms, 4), rng.integers(0, 3, 4), strict=True):
            xp, xm = x0[b].copy(), x0[b].copy()
            xp[atom, dim] += h
            xm[atom, dim] -= h
            up, um = energy(np.stack([xp, xm])).numpy()
            fd = (up - um) / (2 * h)
            assert x.grad[b, atom, dim].item() == pytest.approx(fd, rel=1e-5, abs=1e-3)


def test_input_types_dtypes_and_shapes(energies, molecular_systems):
    ms = molecular_systems["ala_vacuum"]
    energy = energies("ala_vacuum", 1)
    x_np = perturbed(ms, 4, scale=0.005)
    u64 = energy(x_np)
    quantity = (x_np * 10.0) * unit.angstrom
    np.testing.assert_allclose(energy(quantity).numpy(), u64.numpy(), rtol=1e-12)
    x32 = torch.tensor(x_np, dtype=torch.float32, requires_grad=True)
    u32 = energy(x32)
    assert u32.dtype == torch.float64
    u32.sum().backward()
    assert x32.grad.dtype == torch.float32 and x32.grad.shape == x32.shape
    # one configuration [n, 3] -> scalar; extra leading dims are kept
    assert energy(x_np[0]).shape == ()
    assert energy(x_np.reshape(2, 2, ms.n_atoms, 3)).shape == (2, 2)
    assert energy(x_np[:0]).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        energy(np.zeros((2, 5, 3)))
    u, f = energy.evaluate(x_np)
    np.testing.assert_allclose(u.numpy(), u64.numpy(), rtol=1e-12)
    assert f.shape == (4, ms.n_atoms, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for torch")
def test_cuda_tensor_input(energies, molecular_systems):
    ms = molecular_systems["ala_vacuum"]
    energy = energies("ala_vacuum", 1)
    x = torch.tensor(perturbed(ms, 3), device="cuda", requires_grad=True)
    u = energy(x)
    assert u.device == x.device
    u.sum().backward()
    assert x.grad.device == x.device
    np.testing.assert_allclose(u.cpu().numpy(), energy(x.detach().cpu()).numpy(), rtol=1e-12)


def test_pickle_round_trip_and_no_grad(molecular_systems):
    ms = molecular_systems["ala_vacuum"]
    energy = OpenMMEnergy(ms, platform="Reference", platform_properties={})
    x = torch.tensor(perturbed(ms, 3), requires_grad=True)
    clone = pickle.loads(pickle.dumps(energy))
    torch.testing.assert_close(clone(x.detach()), energy(x.detach()), rtol=1e-14, atol=0)
    with torch.no_grad():
        u = energy(x)
    assert not u.requires_grad


def test_unknown_platform_properties_dropped_for_auto_platform(molecular_systems):
    ms = molecular_systems["double_well"]
    energy = OpenMMEnergy(ms, platform_properties={"Precision": "double", "Threads": "1"})
    assert "Precision" not in energy.properties or energy.platform_name in ("CUDA", "OpenCL")
    assert torch.isfinite(energy([[[1.0, 0.5, 0.0]]])).all()


def test_plain_system_needs_temperature(molecular_systems):
    ms = molecular_systems["double_well"]
    with pytest.raises(ValueError, match="temperature"):
        OpenMMEnergy(ms.system, platform="Reference")
    hot = OpenMMEnergy(ms.system, temperature=2 * ms.temperature * unit.kelvin, platform="Reference")
    cold = OpenMMEnergy(ms, platform="Reference")
    x = [[[1.0, 0.5, 0.0]]]
    assert hot(x).item() == pytest.approx(cold(x).item() / 2, rel=1e-12)
    assert hot.reference_energy is None
    with pytest.raises(ValueError, match="not available"):
        OpenMMEnergy(ms, platform="NoSuchPlatform")


def test_platform_selection_records_timings(energies):
    energy = energies("ala_implicit", 1)
    choice = energy.platform_choice
    assert choice.name == energy.platform_name
    assert "Reference" in choice.timings
    assert choice.timings[choice.name] == min(choice.timings.values())


# ---------------------------------------------------------------------- failures
def _failure_batch(ms, n=12):
    x = perturbed(ms, n, scale=0.005, seed=5)
    bad = np.zeros(n, dtype=bool)
    x[1, 3, 0] = np.nan
    x[4] = np.nan
    x[7, 0, 2] = np.inf
    x[11, 5, 1] = -np.inf
    bad[[1, 4, 7, 11]] = True
    return x, bad


@pytest.mark.parametrize("n_workers", [1, 2])
@pytest.mark.parametrize("key", ["ala_vacuum", "ala_implicit"])
def test_nonfinite_rows_give_inf_and_zero_gradient(energies, molecular_systems, key, n_workers):
    ms = molecular_systems[key]
    energy = energies(key, n_workers)
    x_np, bad = _failure_batch(ms)
    u_ref, f_ref = direct_same_platform(energy, ms, x_np[~bad])
    x = torch.tensor(x_np, requires_grad=True)
    u = energy(x)
    assert torch.all(torch.isposinf(u[bad]))
    np.testing.assert_allclose(u[~bad].detach().numpy(), u_ref, rtol=1e-8)
    u[~bad].sum().backward()  # excluding the inf rows, as a loss would after linlogcut
    assert torch.all(x.grad[bad] == 0)
    np.testing.assert_allclose(x.grad[~bad].numpy(), -f_ref, rtol=1e-8, atol=1e-6)
    # A NaN upstream gradient at the failed rows still gives exactly zero there.
    x.grad = None
    energy(x).backward(torch.where(torch.tensor(bad), torch.nan, 1.0).double())
    assert torch.all(x.grad[bad] == 0) and torch.all(torch.isfinite(x.grad))


def test_failed_row_does_not_reuse_previous_values(molecular_systems):
    """A configuration whose energy is NaN (finite input) is +inf with zero force, alone."""
    system = openmm.System()
    for _ in range(2):
        system.addParticle(1.0)
    bond = openmm.CustomBondForce("log(r - 0.1)")  # NaN for r < 0.1 nm
    bond.addBond(0, 1, [])
    system.addForce(bond)
    energy = OpenMMEnergy(system, temperature=300.0, platform="Reference")
    x = torch.tensor([[[0, 0, 0], [0.5, 0, 0]], [[0, 0, 0], [0.05, 0, 0]], [[0, 0, 0], [0.3, 0, 0]]],
                     dtype=torch.float64, requires_grad=True)
    u = energy(x)
    kT = energy.kT
    assert u[1].item() == np.inf
    np.testing.assert_allclose(u[[0, 2]].detach().numpy(), np.log([0.4, 0.2]) / kT, rtol=1e-12)
    u[[0, 2]].sum().backward()
    assert torch.all(x.grad[1] == 0)
    assert x.grad[0, 1, 0].item() == pytest.approx(1 / 0.4 / kT, rel=1e-10)


def test_overlapping_atoms_give_finite_huge_energy(energies, molecular_systems):
    ms = molecular_systems["ala_vacuum"]
    x = ms.positions.copy()
    x[18] = x[1] + 1e-4  # non-bonded pair, nearly on top of each other
    u = energies("ala_vacuum", 1)(x[None])
    assert torch.isfinite(u).all() and u.item() > 1e6


def test_periodic_system_refused_unless_allowed():
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(openmm.Vec3(2, 0, 0), openmm.Vec3(0, 2, 0), openmm.Vec3(0, 0, 2))
    nb = openmm.NonbondedForce()
    nb.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    nb.setCutoffDistance(0.9)
    for _ in range(2):
        system.addParticle(39.9)
        nb.addParticle(0.0, 0.34, 0.99)
    system.addForce(nb)
    with pytest.raises(PeriodicSystemError, match="periodic"):
        OpenMMEnergy(system, temperature=300.0, platform="Reference")
    energy = OpenMMEnergy(system, temperature=300.0, platform="Reference", allow_periodic=True)
    assert torch.isfinite(energy([[[0, 0, 0], [0.4, 0, 0]]])).all()


# ---------------------------------------------------------------------- worker pool
def test_batch_is_sent_in_chunks(energies, molecular_systems):
    energy = energies("ala_vacuum", 2)
    energy(perturbed(molecular_systems["ala_vacuum"], 1000))
    assert 2 <= energy._impl.last_n_chunks <= 2 * energy._impl.chunks_per_worker


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_killed_idle_worker_is_replaced(energies, molecular_systems):
    ms = molecular_systems["ala_implicit"]
    energy = energies("ala_implicit", 2)
    x = perturbed(ms, 50, scale=0.005, seed=7)
    expected = energies("ala_implicit", 1)(x)
    victim = energy.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    start = time.monotonic()
    u = energy(x)
    assert time.monotonic() - start < 15
    assert torch.equal(u, expected)
    assert victim not in energy.worker_pids and len(energy.worker_pids) == 2


def test_worker_killed_mid_run_is_replaced(energies, molecular_systems):
    ms = molecular_systems["ala_implicit"]
    energy = energies("ala_implicit", 2)
    pool = energy._impl
    pool.wait_until_ready()  # a replacement from an earlier test may still be starting
    x = perturbed(ms, 3000, scale=0.005, seed=8)
    expected = energies("ala_implicit", 1)(x)
    restarts = pool.restarts
    victim = energy.worker_pids[1]
    timer = threading.Timer(0.1, os.kill, (victim, signal.SIGKILL))
    timer.start()
    start = time.monotonic()
    u = energy(x)
    timer.join()
    assert time.monotonic() - start < 30
    assert pool.restarts == restarts + 1  # detected during the call, not afterwards
    assert torch.equal(u, expected)


def test_pool_start_error_is_clear(molecular_systems):
    ms = molecular_systems["double_well"]
    with pytest.raises(WorkerError, match="NoSuchPlatform"):
        WorkerPool(ms.system, "NoSuchPlatform", n_workers=2)


def test_close_stops_workers_quickly(molecular_systems):
    ms = molecular_systems["double_well"]
    with OpenMMEnergy(ms, platform="Reference", n_workers=2) as energy:
        pids = energy.worker_pids
        assert energy([[[1.0, 0.5, 0.0]]]).item() == pytest.approx(-3.875)
        start = time.monotonic()
    assert time.monotonic() - start < 3
    assert not any(_alive(p) for p in pids)
    with pytest.raises(WorkerError, match="closed"):
        energy([[[1.0, 0.5, 0.0]]])
    energy.close()  # idempotent


def test_torch_threads_capped():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with capped_torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------- energy service
def _oscillator_system(k: float) -> openmm.System:
    """A fresh 2-particle System (a spring of constant ``k``) that no other test has timed."""
    system = openmm.System()
    for _ in range(2):
        system.addParticle(12.0)
    bond = openmm.HarmonicBondForce()
    bond.addBond(0, 1, 0.15, k)
    system.addForce(bond)
    return system


@pytest.mark.parametrize("platform", ["Reference", None])
def test_energy_for_is_one_energy_per_system_and_temperature(molecular_systems, platform):
    ms = molecular_systems["ala_implicit"]
    cold = energy_for(ms, platform=platform)
    assert energy_for(ms, platform=platform) is cold and cold.temperature == ms.temperature
    hot = energy_for(ms, 450.0, platform=platform)
    assert hot is not cold and hot.temperature == 450.0
    assert energy_for(ms.with_temperature(450.0), platform=platform) is hot
    assert energy_for(ms.system, temperature=450.0 * unit.kelvin, reference_positions=ms.positions,
                      platform=platform) is hot
    assert hot._impl is cold._impl  # one set of contexts serves every temperature
    assert energy_for(ms, platform="Reference", n_workers=1, backend="openmm") is energy_for(ms, platform="Reference")
    # the values: OpenMM's own Context, through the Quantity API, at each temperature (float64)
    x = perturbed(ms, 6, scale=0.005, seed=11)
    for energy, at in ((cold, ms), (hot, ms.with_temperature(450.0))):
        u_ref, f_ref = direct(at, x, cold.platform_name, cold.properties)
        np.testing.assert_allclose(energy(x).numpy(), u_ref, rtol=1e-9, atol=0)
        np.testing.assert_allclose(energy.evaluate(x)[1].numpy(), f_ref, rtol=1e-9, atol=1e-9 * np.abs(f_ref).max())
        assert energy.reference_energy == pytest.approx(direct(at, ms.positions[None], cold.platform_name,
                                                               cold.properties)[0][0], rel=1e-9)
    assert cold.at_temperature(ms.temperature) is cold


def test_platform_is_timed_once_per_system(monkeypatch):
    calls = []
    real = platforms._time_platform

    def counted(system, name, *args):  # the real timing, counted
        calls.append(name)
        return real(system, name, *args)

    monkeypatch.setattr(platforms, "_time_platform", counted)
    system = _oscillator_system(1234.5)
    first = energy_for(system, temperature=300.0)
    n_timed = len(calls)
    assert n_timed == len([c for c in platforms.CANDIDATES if c in platforms.available_platforms()])
    assert set(first.platform_choice.timings) == set(calls)
    # other temperatures, a fresh OpenMMEnergy, an equal copy of the System: no timing again
    energy_for(system, temperature=600.0)
    fresh = OpenMMEnergy(system, temperature=350.0)
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    assert energy_for(copy, temperature=300.0) is first  # equal Systems share one energy
    assert len(calls) == n_timed
    assert fresh.platform_choice is first.platform_choice
    assert sum(key[0] == platforms._system_key(system) for key in platforms._CACHE) == 1


def test_changed_system_gets_a_new_energy():
    system = _oscillator_system(100.0)
    before = energy_for(system, temperature=300.0, platform="Reference")
    x = [[[0, 0, 0], [0.25, 0, 0]]]
    system.getForce(0).setBondParameters(0, 0, 1, 0.15, 400.0)  # changed after first use
    after = energy_for(system, temperature=300.0, platform="Reference")
    assert after is not before
    assert after(x).item() == pytest.approx(4 * before(x).item(), rel=1e-12)


def test_energy_for_bad_input(molecular_systems):
    ms = molecular_systems["double_well"]
    with pytest.raises(ValueError, match="unknown option.*'n_worker'"):
        energy_for(ms, n_worker=2)
    with pytest.raises(ValueError, match="needs a temperature"):
        energy_for(ms.system)
    with pytest.raises(ValueError, match="temperature must be positive"):
        energy_for(ms, -5.0)
    with pytest.raises(TypeError, match="MolecularSystem or an openmm.System"):
        energy_for("double_well")


def test_energy_for_from_threads(molecular_systems):
    """Concurrent callers get the same objects and correct values (one context, serialised by its lock)."""
    ms = molecular_systems["ala_vacuum"]
    x = perturbed(ms, 20, scale=0.005, seed=12)
    expected = {t: direct(ms.with_temperature(t), x, "Reference")[0] for t in (300.0, 400.0)}
    results, errors = [], []

    def work(t):
        try:
            for _ in range(5):
                energy = energy_for(ms, t, platform="Reference")
                results.append((t, energy, energy(x).numpy()))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in (300.0, 400.0) * 3]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert len({id(e) for t, e, _ in results if t == 300.0}) == 1
    for t, _, u in results:
        np.testing.assert_allclose(u, expected[t], rtol=1e-12)


def test_cached_worker_pools_are_closed(molecular_systems):
    ms = molecular_systems["double_well"]
    first = energy_for(ms, platform="Reference", n_workers=2)
    pids = first.worker_pids
    assert len(pids) == 2 and not first.closed
    first.close()  # closed by a user anyway: the next call builds a fresh one
    assert first.closed and not any(_alive(p) for p in pids)
    second = energy_for(ms, platform="Reference", n_workers=2)
    assert second is not first and second([[[1.0, 0.5, 0.0]]]).item() == pytest.approx(-3.875)
    pids = second.worker_pids
    close_energies()  # what interpreter exit runs
    assert second.closed and not any(_alive(p) for p in pids)
    assert energy_for(ms, platform="Reference") is not None


def test_deprecated_reduced_energy_delegates(molecular_systems):
    ms = molecular_systems["double_well"]
    x = np.array([[[1.0, 0.5, 0.0]], [[-1.7, -0.3, 0.0]]])
    with pytest.warns(DeprecationWarning, match="energy_for"):
        u = ms.reduced_energy(x)
    np.testing.assert_array_equal(u, energy_for(ms, platform="Reference")(x).numpy())
    with pytest.warns(DeprecationWarning):
        assert ms.reduced_energy().shape == (1,)


def test_public_names():
    import openmm_bg.energy as energy
    from openmm_bg.energy.context import ContextEvaluator

    assert set(energy.__all__) == {"OpenMMEnergy", "energy_for", "close_energies", "PeriodicSystemError",
                                   "WorkerError", "TorchBackendError", "select_platform", "available_platforms",
                                   "PlatformChoice"}
    assert all(hasattr(energy, name) for name in energy.__all__)
    assert ContextEvaluator.__module__ == "openmm_bg.energy.context"  # internals: importable from their modules
    assert WorkerPool.__module__ == "openmm_bg.energy.workers"
