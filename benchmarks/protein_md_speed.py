"""MD speed of trpzip2 (218 atoms, OBC2) before and after the loader folds its Lennard-Jones table.

"Before" is the System OpenMM's reader builds from the shipped prmtop (a ``CustomNonbondedForce``
LJ table beside the ``NonbondedForce``, because the stripped prmtop keeps unused water/ion LJ
types); "after" is ``load("trpzip2")`` (the table folded into the ``NonbondedForce``). Both run
``LangevinMiddleIntegrator`` at 300 K, 2 fs, H-bond constraints, friction 1/ps, timed over MD
steps (``integrator.step``, no per-step ``getState``), on Reference and CPU (1 thread), in wall time and
in the process's CPU time (which other processes on a shared machine do not inflate); the energies
and forces of both Systems are compared on MD frames. Also times the amber14 + GBn2 variant and
the generator's data check (`check_trajectory`) on ~5000 frames, and the folded System with
hydrogen mass repartitioning (``load("trpzip2", constraints="hbonds", hydrogen_mass=1.5)``) at
4 fs: same cost per step, twice the simulated time, and the same energies and forces as the 2 fs
System (compared on MD frames).

Run: ``nice -n 5 python benchmarks/protein_md_speed.py --steps 500 --seed 0`` (~5 min of one core);
writes ``benchmarks/results/protein_md_speed.json``. ``--only-hmr`` times only the 2 fs and the
4 fs HMR rows (a quick check; it writes ``protein_md_speed_hmr.json``).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
from _common import RESULTS

from openmm_bg.data import structure_path
from openmm_bg.systems import load
from openmm_bg.systems.trajectory import check_trajectory


def tabulated_system():
    """trpzip2 as OpenMM's reader builds it from the shipped prmtop (the System before the fix)."""
    prmtop = app.AmberPrmtopFile(str(structure_path("trpzip2/trpzip2.prmtop")))
    return prmtop.createSystem(implicitSolvent=app.OBC2, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)


def md_rate(system: openmm.System, positions: np.ndarray, platform: str, steps: int, seed: int,
            timestep: float = 0.002) -> dict:
    """ns/day of plain MD steps (``timestep`` ps) after 50 warm-up steps; best of two timed blocks."""
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, timestep * unit.picoseconds)
    integrator.setRandomNumberSeed(seed + 1)
    properties = {"Threads": "1"} if platform == "CPU" else {}
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName(platform), properties)
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 10.0, 200)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed + 2)
    integrator.step(50)
    best, best_cpu = np.inf, np.inf
    for _ in range(2):
        context.getState(getEnergy=True)  # synchronise
        start, start_cpu = time.perf_counter(), time.process_time()
        integrator.step(steps)
        context.getState(getEnergy=True)
        best, best_cpu = min(best, time.perf_counter() - start), min(best_cpu, time.process_time() - start_cpu)
    per_step, per_step_cpu = best / steps, best_cpu / steps
    x = context.getState(getPositions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    return {"platform": platform, "steps": steps, "timestep_ps": timestep, "ms_per_step": 1e3 * per_step,
            "ns_per_day": timestep * 86400 / per_step / 1000, "cpu_ms_per_step": 1e3 * per_step_cpu,
            "ns_per_day_cpu_time": timestep * 86400 / per_step_cpu / 1000, "finite": bool(np.isfinite(x).all()),
            "final_positions": x}


def compare(old: openmm.System, new: openmm.System, frames: np.ndarray) -> dict:
    """Largest relative energy difference and force difference (relative to the largest force)."""
    def evaluate(system):
        context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
        out = []
        for x in frames:
            context.setPositions(x)
            state = context.getState(getEnergy=True, getForces=True)
            out.append((state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value))
        return out

    de, df = 0.0, 0.0
    for (e0, f0), (e1, f1) in zip(evaluate(old), evaluate(new), strict=True):
        de = max(de, abs(e1 - e0) / abs(e0))
        df = max(df, float(np.abs(f1 - f0).max() / np.abs(f0).max()))
    return {"n_frames": len(frames), "max_rel_energy_diff": de, "max_rel_force_diff": df}


def data_check_time(system, frames: np.ndarray, n: int, seed: int) -> dict:
    """Wall time of `check_trajectory` on ``n`` frames made by perturbing MD frames (0.005 nm)."""
    rng = np.random.default_rng(seed)
    picks = frames[rng.integers(len(frames), size=n)]
    xyz = (picks + rng.normal(0.0, 0.005, picks.shape)).astype(np.float32)
    start, start_cpu = time.perf_counter(), time.process_time()
    check_trajectory(system, xyz)
    return {"n_frames": n, "n_atoms": system.n_atoms, "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - start_cpu}


def _print_rate(rate: dict) -> None:
    print(f"{rate['platform']:9s} {rate['variant']:26s} {rate['ms_per_step']:7.2f} ms/step  "
          f"{rate['ns_per_day']:7.1f} ns/day (CPU time {rate['cpu_ms_per_step']:.2f} ms/step, "
          f"{rate['ns_per_day_cpu_time']:.1f} ns/day)", flush=True)


HMR_LABEL = "after + HMR 1.5 Da, 4 fs"


def hmr_rows(new_sys, args, frames: list) -> tuple[list[dict], dict]:
    """MD rows of ``load("trpzip2", constraints="hbonds", hydrogen_mass=1.5)`` at 4 fs (Reference, CPU 1 thread),
    and its energies and forces against the 2 fs System on the MD frames (the given ones and its own)."""
    hmr = load("trpzip2", constraints="hbonds", hydrogen_mass=1.5)
    rows = []
    for platform in ("Reference", "CPU"):
        rate = md_rate(hmr.system, new_sys.positions, platform, args.steps, args.seed, timestep=0.004)
        frames.append(rate.pop("final_positions"))
        rate["variant"] = HMR_LABEL
        rows.append(rate)
        _print_rate(rate)
    energies = compare(new_sys.system, hmr.system, np.asarray(frames))
    print("2 fs System vs HMR System on", energies)
    return rows, energies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="timed MD steps per block (default 500)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-frames", type=int, default=5000)
    parser.add_argument("--only-hmr", action="store_true", help="time only the folded System at 2 fs and with "
                                                                "HMR at 4 fs (writes protein_md_speed_hmr.json)")
    args = parser.parse_args()
    new_sys = load("trpzip2", constraints="hbonds")
    if args.only_hmr:
        results, frames = {"system": "trpzip2 (218 atoms), OBC2, 300 K, HBonds, friction 1/ps", "md": []}, []
        for platform in ("Reference", "CPU"):
            rate = md_rate(new_sys.system, new_sys.positions, platform, args.steps, args.seed)
            frames.append(rate.pop("final_positions"))
            rate["variant"] = "after (folded)"
            results["md"].append(rate)
            _print_rate(rate)
        rows, results["energies_hmr"] = hmr_rows(new_sys, args, frames)
        results["md"] += rows
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "protein_md_speed_hmr.json").write_text(json.dumps(results, indent=1))
        return
    old = tabulated_system()
    forces_old = sorted(type(f).__name__ for f in old.getForces())
    forces_new = sorted(type(f).__name__ for f in new_sys.system.getForces())
    results = {"system": "trpzip2 (218 atoms), OBC2, 300 K, 2 fs, HBonds, friction 1/ps",
               "forces_before": forces_old, "forces_after": forces_new, "md": []}
    frames = [new_sys.positions]
    variants = [("before (tabulated LJ)", old), ("after (folded)", new_sys.system),
                ("amber14 + GBn2", load("trpzip2", constraints="hbonds", forcefield="amber14").system)]
    for platform in ("Reference", "CPU"):
        for label, system in variants:
            rate = md_rate(system, new_sys.positions, platform, args.steps, args.seed)
            frames.append(rate.pop("final_positions"))
            rate["variant"] = label
            results["md"].append(rate)
            _print_rate(rate)
    for platform in ("Reference", "CPU"):
        rows = {r["variant"]: r for r in results["md"] if r["platform"] == platform}
        results[f"speedup_{platform}"] = (rows["before (tabulated LJ)"]["ms_per_step"]
                                         / rows["after (folded)"]["ms_per_step"])
        results[f"speedup_cpu_time_{platform}"] = (rows["before (tabulated LJ)"]["cpu_ms_per_step"]
                                                  / rows["after (folded)"]["cpu_ms_per_step"])
        print(f"speed-up {platform}: {results[f'speedup_{platform}']:.1f}x wall, "
              f"{results[f'speedup_cpu_time_{platform}']:.1f}x CPU time")
    no_gb = copy.deepcopy(new_sys.system)  # where the time of the folded System goes (not a physical model)
    for k in reversed(range(no_gb.getNumForces())):
        if isinstance(no_gb.getForce(k), openmm.GBSAOBCForce):
            no_gb.removeForce(k)
    rate = md_rate(no_gb, new_sys.positions, "CPU", args.steps, args.seed)
    rate.pop("final_positions")
    results["cpu_without_gbsa"] = rate
    print(f"CPU without GBSAOBCForce: CPU time {rate['cpu_ms_per_step']:.2f} ms/step", flush=True)
    rows, results["energies_hmr"] = hmr_rows(new_sys, args, frames)
    results["md"] += rows
    frames = np.asarray(frames)
    results["energies"] = compare(old, new_sys.system, frames)
    print("before vs after on", results["energies"])
    results["data_check"] = data_check_time(new_sys, frames, args.check_frames, args.seed)
    print("check_trajectory:", results["data_check"])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "protein_md_speed.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
