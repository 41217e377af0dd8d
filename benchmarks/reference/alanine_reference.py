"""Reference Delta A = A(C7ax) - A(C7eq) of alanine dipeptide (AMBER ff96, 300 K) by several methods.

1. Parallel tempering (replica exchange in temperature) with plain OpenMM contexts: the 300 K
   replica samples the Boltzmann distribution; Delta A from its C7ax population, error from a block
   bootstrap over exchange iterations.
2. Umbrella sampling along phi (harmonic windows on the circle) analysed with MBAR (pymbar); psi
   relaxes freely inside every window. Error from a block bootstrap within windows.

3. MD with a static bias along phi that cancels the umbrella's phi profile (a Fourier fit of the
   forward and reverse umbrella runs), reweighted exactly with ``exp(+V_bias / kT)``: phi crosses its
   barriers hundreds of times per nanosecond and psi, never biased, relaxes on its own clock, which
   removes the psi hysteresis of the windowed umbrella. Error from a block bootstrap over time.

4. Well-tempered metadynamics along phi (OpenMM's ``Metadynamics``): the free-energy profile
   ``F(phi) = -(gamma / (gamma - 1)) V(phi)`` of the converged bias, integrated over each basin. No
   sample is reweighted and the bias is built on the fly, so it shares nothing with method 3; its
   error is the spread of the estimates over the last half of the run (a convergence measure).
5. Implicit solvent only: the vacuum biased MD of method 3 (positions saved), reweighted exactly to
   the implicit-solvent ensemble with ``log w = V_bias / kT + u_vacuum - u_implicit`` (a free-energy
   perturbation over the solvation energy; its overlap is reported as the ESS of those weights).
   It shares no implicit-solvent trajectory with method 3, so it cross-checks the implicit value.

Plain MD at 300 K almost never enters C7ax, so the methods cross-check each other. The result
is cached in ``alanine_reference.json`` beside this script; other benchmarks read it.

    python benchmarks/reference/alanine_reference.py --solvent vacuum --method pt
    python benchmarks/reference/alanine_reference.py --solvent vacuum --method umbrella
    python benchmarks/reference/alanine_reference.py --solvent vacuum --method biased-md --ns 8
    python benchmarks/reference/alanine_reference.py --solvent implicit --method vacuum-reweighted --ns 20
    python benchmarks/reference/alanine_reference.py --solvent implicit --method metadynamics --ns 5 --platform CPU

Each run adds or replaces its entry under ``{solvent}: {"runs": {...}}`` and recomputes the combined
value (inverse-variance mean; its error scaled by sqrt(chi^2 / dof) when that exceeds 1, widened and
flagged ``"consistent": false`` when the runs disagree) under
``{solvent}: {"delta_a_kT", "error_kT"}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit

from openmm_bg.constants import kT_kJ_per_mol
from openmm_bg.energy import energy_for
from openmm_bg.systems import load
from openmm_bg.systems.peptides import ALANINE_PHI, ALANINE_PSI, C7AX_PHI_RANGE

HERE = Path(__file__).resolve().parent
RESULT = HERE / "alanine_reference.json"
CACHE = HERE.parent / "cache"


def _platform(name: str) -> tuple[openmm.Platform, dict]:
    """The named OpenMM platform, one thread for CPU (the other core trains)."""
    return openmm.Platform.getPlatformByName(name), ({"Threads": "1"} if name == "CPU" else {})


def _biased_context(system, omm: openmm.System, seed: int, platform: str):
    """``(context, integrator)``: 300 K Langevin (1 fs, 1/ps) on ``omm`` (the system plus a bias force),
    started from the system's positions."""
    integrator = openmm.LangevinMiddleIntegrator(system.temperature * unit.kelvin, 1.0 / unit.picosecond,
                                                 0.001 * unit.picoseconds)
    integrator.setRandomNumberSeed(seed + 1)
    context = openmm.Context(omm, integrator, *_platform(platform))
    context.setPositions(system.positions)
    context.setVelocitiesToTemperature(system.temperature * unit.kelvin, seed + 1)
    return context, integrator


def _phi_psi(positions: np.ndarray) -> tuple[float, float]:
    from openmm_bg.geometry import dihedral

    return (float(dihedral(positions[None], *ALANINE_PHI)[0]), float(dihedral(positions[None], *ALANINE_PSI)[0]))


def _save_samples(name: str, **arrays) -> Path:
    """Cache the reference's (phi, psi) samples and weights for the 2D-histogram comparison."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}.npz"
    np.savez_compressed(path, **arrays)
    return path


def _in_c7ax(phi: np.ndarray) -> np.ndarray:
    lo, hi = C7AX_PHI_RANGE
    return (phi > lo) & (phi < hi)


def _delta_a(indicator: np.ndarray, weights: np.ndarray | None = None) -> float:
    w = np.ones_like(indicator, dtype=float) if weights is None else weights
    p = w[indicator].sum() / w.sum()
    if not 0 < p < 1:
        return math.inf if p == 0 else -math.inf
    return -math.log(p / (1 - p))


def _block_bootstrap(values: np.ndarray, n_blocks: int, estimator, n_boot: int, rng) -> float:
    blocks = np.array_split(values, n_blocks)
    estimates = []
    for _ in range(n_boot):
        pick = rng.integers(0, n_blocks, n_blocks)
        estimates.append(estimator(np.concatenate([blocks[i] for i in pick])))
    estimates = np.array(estimates)
    return float(np.std(estimates[np.isfinite(estimates)], ddof=1))


def parallel_tempering(solvent: str, n_iterations: int, steps_per_iteration: int, temperatures, seed: int,
                       platform: str) -> dict:
    system = load("alanine_dipeptide", solvent=solvent)
    rng = np.random.default_rng(seed)
    contexts, integrators = [], []
    for k, t in enumerate(temperatures):
        integrator = openmm.LangevinMiddleIntegrator(t * unit.kelvin, 1.0 / unit.picosecond,
                                                     0.001 * unit.picoseconds)
        integrator.setRandomNumberSeed(seed * 100 + k + 1)
        context = openmm.Context(system.system, integrator, *_platform(platform))
        context.setPositions(system.positions)
        context.setVelocitiesToTemperature(t * unit.kelvin, seed * 100 + k + 1)
        contexts.append(context)
        integrators.append(integrator)
    betas = np.array([1.0 / kT_kJ_per_mol(t) for t in temperatures])
    phi_300 = np.empty(n_iterations)
    psi_300 = np.empty(n_iterations)
    accepted, attempted = 0, 0
    start = time.perf_counter()
    for it in range(n_iterations):
        for integrator in integrators:
            integrator.step(steps_per_iteration)
        states = [c.getState(getEnergy=True, getPositions=True, getVelocities=True) for c in contexts]
        energies = np.array([s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) for s in states])
        order = list(range(len(contexts)))
        for i in range(it % 2, len(contexts) - 1, 2):
            j = i + 1
            attempted += 1
            log_acc = (betas[i] - betas[j]) * (energies[order[i]] - energies[order[j]])
            if log_acc >= 0 or rng.random() < math.exp(log_acc):
                order[i], order[j] = order[j], order[i]
                accepted += 1
        for k, context in enumerate(contexts):
            src = states[order[k]]
            if order[k] != k:
                scale = math.sqrt(temperatures[k] / temperatures[order[k]])
                context.setPositions(src.getPositions())
                context.setVelocities(src.getVelocities() * scale)
        pos0 = states[order[0]].getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        phi_300[it], psi_300[it] = _phi_psi(np.asarray(pos0))
        if (it + 1) % max(1, n_iterations // 20) == 0:
            frac = _in_c7ax(phi_300[:it + 1]).mean()
            print(f"  PT {it + 1}/{n_iterations}: C7ax fraction {frac:.4f}, exchange acceptance "
                  f"{accepted / max(attempted, 1):.2f}, {time.perf_counter() - start:.0f} s", flush=True)
    burn = n_iterations // 10
    indicator = _in_c7ax(phi_300[burn:])
    _save_samples(f"alanine_{solvent}_pt", phi=phi_300[burn:], psi=psi_300[burn:],
                  log_weights=np.zeros(n_iterations - burn))
    delta = _delta_a(indicator)
    error = _block_bootstrap(indicator, 20, _delta_a, 500, np.random.default_rng(seed))
    return {"delta_a_kT": delta, "error_kT": error, "c7ax_fraction": float(indicator.mean()),
            "n_samples": int(indicator.size), "temperatures_K": list(map(float, temperatures)),
            "ns_per_replica": n_iterations * steps_per_iteration * 1e-6,
            "exchange_acceptance": accepted / max(attempted, 1), "wall_s": time.perf_counter() - start}


def _umbrella_force(k_kj: float) -> openmm.CustomTorsionForce:
    force = openmm.CustomTorsionForce("0.5*k_umb*dphi^2; dphi = min(dt, 2*pi - dt); dt = abs(theta - phi0); "
                                      "pi = 3.141592653589793")
    force.addGlobalParameter("k_umb", k_kj)
    force.addGlobalParameter("phi0", 0.0)
    force.addTorsion(*ALANINE_PHI, [])
    return force


def umbrella(solvent: str, n_windows: int, k_kj: float, equilibration_ps: float, production_ps: float,
             seed: int, platform: str, reverse: bool = False) -> dict:
    import pymbar

    system = load("alanine_dipeptide", solvent=solvent)
    omm = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.system))
    omm.addForce(_umbrella_force(k_kj))
    kT = system.kT
    centres = np.linspace(-math.pi, math.pi, n_windows, endpoint=False)
    if reverse:  # walk the circle the other way round: hysteresis in psi shows up as a difference
        centres = centres[::-1].copy()
    context, integrator = _biased_context(system, omm, seed, platform)
    stride = 100  # 0.1 ps between samples
    n_samples = int(production_ps * 1000 / stride)
    phis = np.empty((n_windows, n_samples))
    psis = np.empty((n_windows, n_samples))
    start = time.perf_counter()
    # walk the windows in order along the circle, so each starts from its neighbour's end
    for w, centre in enumerate(centres):
        context.setParameter("phi0", float(centre))
        integrator.step(int(equilibration_ps * 1000))
        for s in range(n_samples):
            integrator.step(stride)
            pos = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            phis[w, s], psis[w, s] = _phi_psi(np.asarray(pos))
        print(f"  window {w + 1}/{n_windows} at phi0 = {centre:+.2f}: mean phi {phis[w].mean():+.2f}, "
              f"{time.perf_counter() - start:.0f} s", flush=True)

    def bias(phi: np.ndarray) -> np.ndarray:  # [n_windows, n] reduced bias energies
        d = np.abs(phi[None, :] - centres[:, None])
        d = np.minimum(d, 2 * math.pi - d)
        return 0.5 * k_kj * d**2 / kT

    def unbiased_log_weights(samples: np.ndarray) -> np.ndarray:  # samples: [n_windows, n]
        u_kn = bias(samples.ravel())
        n_k = np.full(n_windows, samples.shape[1])
        mbar = pymbar.MBAR(u_kn, n_k, verbose=False, initial_f_k=None)
        return -np.logaddexp.reduce(np.log(n_k)[:, None] + mbar.f_k[:, None] - u_kn, axis=0)

    def estimate(samples: np.ndarray) -> float:
        log_w = unbiased_log_weights(samples)
        return _delta_a(_in_c7ax(samples.ravel()), np.exp(log_w - log_w.max()))

    log_w = unbiased_log_weights(phis)
    delta = _delta_a(_in_c7ax(phis.ravel()), np.exp(log_w - log_w.max()))
    _save_samples(f"alanine_{solvent}_umbrella{'_reverse' if reverse else ''}", phi=phis.ravel(), psi=psis.ravel(),
                  log_weights=log_w)
    rng = np.random.default_rng(seed)
    n_blocks = 10
    blocks = np.array_split(np.arange(n_samples), n_blocks)
    boot = []
    for _ in range(40):
        resampled = np.stack([np.concatenate([phis[w, blocks[b]] for b in rng.integers(0, n_blocks, n_blocks)])
                              for w in range(n_windows)])
        boot.append(estimate(resampled))
    return {"delta_a_kT": delta, "error_kT": float(np.std(boot, ddof=1)), "n_windows": n_windows,
            "k_kJ_per_mol_rad2": k_kj, "ps_per_window": production_ps, "wall_s": time.perf_counter() - start}


def phi_bias_coefficients(n_harmonics: int = 8, bins: int = 72) -> np.ndarray:
    """Fourier coefficients (kT) of minus the phi free-energy profile of the cached vacuum umbrella runs.

    Returns ``c`` of shape ``[2 * n_harmonics]``: ``V(phi) / kT = sum_n c[2n] cos((n+1) phi) +
    c[2n+1] sin((n+1) phi)`` (constant dropped). Both the forward and the reverse run enter, so the
    bias does not depend on which way the umbrella went round."""
    profiles = []
    for name in ("umbrella", "umbrella_reverse"):
        path = CACHE / f"alanine_vacuum_{name}.npz"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run --method umbrella (and --reverse) in vacuum first")
        d = np.load(path)
        w = np.exp(d["log_weights"] - d["log_weights"].max())
        h, edges = np.histogram(d["phi"], bins=bins, range=(-math.pi, math.pi), weights=w)
        profiles.append(-np.log(np.maximum(h / h.sum(), 1e-12)))
    f = np.mean(profiles, axis=0)
    centres = 0.5 * (edges[1:] + edges[:-1])
    basis = np.stack([g((n + 1) * centres) for n in range(n_harmonics) for g in (np.cos, np.sin)], axis=1)
    coeffs, *_ = np.linalg.lstsq(np.c_[basis, np.ones_like(centres)], f, rcond=None)
    return -coeffs[:-1]


def _vacuum_bias_coefficients(scale: float) -> np.ndarray:
    """``scale`` x `phi_bias_coefficients`, taken from a biased-MD run recorded in the result file
    (all of them use that vacuum profile) so that no umbrella cache is needed."""
    table = json.loads(RESULT.read_text()) if RESULT.exists() else {}
    for entry in table.values():
        for run in entry.get("runs", {}).values():
            if "bias_coefficients_kT" in run and not run.get("bias_basin_shift_kT"):
                return scale / run["bias_scale"] * np.array(run["bias_coefficients_kT"])
    return scale * phi_bias_coefficients()


def _phi_bias_force(coeffs: np.ndarray, kT: float) -> openmm.CustomTorsionForce:
    terms = [f"({c * kT:.10g})*{'cos' if i % 2 == 0 else 'sin'}({i // 2 + 1}*theta)" for i, c in enumerate(coeffs)]
    force = openmm.CustomTorsionForce(" + ".join(terms))
    force.addTorsion(*ALANINE_PHI, [])
    return force


def _phi_bias(phi: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """V(phi) / kT of `phi_bias_coefficients`, shape of ``phi``."""
    return sum(c * (np.cos if i % 2 == 0 else np.sin)((i // 2 + 1) * phi) for i, c in enumerate(coeffs))


def c7ax_step_coefficients(shift: float, n_harmonics: int = 8, bins: int = 720) -> np.ndarray:
    """Fourier coefficients (kT, layout of `phi_bias_coefficients`) of ``shift`` x the C7ax indicator.

    Subtracted from a bias, they lower C7ax by about ``shift`` kT: the vacuum profile corrected towards
    the implicit-solvent one (whose C7ax lies ~1.4 kT higher). The fit's ripple only changes the
    variance, never the estimate (the reweighting uses the coefficients as fitted)."""
    centres = -math.pi + (np.arange(bins) + 0.5) * (2 * math.pi / bins)
    basis = np.stack([g((n + 1) * centres) for n in range(n_harmonics) for g in (np.cos, np.sin)], axis=1)
    coeffs, *_ = np.linalg.lstsq(np.c_[basis, np.ones_like(centres)], shift * _in_c7ax(centres), rcond=None)
    return coeffs[:-1]


def biased_md(solvent: str, ns: float, scale: float, seed: int, platform: str, basin_shift: float = 0.0,
              chunk_ns: float = 0.25, wall_limit_s: float = math.inf, checkpoint: Path | None = None,
              on_chunk=None) -> dict:
    """Method 3, written resumably: every ``chunk_ns`` the samples so far and the context's checkpoint go
    to ``checkpoint`` (an ``.npz``; a run started again with the same file continues from it) and
    ``on_chunk(result_so_far)`` is called. Stops after ``ns`` or after the chunk that passes
    ``wall_limit_s`` (this invocation's wall time), whichever comes first; ``wall_limit_s=0`` with a
    checkpoint only recomputes the result from it."""
    system = load("alanine_dipeptide", solvent=solvent)
    omm = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.system))
    coeffs = _vacuum_bias_coefficients(scale)
    if basin_shift:
        coeffs = coeffs - scale * c7ax_step_coefficients(basin_shift)
    omm.addForce(_phi_bias_force(coeffs, system.kT))
    context, integrator = _biased_context(system, omm, seed, platform)
    stride = 100  # 0.1 ps between samples
    n = int(ns * 1e6 / stride)
    phis, psis = np.empty(n), np.empty(n)
    done, wall_before = 0, 0.0
    if checkpoint is not None and checkpoint.exists():
        saved = np.load(checkpoint)
        if not np.allclose(saved["bias_coefficients_kT"], coeffs, rtol=0, atol=1e-12):
            raise ValueError(f"{checkpoint} was written with another bias: delete it or change --seed")
        done = int(saved["n_done"])
        if done > n:  # a longer run than asked for: keep all of it
            phis, psis, n = np.resize(phis, done), np.resize(psis, done), done
        phis[:done], psis[:done] = saved["phi"][:done], saved["psi"][:done]
        wall_before = float(saved["wall_s"])
        context.loadCheckpoint(saved["context"].tobytes())
        print(f"  resumed from {checkpoint}: {done * stride * 1e-6:.2f} ns done", flush=True)
    else:
        integrator.step(20_000)  # 20 ps equilibration
    chunk = max(1, int(chunk_ns * 1e6 / stride))
    start = time.perf_counter()

    def result(m: int) -> dict:
        log_w = _phi_bias(phis[:m], coeffs)

        def estimate(idx: np.ndarray) -> float:
            return _delta_a(_in_c7ax(phis[idx]), np.exp(log_w[idx] - log_w.max()))

        error = _block_bootstrap(np.arange(m), 20, estimate, 500, np.random.default_rng(seed))
        crossings = int(np.count_nonzero(np.diff(_in_c7ax(phis[:m]).astype(int)) != 0))
        out = {"delta_a_kT": estimate(np.arange(m)), "error_kT": error, "ns": m * stride * 1e-6, "bias_scale": scale,
               "c7ax_crossings": crossings, "bias_coefficients_kT": [float(c) for c in coeffs], "n_samples": m,
               "wall_s": wall_before + time.perf_counter() - start}
        if basin_shift:
            out["bias_basin_shift_kT"] = basin_shift
        return out

    while done < n and not (wall_limit_s <= 0 and done):
        stop = min(n, done + chunk)
        for s in range(done, stop):
            integrator.step(stride)
            pos = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
            phis[s], psis[s] = _phi_psi(np.asarray(pos))
        done = stop
        so_far = result(done)
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint.with_suffix(".tmp.npz")
            np.savez(tmp, phi=phis[:done], psi=psis[:done], n_done=done, wall_s=so_far["wall_s"],
                     bias_coefficients_kT=coeffs, context=np.frombuffer(context.createCheckpoint(), dtype=np.uint8))
            tmp.replace(checkpoint)
        print(f"  biased MD {so_far['ns']:.2f}/{ns:g} ns: Delta A so far {so_far['delta_a_kT']:.3f} "
              f"+- {so_far['error_kT']:.3f} kT, {so_far['wall_s']:.0f} s", flush=True)
        if on_chunk is not None:
            on_chunk(so_far)
        if time.perf_counter() - start > wall_limit_s:
            break
    log_w = _phi_bias(phis[:done], coeffs)
    _save_samples(f"alanine_{solvent}_biased_md", phi=phis[:done], psi=psis[:done], log_weights=log_w)
    return result(done)


def metadynamics(solvent: str, ns: float, seed: int, platform: str, bias_factor: float = 6.0,
                 height_kj: float = 1.0, width: float = 0.35, n_estimates: int = 20) -> dict:
    """Method 4: well-tempered metadynamics along phi; Delta A from the final free-energy profile."""
    from openmm.app.metadynamics import BiasVariable, Metadynamics

    system = load("alanine_dipeptide", solvent=solvent)
    omm = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system.system))
    cv = openmm.CustomTorsionForce("theta")
    cv.addTorsion(*ALANINE_PHI, [])
    phi_variable = BiasVariable(cv, -math.pi, math.pi, width, periodic=True, gridWidth=180)
    meta = Metadynamics(omm, [phi_variable], system.temperature * unit.kelvin, bias_factor,
                        height_kj * unit.kilojoule_per_mole, 500)
    integrator = openmm.LangevinMiddleIntegrator(system.temperature * unit.kelvin, 1.0 / unit.picosecond,
                                                 0.001 * unit.picoseconds)
    integrator.setRandomNumberSeed(seed + 1)
    simulation = openmm.app.Simulation(system.topology, omm, integrator, *_platform(platform))
    simulation.context.setPositions(system.positions)
    simulation.context.setVelocitiesToTemperature(system.temperature * unit.kelvin, seed + 1)

    def estimate() -> float:
        f = np.asarray(meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)) / system.kT
        grid = -math.pi + np.arange(len(f)) * (2 * math.pi / len(f))
        return _delta_a(_in_c7ax(grid), np.exp(-(f - f.min())))

    n_steps = int(ns * 1e6)
    chunk = n_steps // n_estimates
    estimates = []
    start = time.perf_counter()
    for k in range(n_estimates):
        meta.step(simulation, chunk)
        estimates.append(estimate())
        print(f"  metadynamics {(k + 1) * chunk * 1e-6:.2f}/{ns:g} ns: Delta A {estimates[-1]:.3f} kT, "
              f"{time.perf_counter() - start:.0f} s", flush=True)
    late = np.array(estimates[n_estimates // 2:])
    return {"delta_a_kT": estimates[-1], "error_kT": float(max(late.std(ddof=1), abs(late[-1] - late.mean()))),
            "ns": ns, "bias_factor": bias_factor, "height_kJ_per_mol": height_kj, "width_rad": width,
            "estimates_kT": [float(e) for e in estimates], "wall_s": time.perf_counter() - start}


def vacuum_reweighted(ns: float, scale: float, seed: int, platform: str, stride: int = 500) -> dict:
    """Method 5: vacuum MD biased along phi, every frame reweighted to implicit solvent (OBC1)."""
    from openmm_bg.geometry import dihedral

    vacuum, implicit = load("alanine_dipeptide", solvent="vacuum"), load("alanine_dipeptide", solvent="implicit")
    coeffs = _vacuum_bias_coefficients(scale)
    omm = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(vacuum.system))
    omm.addForce(_phi_bias_force(coeffs, vacuum.kT))
    context, integrator = _biased_context(vacuum, omm, seed, platform)
    integrator.step(20_000)  # 20 ps equilibration
    n = int(ns * 1e6 / stride)
    xyz = np.empty((n, vacuum.n_atoms, 3))
    start = time.perf_counter()
    for s in range(n):
        integrator.step(stride)
        xyz[s] = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if (s + 1) % max(1, n // 10) == 0:
            print(f"  vacuum biased MD {(s + 1) * stride * 1e-6:.2f}/{ns:g} ns, {time.perf_counter() - start:.0f} s",
                  flush=True)
    print(f"  implicit-solvent energies of {n} frames", flush=True)
    phis, psis = dihedral(xyz, *ALANINE_PHI), dihedral(xyz, *ALANINE_PSI)
    du = (energy_for(implicit, platform=platform)(xyz) - energy_for(vacuum, platform=platform)(xyz)).numpy()
    log_w = _phi_bias(phis, coeffs) - du
    _save_samples("alanine_implicit_vacuum_reweighted", phi=phis, psi=psis, log_weights=log_w)
    w = np.exp(log_w - log_w.max())
    in_ax = _in_c7ax(phis)

    def ess(mask: np.ndarray) -> float:
        return float(w[mask].sum() ** 2 / (w[mask] ** 2).sum())

    def estimate(idx: np.ndarray) -> float:
        return _delta_a(in_ax[idx], w[idx])

    error = _block_bootstrap(np.arange(n), 20, estimate, 500, np.random.default_rng(seed))
    return {"delta_a_kT": _delta_a(in_ax, w), "error_kT": error, "ns": ns, "n_samples": n,
            "ess_c7eq": ess(~in_ax), "ess_c7ax": ess(in_ax), "ess_fraction": ess(np.ones(n, bool)) / n,
            "solvation_energy_std_kT": float(np.std(du)), "bias_scale": scale,
            "bias_coefficients_kT": [float(c) for c in coeffs],
            "wall_s": time.perf_counter() - start}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvent", choices=["vacuum", "implicit"], default="vacuum")
    parser.add_argument("--method", default="pt",
                        choices=["pt", "umbrella", "biased-md", "metadynamics", "vacuum-reweighted"],
                        help="vacuum-reweighted: vacuum biased MD reweighted to --solvent implicit")
    parser.add_argument("--iterations", type=int, default=4000, help="PT exchange iterations")
    parser.add_argument("--steps", type=int, default=500, help="MD steps (1 fs) between exchanges")
    parser.add_argument("--temperatures", type=float, nargs="+",
                        default=[300.0, 360.0, 432.0, 518.0, 622.0, 746.0, 895.0], help="PT ladder (K)")
    parser.add_argument("--windows", type=int, default=36, help="umbrella windows along phi")
    parser.add_argument("--k", type=float, default=200.0, help="umbrella force constant (kJ/mol/rad^2)")
    parser.add_argument("--equilibration-ps", type=float, default=20.0)
    parser.add_argument("--production-ps", type=float, default=200.0)
    parser.add_argument("--reverse", action="store_true", help="umbrella windows in descending phi order")
    parser.add_argument("--ns", type=float, default=8.0, help="biased MD length (ns)")
    parser.add_argument("--bias-scale", type=float, default=0.9, help="share of the phi profile the bias cancels")
    parser.add_argument("--bias-basin-shift", type=float, default=0.0,
                        help="biased MD: lower C7ax in the bias by this much more (kT) than the vacuum profile "
                             "does (1.42: the implicit-minus-vacuum Delta A)")
    parser.add_argument("--chunk-ns", type=float, default=0.25,
                        help="biased MD: checkpoint and record the result so far every this many ns")
    parser.add_argument("--wall-limit-s", type=float, default=math.inf,
                        help="biased MD: stop (and record) after the chunk that passes this wall time; run the "
                             "same command again to continue from the checkpoint")
    parser.add_argument("--platform", default="Reference",
                        help="OpenMM platform (Reference is fastest in vacuum, CPU with OBC implicit solvent)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"alanine dipeptide ({args.solvent}), method {args.method}", flush=True)
    if args.method == "pt":
        result = parallel_tempering(args.solvent, args.iterations, args.steps, args.temperatures, args.seed,
                                    args.platform)
    elif args.method == "vacuum-reweighted":
        if args.solvent != "implicit":
            parser.error("--method vacuum-reweighted reweights vacuum MD to implicit solvent: use --solvent implicit")
        result = vacuum_reweighted(args.ns, args.bias_scale, args.seed, args.platform)
    elif args.method == "metadynamics":
        result = metadynamics(args.solvent, args.ns, args.seed, args.platform)
    elif args.method == "biased-md":
        key = _run_key(args)
        result = biased_md(args.solvent, args.ns, args.bias_scale, args.seed, args.platform,
                           basin_shift=args.bias_basin_shift, chunk_ns=args.chunk_ns, wall_limit_s=args.wall_limit_s,
                           checkpoint=CACHE / f"alanine_{args.solvent}_{key}_checkpoint.npz",
                           on_chunk=lambda r: _record(args, dict(r, seed=args.seed, complete=False), quiet=True))
        result["complete"] = result["n_samples"] >= int(args.ns * 1e4)
    else:
        result = umbrella(args.solvent, args.windows, args.k, args.equilibration_ps, args.production_ps,
                          args.seed, args.platform, reverse=args.reverse)
    result["seed"] = args.seed
    print(json.dumps(result, indent=1))
    _record(args, result)


def _run_key(args) -> str:
    key = args.method.replace("-", "_") + ("_reverse" if args.method == "umbrella" and args.reverse else "")
    return key + (f"_seed{args.seed}" if args.seed else "")


def _record(args, result: dict, quiet: bool = False) -> None:
    """Add or replace this run's entry in the result file and recompute the combined value."""
    import fcntl

    with open(RESULT.with_suffix(".lock"), "w") as lock:  # several runs (seeds) may record at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        table = json.loads(RESULT.read_text()) if RESULT.exists() else {}
        entry = table.setdefault(args.solvent, {})
        entry.setdefault("runs", {})[_run_key(args)] = result
        entry.update(combine(entry["runs"]))
        tmp = RESULT.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, indent=1) + "\n")
        tmp.replace(RESULT)
    if not quiet:
        print(f"{args.solvent}: Delta A(C7ax - C7eq) = {entry['delta_a_kT']:.3f} +- {entry['error_kT']:.3f} kT "
              f"(runs: {', '.join(entry['runs'])}; consistent: {entry['consistent']}) -> {RESULT}")


#: Runs of a reweighting method with fewer effective samples in C7ax than this are recorded, not combined:
#: their bootstrap error is not trustworthy.
MIN_ESS_C7AX = 30.0


def combine(runs: dict) -> dict:
    """Inverse-variance mean of the runs; its error is scaled by the Birge ratio sqrt(chi^2 per degree
    of freedom) when the runs scatter more than their own errors say (chi^2 / dof > 1, the Particle
    Data Group's scale factor); if they disagree (chi^2 / dof > 4), the error is widened by their
    spread instead and the entry is flagged, so that nobody trusts a number the methods do not agree
    on. Runs with ``ess_c7ax < MIN_ESS_C7AX`` are left out (listed under ``excluded``)."""
    excluded = sorted(k for k, r in runs.items() if r.get("ess_c7ax", math.inf) < MIN_ESS_C7AX)
    runs = {k: r for k, r in runs.items() if k not in excluded}
    values = np.array([r["delta_a_kT"] for r in runs.values()])
    errors = np.array([max(r["error_kT"], 1e-3) for r in runs.values()])
    weights = 1 / errors**2
    mean = float((weights * values).sum() / weights.sum())
    error = float(1 / math.sqrt(weights.sum()))
    chi2 = float((((values - mean) / errors) ** 2).sum() / max(len(values) - 1, 1))
    consistent = bool(chi2 <= 4.0)
    if chi2 > 1.0:
        error *= math.sqrt(min(chi2, 4.0))
    if not consistent:
        error = float(math.sqrt(error**2 + np.var(values, ddof=1)))
    return {"delta_a_kT": mean, "error_kT": error, "chi2_per_dof": chi2, "consistent": consistent,
            "excluded": excluded}


if __name__ == "__main__":
    main()
