"""Mixing benchmark: C7eq <-> C7ax transitions of alanine dipeptide (vacuum, 300 K) with and without
a Boltzmann-Generator move.

Counts *core-to-core* transitions (cores: C7ax ``0.5 < phi < 1.8``, C7eq ``phi < -0.5 or phi > 2.6``
rad; a transition is a visit to one core after the last core visited was the other one, so
recrossings of a dividing line do not count), per wall-clock second and per energy evaluation, for

1. plain Langevin MD (OpenMM ``LangevinMiddleIntegrator``, 1 fs, 1/ps, phi read every 0.1 ps) at
   300 K. Plain MD almost never makes this transition at 300 K; with zero transitions in the run,
   the rate is *bounded* by the 95 % Poisson upper limit ``3 / run length``. Optionally
   (``--hot``) MD at higher temperatures gives an Arrhenius extrapolation to 300 K (approximate:
   it assumes a temperature-independent barrier and prefactor);
2. Langevin + BG move: openmmtools ``MCMCSampler`` with ``SequenceMove([LangevinDynamicsMove,
   BoltzmannGeneratorMove])``, phi read after every iteration (jumps inside one iteration that
   return to the same core are not counted: a lower bound).

On a shared machine the wall-clock rates of the two runs (measured one after the other) are only
comparable under similar load; the process CPU times (``cpu_s``) are reported as well.
Energy evaluations: one per MD step; per BG ``apply`` one for the current configuration and one per
proposal that lies in the domain with the right chirality. The generator comes from ``--model`` (a
file written by ``BoltzmannGenerator.save`` for vacuum alanine dipeptide without constraints) or is
trained here for ``--train-minutes`` (ML on 300 K MD from a C7eq and a C7ax start, then ML + KL).

    python benchmarks/mcmc_mixing.py --train-minutes 5 --md-seconds 120 --chain-seconds 120
    python benchmarks/mcmc_mixing.py --model benchmarks/cache/alanine_vacuum_realnvp.bg

Results: printed and written to ``benchmarks/results/mcmc_mixing.json``. Target: >= 100x more
transitions per wall second with the move. Not a CI test.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import mdtraj
import numpy as np
import openmm
import openmm.unit as unit
import torch
from _common import RESULTS, CoreTransitions, arrhenius, fastest_platform, hot_c7ax_start, langevin_phi

import openmm_bg
from openmm_bg.geometry import dihedral
from openmm_bg.mcmc import BoltzmannGeneratorMove
from openmm_bg.systems import MolecularSystem, load
from openmm_bg.systems.alanine import in_c7ax
from openmm_bg.systems.peptides import ALANINE_PHI
from openmm_bg.training import Stage, Trainer


def _phi(x: np.ndarray) -> np.ndarray:
    return dihedral(np.asarray(x, dtype=np.float64), *ALANINE_PHI)


# ----------------------------------------------------------------------------------------- data, model
def c7ax_start(system: MolecularSystem, seed: int) -> np.ndarray:
    """A configuration in the C7ax core from a short 800 K run (chirality kept by MD)."""
    return hot_c7ax_start(system, seed, n_frames=2000, stride=50)


def training_data(system: MolecularSystem, seed: int, ps_eq: float = 400.0, ps_ax: float = 200.0):
    """300 K MD frames (0.5 ps apart) from the reference (C7eq) and from a C7ax start."""
    eq = openmm_bg.simulate(system, n_frames=int(ps_eq * 2), stride=500, seed=seed, equilibration_steps=5000,
                            progress=False)
    ax = openmm_bg.simulate(system, n_frames=int(ps_ax * 2), stride=500, seed=seed + 1,
                            positions=c7ax_start(system, seed), equilibration_steps=5000, progress=False)
    return mdtraj.join([eq, ax])


class _TimedTrainer(Trainer):
    """A `Trainer` that stops at a wall-clock deadline (the machine may be shared and slow)."""

    deadline = math.inf

    @property
    def total_steps(self) -> int:
        full = sum(s.steps for s in self.stages)
        return full if time.perf_counter() < self.deadline else min(full, self.step)


def train_generator(system: MolecularSystem, seed: int = 0, minutes: float = 5.0, data=None,
                    n_blocks: int = 4, hidden: tuple[int, ...] = (96, 96)) -> openmm_bg.BoltzmannGenerator:
    """Build and train a generator for ``minutes`` of wall clock: ML (30 %), ML + KL with KL weight 0.05
    (40 %), then ML + KL with KL weight 0.3 (30 %), each phase stopped at its share of the budget."""
    data = training_data(system, seed) if data is None else data
    gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=n_blocks, hidden=hidden, seed=seed)
    phases = [(0.3, Stage("ml", steps=10**6, lr=1e-3, batch_size=256)),
              (0.4, Stage("ml+kl", steps=10**6, kl=0.05, lr=5e-4, batch_size=256, kl_batch_size=256)),
              (0.3, Stage("kl", steps=10**6, kl=0.3, lr=2e-4, batch_size=256, kl_batch_size=256))]
    for k, (share, stage) in enumerate(phases):
        trainer = _TimedTrainer(gen, data, [stage], seed=seed + k, progress=False)
        trainer.deadline = time.perf_counter() + share * minutes * 60
        trainer.fit()
    gen.flow.eval()
    return gen


# ----------------------------------------------------------------------------------------- runs
def run_plain_md(system: MolecularSystem, wall_seconds: float, temperature: float = 300.0, seed: int = 0,
                 start: np.ndarray | None = None, report_steps: int = 100) -> dict:
    """Langevin MD for ``wall_seconds``; core-to-core transitions."""
    md = langevin_phi(system, wall_seconds, temperature, seed, start=start, report_steps=report_steps)
    counter = CoreTransitions()
    counter.update(md["phi"])
    wall, cpu, steps = md["wall_s"], md["cpu_s"], md["steps"]
    return {"temperature_K": temperature, "platform": md["platform"], "wall_s": wall, "cpu_s": cpu,
            "steps": steps,
            "ns": steps * 1e-6, "transitions": counter.transitions, "energy_evaluations": steps,
            "transitions_per_s": counter.transitions / wall,
            "transitions_per_eval": counter.transitions / steps}


def run_chain(system: MolecularSystem, gen: openmm_bg.BoltzmannGenerator, wall_seconds: float, seed: int = 0,
              md_steps: int = 200, n_proposals: int = 20, temperature: float = 300.0,
              iterations: int | None = None) -> dict:
    """Langevin + BG move in an openmmtools ``MCMCSampler`` for ``wall_seconds``, or for exactly
    ``iterations`` iterations when given (then the chain does not depend on the machine's load)."""
    from openmmtools import cache, mcmc, states

    name, props = fastest_platform(system)
    platform = openmm.Platform.getPlatformByName(name)
    context_cache = cache.ContextCache(platform=platform, capacity=4, platform_properties=props or None)
    thermo = states.ThermodynamicState(system.system, temperature=temperature * unit.kelvin)
    bg = BoltzmannGeneratorMove(gen, n_proposals=n_proposals, seed=seed)
    langevin = mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond,
                                         collision_rate=1.0 / unit.picosecond, n_steps=md_steps,
                                         reassign_velocities=False)
    sampler = mcmc.MCMCSampler(thermo, states.SamplerState(system.positions * unit.nanometer),
                               mcmc.SequenceMove([langevin, bg]))
    sampler.run(1, context_cache=context_cache)  # warm up contexts
    bg.reset_statistics()
    counter = CoreTransitions()
    in_ax = []
    n_iterations, iterations = iterations, 0
    t0, c0 = time.perf_counter(), time.process_time()
    while (iterations < n_iterations if n_iterations is not None else time.perf_counter() - t0 < wall_seconds):
        sampler.run(1, context_cache=context_cache)
        iterations += 1
        phi = float(_phi(sampler.sampler_state.positions.value_in_unit(unit.nanometer)))
        counter.update(phi)
        in_ax.append(bool(in_c7ax(phi)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    stats = bg.statistics
    bg_evals = iterations + stats["n_proposed"] - stats["n_out_of_domain"] - stats["n_inverted"]
    evals = iterations * md_steps + bg_evals
    frac = np.asarray(in_ax, dtype=float)
    nb = 20 if len(frac) >= 200 else max(2, len(frac) // 10)
    batches = frac[: len(frac) // nb * nb].reshape(nb, -1).mean(1) if len(frac) >= nb else frac
    return {"temperature_K": temperature, "platform": name, "wall_s": wall, "cpu_s": cpu,
            "iterations": iterations,
            "md_steps_per_iteration": md_steps, "n_proposals": n_proposals,
            "transitions": counter.transitions, "energy_evaluations": int(evals),
            "transitions_per_s": counter.transitions / wall,
            "transitions_per_eval": counter.transitions / evals,
            "acceptance": bg.acceptance_rate, "statistics": stats,
            "c7ax_fraction": float(frac.mean()),
            "c7ax_fraction_se": (float(batches.std(ddof=1) / math.sqrt(len(batches))) if len(batches) > 1
                                 else math.nan)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="saved generator (vacuum alanine, no constraints)")
    parser.add_argument("--train-minutes", type=float, default=5.0, help="training budget without --model")
    parser.add_argument("--data", type=Path, default=None,
                        help="training frames (mdtraj-readable, both basins); default: MD generated here")
    parser.add_argument("--save-model", type=Path, default=None,
                        help="where to save a generator trained here")
    parser.add_argument("--md-seconds", type=float, default=120.0, help="wall clock of plain MD at 300 K")
    parser.add_argument("--chain-seconds", type=float, default=120.0, help="wall clock of Langevin + BG move")
    parser.add_argument("--hot", type=float, nargs="*", default=[], help="extra plain-MD temperatures (K)")
    parser.add_argument("--hot-seconds", type=float, default=60.0)
    parser.add_argument("--md-steps", type=int, default=200, help="Langevin steps per chain iteration")
    parser.add_argument("--n-proposals", type=int, default=20, help="BG proposals per chain iteration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=RESULTS / "mcmc_mixing.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    ala = load("alanine_dipeptide")
    t0 = time.perf_counter()
    if args.model is not None:
        gen = openmm_bg.BoltzmannGenerator.load(args.model, ala)
        source = str(args.model)
    else:
        data = mdtraj.load(str(args.data)) if args.data is not None else None
        gen = train_generator(ala, seed=args.seed, minutes=args.train_minutes, data=data)
        source = f"trained here ({args.train_minutes:g} min budget)"
        if args.save_model is not None:
            gen.save(args.save_model)
    t_model = time.perf_counter() - t0
    with torch.no_grad():
        samples = gen.sample(2000, seed=args.seed)
    ess = float(samples.ess_fraction)
    chain = run_chain(ala, gen, args.chain_seconds, seed=args.seed, md_steps=args.md_steps,
                      n_proposals=args.n_proposals)
    md = run_plain_md(ala, args.md_seconds, seed=args.seed)
    hot = [run_plain_md(ala, args.hot_seconds, temperature=t, seed=args.seed) for t in args.hot]
    md_rate = md["transitions_per_s"]
    md_bound = max(md["transitions"], 3.0) / md["wall_s"]  # 95 % Poisson upper limit for 0 events
    md_bound_eval = max(md["transitions"], 3.0) / md["steps"]
    fit = arrhenius([(r["temperature_K"], r["transitions_per_s"]) for r in hot if r["transitions"] > 0])
    extrapolated = fit[0] if fit is not None else None
    result = {
        "system": "alanine_dipeptide vacuum (AMBER ff96), 300 K, no constraints",
        "model": source, "model_seconds": t_model, "ess_fraction_2000_samples": ess,
        "plain_md": md, "plain_md_hot": hot, "langevin_plus_bg": chain,
        "plain_md_rate_per_s_upper_bound": md_bound if md["transitions"] == 0 else None,
        "plain_md_rate_per_s_arrhenius": extrapolated,
        "speedup_per_wall_s_lower_bound": chain["transitions_per_s"] / md_bound,
        "speedup_per_eval_lower_bound": chain["transitions_per_eval"] / md_bound_eval,
        "speedup_per_wall_s_measured": chain["transitions_per_s"] / md_rate if md_rate > 0 else None,
        "speedup_per_wall_s_vs_arrhenius": (chain["transitions_per_s"] / extrapolated if extrapolated
                                            else None),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=float))
    print(f"model: {source} ({t_model:.0f} s), ESS/N of 2000 samples: {ess}")
    print(f"plain MD 300 K: {md['transitions']} transitions in {md['ns']:.2f} ns / {md['wall_s']:.0f} s "
          f"({md['platform']}); rate < {md_bound:.3g}/s (95 %) if none")
    for h in hot:
        print(f"plain MD {h['temperature_K']:g} K: {h['transitions']} transitions in {h['ns']:.2f} ns / "
              f"{h['wall_s']:.0f} s")
    if extrapolated:
        print(f"Arrhenius extrapolation to 300 K: {extrapolated:.3g} transitions/s")
    print(f"Langevin + BG move: {chain['transitions']} transitions in {chain['wall_s']:.0f} s "
          f"({chain['iterations']} iterations, {chain['energy_evaluations']} energy evaluations), "
          f"acceptance {chain['acceptance']:.4f}, C7ax fraction {chain['c7ax_fraction']:.4f} "
          f"+- {chain['c7ax_fraction_se']:.4f}")
    print(f"speed-up per wall second >= {result['speedup_per_wall_s_lower_bound']:.3g}x, "
          f"per energy evaluation >= {result['speedup_per_eval_lower_bound']:.3g}x "
          "(against the plain-MD bound)")
    return result


if __name__ == "__main__":
    main()
