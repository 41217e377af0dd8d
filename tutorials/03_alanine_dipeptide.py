"""Tutorial 3: alanine dipeptide in vacuum -- Ramachandran plots and Delta A(C7ax - C7eq).

The science
-----------
Alanine dipeptide (AMBER ff96, vacuum, 300 K) has two families of backbone conformations: C7eq
(with C5/beta and alpha_R; ``phi < 0``) and the rare C7ax basin (``0 < phi < 2.2`` rad), about 13 kT
above the barrier from C7eq. Plain MD at 300 K practically never crosses in nanoseconds, so MD from
a C7eq start cannot tell how populated C7ax is. Here the training data are short MD runs started in
*each* basin (their mixture has the wrong populations), and a Boltzmann Generator in internal
coordinates (bonds, angles, torsions; exact Jacobian) is trained first by maximum likelihood on
those data, then by the energy (KL). Its samples are independent, and their importance weights
``w = exp(-u(x) - log p_X(x))`` correct whatever the training data or the flow got wrong, so
``Delta A = A(C7ax) - A(C7eq) = -log(sum_{C7ax} w / sum_{C7eq} w)`` is unbiased. Its bootstrap error
means something only when the weights are light-tailed: the script prints the effective sample size
(ESS) and Pareto k (k > 0.7: the error is underestimated).

Raw samples can look right long before the weights are usable: a barely trained generator draws
both basins but has an ESS of a few out of 50000, and the script then refuses to report Delta A.
The default schedule (``openmm_bg.training.default_stages``: 1500 ML steps, then 3000 of KL + 0.1 ML)
reaches ESS/N of about 20 % on 10 ns of data in the benchmark (``benchmarks/README.md``).

What you see
------------
In ``--output`` (default ``tutorial-output/03_alanine_dipeptide``):

- ``ramachandran.png``: phi/psi free energy (kT) of the MD data, the raw BG samples and the
  reweighted samples; dotted lines at phi = 0 and 2.2 rad bound the C7ax state.
- ``profile_phi.png``: free energy along phi from the reweighted samples with bootstrap errors.
- ``training.png``: training curves (when trained here); ``model.bg``: the trained generator, to
  reuse with ``--model``.

Run
---
``python tutorials/03_alanine_dipeptide.py`` (10 ns of MD and 4500 training steps, the recipe of the
shipped demo generator: about 15-25 minutes on one CPU core; ``--md-ns 4 --train-scale 0.3`` for a
quicker, rougher model that may see too little of C7ax to estimate Delta A),
``python tutorials/03_alanine_dipeptide.py --model tutorial-output/03_alanine_dipeptide/model.bg``
(reuse a saved generator; only MD for the data panel and sampling), or ``--smoke`` (about a minute;
barely trained, only checks that everything runs).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from _common import tutorial_parser

import openmm_bg
from openmm_bg.analysis.free_energy import (
    InsufficientSamplesError,
    free_energy_profile,
    pymbar_module,
    state_free_energy,
)
from openmm_bg.apps.demo import demo_data, demo_training
from openmm_bg.apps.plots import plot_history, plot_profile, plot_ramachandran
from openmm_bg.systems import load
from openmm_bg.systems.alanine import in_c7ax
from openmm_bg.training import Trainer

NAME = "03_alanine_dipeptide"


def parse_args(argv=None) -> argparse.Namespace:
    parser = tutorial_parser(NAME, __doc__, smoke_help="about a minute: tiny MD and training (for CI)",
                             output_help="folder for the PNG files and the trained model")
    parser.add_argument("--model", type=Path, default=None,
                        help="use this saved generator (BoltzmannGenerator.save) instead of training one")
    parser.add_argument("--train-scale", type=float, default=1.0,
                        help="multiplies the training steps of the default schedule (4500 steps at 1.0)")
    parser.add_argument("--md-ns", type=float, default=10.0,
                        help="ns of training MD in full mode, a quarter of it started in C7ax")
    parser.add_argument("--samples", type=int, default=50000, help="generator samples in full mode")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    torch.set_num_threads(1)  # small networks: one thread is fastest (and fair on shared machines)
    args = parse_args(argv)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    pymbar_module()  # import pymbar quietly now (openmmtools, used by the loader, would print its banner)
    system = load("alanine_dipeptide")  # vacuum, AMBER ff96, 300 K
    small = args.smoke

    # 1. MD from C7eq (the reference structure) and from a C7ax structure: 1 ps between frames.
    ns_eq, ns_ax = (0.03, 0.015) if small else (0.75 * args.md_ns, 0.25 * args.md_ns)
    print(f"MD at 300 K: {ns_eq} ns from C7eq, {ns_ax} ns from C7ax")
    data = demo_data(system, ns_eq, ns_ax, seed=args.seed, progress=not small)
    phi = system.reaction_coordinates["phi"](data.xyz.astype(np.float64))
    print(f"  {data.n_frames} frames, {np.mean(in_c7ax(phi)):.0%} in C7ax "
          f"({time.perf_counter() - t_start:.0f} s)")

    # 2. The generator: load a saved one, or train ML -> ML + KL -> KL (the demo's schedule).
    if args.model is not None:
        gen = openmm_bg.BoltzmannGenerator.load(args.model, system)
        print(f"loaded generator {args.model}")
    else:
        gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2 if small else 4,
                                                 hidden=(32, 32) if small else (128, 128), seed=args.seed)
        stages = demo_training(0.005 if small else args.train_scale)
        t0 = time.perf_counter()
        history = Trainer(gen, data, stages, seed=args.seed, progress=not small).fit()
        print(f"training: {len(history)} steps in {time.perf_counter() - t0:.0f} s")
        plot_history(history, out / "training.png")
        gen.save(out / "model.bg")
        print(f"saved the generator to {out / 'model.bg'} (reuse it with --model)")

    # 3. Independent samples with exact importance weights.
    n = 2000 if small else args.samples
    t0 = time.perf_counter()
    samples = gen.sample(n, seed=args.seed + 1, progress=not small)
    print(f"{samples.summary()} ({time.perf_counter() - t0:.0f} s)")

    # 4. Delta A(C7ax - C7eq) by reweighting, with bootstrap error and weight diagnostics.
    try:
        r = state_free_energy(samples, "C7eq", "C7ax", min_ess=5 if small else 30, seed=args.seed, warn=False)
        print(r)
        if not r.reliable:
            print("  the weights are heavy-tailed (Pareto k >= 0.7): train longer before trusting the error bar")
    except InsufficientSamplesError as err:
        print(f"A(C7ax) - A(C7eq) not estimated: {err}")

    # 5. Pictures: Ramachandran plots (MD, raw BG, reweighted BG) and the profile along phi.
    valid = np.isfinite(samples.log_weights)
    plot_ramachandran([
        ("MD data (300 K, both starts)", openmm_bg.Samples.unweighted(system, data.xyz)),
        ("BG samples, raw", openmm_bg.Samples.unweighted(system, samples.positions[valid])),
        ("BG samples, reweighted", samples)], out / "ramachandran.png")
    profile = free_energy_profile(samples, "phi", bins=36 if small else 60, seed=args.seed,
                                  n_bootstrap=50 if small else 200)
    plot_profile(profile, out / "profile_phi.png", labels=["BG reweighted"],
                 title="alanine dipeptide (vacuum, 300 K): free energy along phi")
    print(f"plots written to {out}/ in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
