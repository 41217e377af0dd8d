"""Tutorial 4: a mini-protein (trpzip2, 218 atoms, implicit solvent) -- a generator and a side-chain move.

The science
-----------
Trpzip2 (SWTWENGKWTWK-NH2) is a 12-residue beta hairpin held together by four stacked tryptophans.
A Boltzmann Generator for it uses the mixed transform: the backbone N, CA, C atoms as whitened
Cartesian coordinates (the core) and every other atom in bond, angle and torsion coordinates, with
an exact log-det (``openmm_bg.transforms.MixedTransform``; `BoltzmannGenerator.build` picks it for
any molecule). At 218 atoms, expect importance weights dominated by few samples -- ESS/N far below
1 % and Pareto k > 0.7 -- even where the raw samples look like the protein (measured with 0.75 x the
recipe on 320 ps of MD, ``benchmarks/README.md``: ESS/N 1e-4, k 7.3, 97 % valid samples, median energy
within one MD standard deviation, but only the main rotamer of several residues). The script reports both, with
the fraction of chemically valid samples (`openmm_bg.analysis.validity.valid_samples`).

Where the weights are too poor for reweighting, the generator's pieces still help MD: a
`openmm_bg.mcmc.TorsionMove` proposes new side-chain torsions (chi1, chi2, ...) of one residue at a
time from an exact von Mises mixture fitted on MD torsions, turning each rotor's branch rigidly,
accepted with ``min(1, exp(-du) q(chi)/q(chi'))``. Mixed with Langevin dynamics in an openmmtools
``SequenceMove`` it keeps the Boltzmann distribution and makes rotamer jumps that plain MD waits
nanoseconds for.

What you see
------------
In ``--output`` (default ``tutorial-output/04_protein``):

- ``energies.png``: potential energy (kT) of MD frames and raw generator samples (the Boltzmann
  Generator paper's figure);
- ``rmsd.png``: backbone RMSD to the native structure, MD vs raw samples;
- ``rotamers.png``: chi1 rotamer populations (g+, t, g-) per residue: MD, raw and reweighted samples;
- ``training.png`` and ``model.bg`` (reuse with ``--model``).

Run
---
``python tutorials/04_protein.py`` (2 ns of MD, the training recipe
``benchmarks/protein.py:protein_stages``), ``--model PATH`` to reuse a generator, or ``--smoke``
(about a minute; barely trained, only checks that everything runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mdtraj  # noqa: E402
import numpy as np  # noqa: E402
import openmm.unit as unit  # noqa: E402
import torch  # noqa: E402
from _common import tutorial_parser  # noqa: E402

import openmm_bg  # noqa: E402
from openmm_bg.analysis.free_energy import pymbar_module  # noqa: E402
from openmm_bg.analysis.protein import ROTAMERS, backbone_rmsd, core_transitions, rotamer_populations  # noqa: E402
from openmm_bg.analysis.validity import valid_samples  # noqa: E402
from openmm_bg.apps.plots import plot_history  # noqa: E402
from openmm_bg.energy import energy_for  # noqa: E402
from openmm_bg.mcmc import TorsionMove, side_chain_rotors, torsions_of  # noqa: E402
from openmm_bg.md import simulate  # noqa: E402
from openmm_bg.systems import load  # noqa: E402
from openmm_bg.training import Stage, Trainer  # noqa: E402

NAME = "04_protein"


def protein_stages(scale: float = 1.0) -> list[Stage]:
    """The training recipe for trpzip2: ML, then KL + ML (~0.34 / ~0.72 CPU-s per step, ~18 CPU-min at
    ``scale=1``; 0.75 took 25 min wall on 2 loaded cores: ``benchmarks/protein_training_speed.py``)."""
    return [Stage("ml", steps=max(1, int(2000 * scale)), lr=5e-4, lr_end=5e-5, batch_size=128),
            Stage("kl", steps=max(1, int(600 * scale)), ml=0.5, kl=1.0, lr=1e-4, lr_end=1e-5,
                  batch_size=128, kl_batch_size=64)]


def parse_args(argv=None) -> argparse.Namespace:
    parser = tutorial_parser(NAME, __doc__, smoke_help="about a minute: tiny MD and training (for CI)",
                             output_help="folder for the PNG files, the MD data and the trained model")
    parser.add_argument("--model", type=Path, default=None, help="use this saved generator instead of training")
    parser.add_argument("--md-ns", type=float, default=2.0, help="ns of training MD (2 fs steps, H-bond constraints)")
    parser.add_argument("--train-scale", type=float, default=1.0, help="multiplies the training steps")
    parser.add_argument("--samples", type=int, default=5000, help="generator samples in full mode")
    return parser.parse_args(argv)


def chi1_of(system, x) -> tuple[list[str], np.ndarray]:
    rotors = [r for r in side_chain_rotors(system.topology) if r.name.endswith("chi1")]
    return [r.name.split()[0] for r in rotors], torsions_of(np.asarray(x, dtype=np.float64), rotors)


def plot_energies(u_md, u_bg, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ok = np.isfinite(u_bg)
    lo = np.percentile(u_md, 0.5) - 20
    hi = np.percentile(u_md, 99.5) + 150
    bins = np.linspace(lo, hi, 60)
    ax.hist(u_md, bins=bins, density=True, alpha=0.6, label=f"MD ({len(u_md)} frames)")
    ax.hist(np.clip(u_bg[ok], lo, hi), bins=bins, density=True, alpha=0.6, label=f"BG raw ({ok.sum()} samples)")
    ax.set_xlabel("reduced potential energy u (kT)")
    ax.set_ylabel("density")
    ax.set_title("trpzip2: energies of MD and generator samples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rmsd(r_md, r_bg, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, max(0.3, float(np.nanmax(np.concatenate([r_md, r_bg])))), 50)
    ax.hist(r_md, bins=bins, density=True, alpha=0.6, label="MD")
    ax.hist(r_bg[np.isfinite(r_bg)], bins=bins, density=True, alpha=0.6, label="BG raw")
    ax.set_xlabel("backbone RMSD to native (nm)")
    ax.set_ylabel("density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_rotamers(names, populations: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    width = 0.8 / len(populations)
    pos = np.arange(len(names))
    for k, ax in enumerate(axes):
        for m, (label, pop) in enumerate(populations.items()):
            ax.bar(pos + m * width, pop[:, k], width, label=label)
        ax.set_xticks(pos + 0.4 - width / 2, names, rotation=60)
        ax.set_title(f"chi1 {ROTAMERS[k][0]}")
    axes[0].set_ylabel("population")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    torch.set_num_threads(1)
    args = parse_args(argv)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pymbar_module()
    small = args.smoke
    system = load("trpzip2", constraints="hbonds")
    print(f"{system.name}: {system.n_atoms} atoms, {system.system.getNumConstraints()} constraints, "
          f"{system.temperature} K")

    # 1. MD data (cached in the output folder): 2 fs steps, one frame per ps.
    n_frames, stride = (120, 2) if small else (int(args.md_ns * 1000), 500)
    cache = out / f"md_{n_frames}x{stride}.dcd"
    t0 = time.perf_counter()
    if cache.is_file():
        data = mdtraj.load(str(cache), top=mdtraj.Topology.from_openmm(system.topology))
    else:
        data = simulate(system, n_frames, stride, seed=args.seed, progress=not small, output=cache,
                        equilibration_steps=0 if small else 5000)
    print(f"MD: {data.n_frames} frames ({time.perf_counter() - t0:.0f} s)")

    # 2. The generator: mixed transform (Cartesian backbone core + internal side chains) and a flow.
    if args.model is not None:
        gen = openmm_bg.BoltzmannGenerator.load(args.model, system)
        print(f"loaded generator {args.model}")
    else:
        gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2 if small else 6,
                                                 hidden=(32, 32) if small else (256, 256), seed=args.seed)
        stages = ([Stage("ml", steps=8, lr=5e-4, batch_size=32),
                   Stage("kl", steps=2, ml=0.5, kl=1.0, lr=1e-4, batch_size=32, kl_batch_size=16)]
                  if small else protein_stages(args.train_scale))
        t0 = time.perf_counter()
        history = Trainer(gen, data, stages, seed=args.seed, progress=not small).fit()
        print(f"training: {len(history)} steps in {time.perf_counter() - t0:.0f} s")
        plot_history(history, out / "training.png")
        gen.save(out / "model.bg")
    print(f"transform: {type(gen.transform).__name__} with {gen.transform.n_core} core atoms, "
          f"{gen.transform.n_dof} degrees of freedom")

    # 3. Samples, weights, validity.
    n = 64 if small else args.samples
    samples = gen.sample(n, seed=args.seed + 1, progress=not small)
    print(samples.summary())
    xyz = data.xyz.astype(np.float64)
    report = valid_samples(system, samples.positions, energies=samples.energies, reference=xyz)
    print(f"valid samples: {report}")

    # 4. Pictures: energies, RMSD, rotamers.
    u_md = np.asarray(energy_for(system)(xyz), dtype=np.float64)
    plot_energies(u_md, np.asarray(samples.energies, dtype=np.float64), out / "energies.png")
    plot_rmsd(backbone_rmsd(xyz, system.positions, system.topology),
              backbone_rmsd(samples.positions, system.positions, system.topology), out / "rmsd.png")
    names, chi_md = chi1_of(system, xyz)
    _, chi_bg = chi1_of(system, samples.positions)
    pops = {"MD": rotamer_populations(chi_md), "BG raw": rotamer_populations(chi_bg)}
    if samples.n_weighted:
        w = samples.weights
        states = np.abs(np.angle(np.exp(1j * (chi_bg[..., None] - np.array([c for _, c in ROTAMERS]))))).argmin(-1)
        pops["BG reweighted"] = np.stack([(w[:, None] * (states == k)).sum(0) for k in range(3)], -1)
    plot_rotamers(names, pops, out / "rotamers.png")

    # 5. MD with the side-chain move: Langevin dynamics + TorsionMove (fitted on the MD torsions).
    from openmmtools import mcmc, states

    move = TorsionMove.fit(system, xyz, n_proposals=4, seed=args.seed)
    n_iter, md_steps = (6, 5) if small else (2000, 250)
    thermo = states.ThermodynamicState(system.system, temperature=system.temperature * unit.kelvin)
    sampler_state = states.SamplerState(xyz[-1] * unit.nanometer)
    langevin = mcmc.LangevinDynamicsMove(timestep=2 * unit.femtosecond, n_steps=md_steps)
    chis = []
    t0 = time.perf_counter()
    for _ in range(n_iter):
        langevin.apply(thermo, sampler_state)
        move.apply(thermo, sampler_state)
        chis.append(chi1_of(system, np.asarray(sampler_state.positions.value_in_unit(unit.nanometer))[None])[1][0])
    wall = time.perf_counter() - t0
    trans = core_transitions(np.array(chis))
    trans_md = core_transitions(chi_md)
    print(f"side-chain move: acceptance {move.acceptance_rate:.1%} over {move.n_proposed} proposals; "
          f"{n_iter * md_steps * 0.002 / 1000:.4f} ns of MD + moves in {wall:.0f} s: {trans.sum()} chi1 transitions "
          f"(plain MD data: {trans_md.sum()} in {data.n_frames * stride * 0.002 / 1000:.3f} ns)")
    print(f"plots written to {out}/ in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
