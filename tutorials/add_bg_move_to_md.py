"""Add a Boltzmann-Generator move to an OpenMM/openmmtools MD script (alanine dipeptide, vacuum, 300 K).

The same openmmtools script twice:

1. plain Langevin dynamics (``LangevinDynamicsMove`` in an ``MCMCSampler``);
2. the same with a `BoltzmannGeneratorMove` added -- two lines::

       bg_move = BoltzmannGeneratorMove(generator, n_proposals=20, seed=0)
       move = mcmc.SequenceMove([langevin, bg_move])

The move proposes whole configurations from the trained generator and accepts them with the
Metropolis-Hastings rule, so the chain samples exactly the Boltzmann distribution of the
``ThermodynamicState`` -- it only mixes faster between C7eq and the rare C7ax basin. Both runs report
core-to-core transitions (C7ax core ``0.5 < phi < 1.8``, C7eq core ``phi < -0.5 or > 2.6`` rad) and
the move's acceptance.

Usage::

    python tutorials/add_bg_move_to_md.py --model my_generator.pt   # a saved generator
    python tutorials/add_bg_move_to_md.py --train-minutes 10        # train one first (ML, then ML + KL)
    python tutorials/add_bg_move_to_md.py --smoke                   # seconds: tiny MD, tiny generator

``--smoke`` only checks that everything runs (its generator is barely trained, so its proposals
are rarely accepted).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import openmm.unit as unit
import torch
from openmmtools import cache, mcmc, states

import openmm_bg
from openmm_bg.geometry import dihedral
from openmm_bg.mcmc import BoltzmannGeneratorMove
from openmm_bg.systems import load
from openmm_bg.systems.alanine import in_c7ax
from openmm_bg.systems.peptides import ALANINE_PHI
from openmm_bg.training import Stage, Trainer


def count_transitions(phi: np.ndarray) -> int:
    """Core-to-core transitions between C7eq and C7ax in a series of phi values (rad)."""
    last, n = 0, 0
    for p in phi:
        label = 1 if 0.5 < p < 1.8 else (-1 if (p < -0.5 or p > 2.6) else 0)
        if label:
            n += int(last != 0 and label != last)
            last = label
    return n


def get_generator(system, args) -> openmm_bg.BoltzmannGenerator:
    """Load ``--model`` or train a generator on short MD from a C7eq and a C7ax start."""
    if args.model is not None and Path(args.model).is_file():
        return openmm_bg.BoltzmannGenerator.load(args.model, system)
    if args.smoke:
        data = openmm_bg.simulate(system, n_frames=100, stride=50, seed=0, progress=False)
        gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16,), seed=0)
        Trainer(gen, data, [Stage("ml", steps=10, batch_size=64)], seed=0, progress=False).fit()
    else:
        # C7ax start from a short hot run, then 300 K MD in both basins
        hot = openmm_bg.simulate(system, n_frames=2000, stride=50, temperature=800.0, seed=0, progress=False)
        phi_hot = dihedral(hot.xyz.astype(np.float64), *ALANINE_PHI)
        start_ax = hot.xyz[np.flatnonzero((phi_hot > 0.7) & (phi_hot < 1.6))[0]].astype(np.float64)
        eq = openmm_bg.simulate(system, n_frames=800, stride=500, seed=1, progress=False)
        ax = openmm_bg.simulate(system, n_frames=400, stride=500, seed=2, positions=start_ax, progress=False)
        data = eq.join(ax)
        gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=4, hidden=(96, 96), seed=0)
        steps = max(100, int(args.train_minutes * 60 / 0.15))
        Trainer(gen, data, [Stage("ml", steps=steps // 3, lr=1e-3),
                            Stage("ml+kl", steps=steps - steps // 3, kl=1e-3, kl_end=0.1, lr=5e-4,
                                  kl_batch_size=256)], seed=0, progress=True).fit()
    gen.flow.eval()
    if args.model is not None:
        gen.save(args.model)
    return gen


def run(system, move, n_iterations: int, context_cache) -> tuple[np.ndarray, float]:
    """An openmmtools MCMC run; phi after every iteration and the wall time."""
    thermodynamic_state = states.ThermodynamicState(system.system, temperature=300 * unit.kelvin)
    sampler_state = states.SamplerState(system.positions * unit.nanometer)
    sampler = mcmc.MCMCSampler(thermodynamic_state, sampler_state, move)
    phi = []
    t0 = time.perf_counter()
    for _ in range(n_iterations):
        sampler.run(1, context_cache=context_cache)
        x = sampler.sampler_state.positions.value_in_unit(unit.nanometer)
        phi.append(float(dihedral(x[None], *ALANINE_PHI)[0]))
    return np.array(phi), time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="saved generator (loaded, or written after training)")
    parser.add_argument("--train-minutes", type=float, default=10.0)
    parser.add_argument("--iterations", type=int, default=2000, help="MCMC iterations of each run")
    parser.add_argument("--md-steps", type=int, default=500, help="Langevin steps (1 fs) per iteration")
    parser.add_argument("--n-proposals", type=int, default=20, help="BG proposals per iteration")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check that everything runs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.smoke:
        args.iterations, args.md_steps, args.n_proposals = 5, 20, 3
    system = load("alanine_dipeptide")  # AMBER ff96, vacuum, no constraints
    context_cache = cache.ContextCache(capacity=4)

    # --- 1. plain MD ------------------------------------------------------------------------------
    langevin = mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond,
                                         collision_rate=1.0 / unit.picosecond, n_steps=args.md_steps)
    phi, wall = run(system, langevin, args.iterations, context_cache)
    print(f"plain MD:           {count_transitions(phi)} transitions, C7ax fraction "
          f"{np.mean(in_c7ax(phi)):.3f}, {wall:.1f} s")

    # --- 2. the same MD with a Boltzmann-Generator move: two lines --------------------------------
    generator = get_generator(system, args)
    bg_move = BoltzmannGeneratorMove(generator, n_proposals=args.n_proposals, seed=0)
    move = mcmc.SequenceMove([langevin, bg_move])
    phi, wall = run(system, move, args.iterations, context_cache)
    print(f"MD + BG move:       {count_transitions(phi)} transitions, C7ax fraction "
          f"{np.mean(in_c7ax(phi)):.3f}, {wall:.1f} s")
    print(f"BG move acceptance: {bg_move.acceptance_rate:.4f} ({bg_move.n_accepted} of {bg_move.n_proposed})")


if __name__ == "__main__":
    main()
