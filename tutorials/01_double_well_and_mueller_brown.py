"""Tutorial 1: Boltzmann Generators on two 2D toy potentials (the paper's Fig. 2).

The science
-----------
A Boltzmann Generator (BG) is a normalizing flow ``x = F_zx(z)`` with an exact density ``p_X(x)``,
trained so that ``p_X`` approaches the Boltzmann distribution ``mu(x) ~ exp(-u(x))``. Two losses
train it (Noe et al., Science 2019):

- **ML** (maximum likelihood on MD data): the flow learns what the data show -- including the
  data's wrong populations when MD did not equilibrate between metastable states;
- **KL** (variational free energy ``E_z[u(F_zx(z)) - log|det J_zx|]``): the flow learns from the
  energy itself, but being mode-seeking it may drop a rare state;
- **RC** (reaction-coordinate loss ``E[log p(R(x))]``): spreads samples along a coordinate ``R``
  (here ``x1``) so that KL training keeps both states and the barrier between them.

Because ``p_X`` is exact, every sample has the importance weight ``w = exp(-u(x) - log p_X(x))``,
and reweighted averages are unbiased whatever the loss. This tutorial trains three generators on
the paper's double well ``u = x1^4 - 6 x1^2 + x1 + x2^2/2`` (kT) -- with ML only, with KL after a
short ML warm-up, and with KL + RC -- and compares the free energy along ``x1`` from the raw and
reweighted samples with the exact curve ``F(x1) = -log int exp(-u) dx2`` (by quadrature). Then it
trains one generator on the Mueller-Brown potential (0.1 x the standard one, kT) and shows the 2D
density of its samples, raw and reweighted, next to the exact Boltzmann density.

What you see
------------
In ``--output`` (default ``tutorial-output/01_double_well_and_mueller_brown``):

- ``double_well_losses.png``: for each generator, the raw sample histogram of ``x1`` (top) and the
  free energy along ``x1`` (bottom: raw samples, reweighted samples with bootstrap error bands, and the
  exact curve). The printed table gives ``A(right) - A(left)`` from each generator against quadrature
  (3.38 kT), with ESS and Pareto-k diagnostics.
- ``double_well_training.png``: the training curves (ML loss, KL loss, mean sample energy) of the
  KL + RC generator.
- ``mueller_brown_density.png``: exact Boltzmann free energy, raw BG samples, reweighted BG samples.

Run
---
``python tutorials/01_double_well_and_mueller_brown.py`` (a few minutes on one CPU core) or with
``--smoke`` (seconds; tiny MD and training, only checks that everything runs).
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
import torch  # noqa: E402
from _common import tutorial_parser  # noqa: E402  (tutorials/_common.py, beside this script)
from scipy import integrate  # noqa: E402

import openmm_bg  # noqa: E402
from openmm_bg.analysis.free_energy import InsufficientSamplesError, free_energy_profile, state_free_energy  # noqa: E402
from openmm_bg.apps.plots import plot_history  # noqa: E402
from openmm_bg.systems import load  # noqa: E402
from openmm_bg.training import Stage, Trainer

NAME = "01_double_well_and_mueller_brown"


def parse_args(argv=None) -> argparse.Namespace:
    parser = tutorial_parser(NAME, __doc__)
    return parser.parse_args(argv)


def md_from_starts(system, starts, n_frames, seed, friction=10.0) -> mdtraj.Trajectory:
    """Short MD runs started in each basin; they do not cross the barriers, so the data hold the
    basins in the proportion we chose (equal), not in their Boltzmann proportion."""
    trajs = []
    # platform="Reference": the same seed gives the same trajectory (by default openmm-bg picks the
    # fastest platform by timing, and CPU and Reference trajectories differ)
    for k, (x, y) in enumerate(starts):
        x0 = system.positions.copy()
        x0[0, :2] = (x, y)
        trajs.append(openmm_bg.simulate(system, n_frames=n_frames, stride=10, seed=seed + k, positions=x0,
                                        friction=friction, platform="Reference", progress=False))
    return mdtraj.join(trajs)


def u_x1(x):
    """The double well's energy along x1 (kT); x2 is harmonic and integrates out to a constant."""
    return x**4 - 6 * x**2 + x


def exact_delta_a() -> float:
    """A(right) - A(left) = -log(Z_right / Z_left) by quadrature (kT)."""
    right = integrate.quad(lambda x: np.exp(-u_x1(x)), 0, 6)[0]
    left = integrate.quad(lambda x: np.exp(-u_x1(x)), -6, 0)[0]
    return -np.log(right / left)


def exact_bin_free_energy(edges: np.ndarray) -> np.ndarray:
    """-log of the exact probability density averaged over each bin, min 0 (what a histogram estimates)."""
    p = np.array([integrate.quad(lambda x: np.exp(-u_x1(x)), lo, hi)[0] / (hi - lo)
                  for lo, hi in zip(edges[:-1], edges[1:])])
    F = -np.log(p)
    return F - F.min()


def unweighted(samples: openmm_bg.Samples) -> openmm_bg.Samples:
    """The same configurations with equal weights: what the generator draws before reweighting."""
    return openmm_bg.Samples.unweighted(samples.system, samples.positions[np.isfinite(samples.log_weights)])


def double_well(args, out: Path) -> None:
    system = load("double_well")
    small = args.smoke
    # 1. Training data: MD from the left and the right well (equal amounts; the true populations
    #    are 97% : 3%).
    data = md_from_starts(system, [(-1.7, 0.0), (1.6, 0.0)], n_frames=100 if small else 500, seed=args.seed)
    print(f"MD data: {data.n_frames} frames, {np.mean(data.xyz[:, 0, 0] > 0):.0%} in the right well")

    # 2. Three schedules. All start with ML; "KL" and "KL + RC" then switch to the energy.
    n = 20 if small else 300
    schedules = {
        "ML": [Stage("ml", 2 * n)],
        "ML, then KL": [Stage("ml", n), Stage("kl", n, ml=0.0, kl=1.0, kl_batch_size=256, lr=5e-4)],
        "ML, then KL + RC": [Stage("ml", n),
                             Stage("kl+rc", n, ml=0.0, kl=1.0, rc=1.0, kl_batch_size=256, lr=5e-4)],
    }
    n_samples = 2000 if small else 20000
    edges = np.linspace(-2.6, 2.6, 27 if small else 53)
    exact = exact_delta_a()
    exact_F = exact_bin_free_energy(edges)
    fig, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    print(f"\n{'training':<20}{'A(right) - A(left) / kT':<28}{'ESS / N':<10}{'Pareto k':<9}")
    print(f"{'exact (quadrature)':<20}{exact:<28.2f}")
    for col, (label, stages) in enumerate(schedules.items()):
        gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2 if small else 4,
                                                 hidden=(16,) if small else (64, 64), seed=args.seed)
        t0 = time.perf_counter()
        history = Trainer(gen, data, stages, seed=args.seed, rc="x1", progress=False).fit()
        samples = gen.sample(n_samples, seed=args.seed + 1)
        diag = samples.diagnostics(warn=False)
        try:
            r = state_free_energy(samples, "left", "right", min_ess=5 if small else 30, warn=False)
            estimate = f"{r.delta_a_kT:.2f} +- {r.error_kT:.2f}" + ("" if r.reliable else " (k>0.7!)")
        except InsufficientSamplesError as err:
            estimate = "n/a (ESS too small)"
            print(f"  ({err})")
        print(f"{label:<20}{estimate:<28}{diag.ess_fraction:<10.3f}{diag.pareto_k:<9.2f}"
              f"({time.perf_counter() - t0:.0f} s)")
        if label.endswith("RC"):
            plot_history(history, out / "double_well_training.png")

        # top: where the raw samples are (histogram of x1) against the exact marginal density
        x1 = samples.coordinate("x1")
        x1 = x1[np.isfinite(x1)]
        ax = axes[0, col]
        ax.hist(x1, bins=edges, density=True, color="tab:blue", alpha=0.6, label="BG samples (raw)")
        ax.hist(data.xyz[:, 0, 0], bins=edges, density=True, histtype="step", color="tab:gray",
                label="MD data")
        p_exact = np.exp(-exact_F)
        ax.plot(0.5 * (edges[1:] + edges[:-1]), p_exact / (p_exact.sum() * np.diff(edges)), "k--",
                label="exact")
        ax.set_title(f"{label}\nESS/N = {diag.ess_fraction:.2f}, A(right)-A(left) = {estimate.split(' (')[0]}",
                     fontsize=10)
        ax.set_ylabel("density of x1 / nm$^{-1}$")
        ax.legend(fontsize=8)

        # bottom: free energy along x1, raw and reweighted, with the exact curve
        ax = axes[1, col]
        raw = free_energy_profile(unweighted(samples), "x1", bins=edges, n_bootstrap=0)
        rew = free_energy_profile(samples, "x1", bins=edges, n_bootstrap=50 if small else 200, seed=args.seed)
        c = rew.centers
        ax.plot(c, raw.free_energy_kT, color="tab:orange", marker=".", label="BG raw")
        ax.plot(c, rew.free_energy_kT, color="tab:blue", marker="o", ms=3, label="BG reweighted")
        err = np.nan_to_num(rew.error_kT)
        ax.fill_between(c, rew.free_energy_kT - err, rew.free_energy_kT + err, color="tab:blue", alpha=0.25)
        ax.plot(c, exact_F, "k--", label="exact")
        ax.set_ylim(-0.5, 12)
        ax.set_xlabel("x1 / nm")
        ax.set_ylabel("F(x1) / kT")
        ax.legend(fontsize=8)
    fig.suptitle("Double well: ML vs KL vs KL + RC training (300 K)")
    fig.tight_layout()
    fig.savefig(out / "double_well_losses.png", dpi=90)
    plt.close(fig)


def mueller_brown(args, out: Path) -> None:
    system = load("mueller_brown")
    small = args.smoke
    # MD in both basins and the intermediate basin, then ML followed by ML + KL
    data = md_from_starts(system, [(-0.56, 1.44), (0.62, 0.03), (-0.05, 0.47)], n_frames=100 if small else 400,
                          seed=args.seed, friction=20.0)
    gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2 if small else 4,
                                             hidden=(16,) if small else (64, 64), seed=args.seed)
    n = 20 if small else 300
    Trainer(gen, data, [Stage("ml", n), Stage("ml+kl", n, kl=0.2, kl_end=1.0, kl_batch_size=256, lr=5e-4)],
            seed=args.seed, progress=False).fit()
    samples = gen.sample(2000 if small else 20000, seed=args.seed + 1)
    print(f"\nMueller-Brown: {samples.summary()}")

    # exact reduced free energy -log mu(x, y) on a grid, and 2D histograms of the samples
    ex, ey = np.linspace(-1.5, 1.2, 55), np.linspace(-0.4, 2.0, 49)
    cx, cy = 0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1])
    gx, gy = np.meshgrid(cx, cy, indexing="ij")
    grid = np.zeros((gx.size, 1, 3))
    grid[:, 0, 0], grid[:, 0, 1] = gx.ravel(), gy.ravel()
    with torch.no_grad():
        u = system.analytic_energy(torch.as_tensor(grid)).numpy().reshape(gx.shape)
    panels = [("exact Boltzmann", u - u.min())]
    ok = np.isfinite(samples.log_weights)
    xy = samples.positions[ok, 0, :2]
    for title, w in (("BG samples, raw", None), ("BG samples, reweighted", samples.weights[ok])):
        h = np.histogram2d(xy[:, 0], xy[:, 1], bins=[ex, ey], weights=w)[0]
        with np.errstate(divide="ignore"):
            F = -np.log(h / h.max())
        panels.append((title, F))
    vmax = 12.0
    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True, layout="constrained")
    for ax, (title, F) in zip(axes, panels):
        F = np.ma.masked_where(~np.isfinite(F) | (F > vmax), F)
        cs = ax.contourf(cx, cy, F.T, levels=np.linspace(0, vmax, 25), cmap="viridis")
        ax.contour(cx, cy, (u - u.min()).T, levels=np.arange(1, vmax, 2), colors="white", linewidths=0.4)
        ax.set_title(title)
        ax.set_xlabel("x / nm")
    axes[0].set_ylabel("y / nm")
    fig.colorbar(cs, ax=axes, label="F(x, y) / kT")
    fig.suptitle(f"Mueller-Brown (0.1 x standard, kT): ESS/N = {samples.ess_fraction:.2f}; "
                 "white lines: exact energy contours")
    fig.savefig(out / "mueller_brown_density.png", dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    torch.set_num_threads(1)  # small networks: one thread is fastest (and fair on shared machines)
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    double_well(args, args.output)
    mueller_brown(args, args.output)
    print(f"\nplots written to {args.output}/ in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
