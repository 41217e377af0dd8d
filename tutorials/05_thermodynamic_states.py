"""Tutorial 5: free-energy differences between thermodynamic states (temperature, parameters).

The science
-----------
A Boltzmann Generator's density ``p_X`` is *normalised*: it is a reference state whose free energy
is known (``f = 0``). Configurations drawn from it carry their log density, so the reduced free
energy ``f = -log Z`` of any target state with a reduced potential ``u`` follows from them --
by exponential averaging (EXP, ``f = -log <exp(-u - log p_X)>``) or, better, by MBAR over all the
generator sample sets and targets together (pymbar). One generator serves several targets: here
the paper's double well at 300 K, at 350 K, and with a changed parameter (the tilt ``c`` in
``u = x1^4 - 6 x1^2 + c x1 + x2^2/2``, from 1 to 2). Results are reduced differences
``Delta f = f_B - f_A`` (dimensionless) and ``Delta A = kT_B f_B - kT_A f_A`` in kJ/mol; across
temperatures there is no single "kT" to quote ``Delta A`` in.

Next to these unbiased estimates, the paper's two-generator estimate ``<J_KL^B> - <J_KL^A>``
(lecture: ``Delta A_12 = <J_KL^2> - <J_KL^1>``) needs a generator trained for each state. Each
``J_KL`` is an upper bound of its state's ``f``, off by the generator's KL divergence, so the
difference is biased by ``KL_B - KL_A``; the script prints that bias. For this toy system the exact
values come from quadrature: ``Z(c, T) = int exp(-b (x^4 - 6 x^2 + c x)) dx * sqrt(2 pi / b)`` with
``b = 300 K / T`` (the potential is defined in kT at 300 K).

What you see
------------
In ``--output`` (default ``tutorial-output/05_thermodynamic_states``):

- ``temperature_change.png``: ``Delta f`` (300 K -> 350 K) from EXP and MBAR with one generator, MBAR
  with two generators and the two-generator estimate, with error bars, against the exact value;
- ``parameter_change.png``: the same for the tilt change ``c = 1 -> 2`` at 300 K.

The printed table also gives kJ/mol, the weight diagnostics and the two-generator bias.

Run
---
``python tutorials/05_thermodynamic_states.py`` (a few minutes on one CPU core) or ``--smoke``
(seconds; tiny MD and training, only checks that everything runs).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
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
from openmm_bg.analysis.free_energy import thermodynamic_free_energy  # noqa: E402
from openmm_bg.systems import load  # noqa: E402
from openmm_bg.systems.toy import DOUBLE_WELL_EXPRESSION, Z_CONFINEMENT  # noqa: E402
from openmm_bg.training import Stage, Trainer  # noqa: E402

NAME = "05_thermodynamic_states"
T_A, T_B = 300.0, 350.0
TILT_B = 2.0


def parse_args(argv=None) -> argparse.Namespace:
    parser = tutorial_parser(NAME, __doc__)
    return parser.parse_args(argv)


def tilted_double_well(tilt: float):
    """The double well with another tilt ``c`` (same particle, same topology: a parameter change).

    We copy the OpenMM System and change the expression of its ``CustomExternalForce``; any System
    edit works the same way (force-field parameters, restraints, a scaled interaction).
    """
    base = load("double_well")
    system = copy.deepcopy(base.system)
    expression = DOUBLE_WELL_EXPRESSION.replace("+ x +", f"+ {tilt}*x +")
    assert expression != DOUBLE_WELL_EXPRESSION
    force = system.getForce(0)
    force.setEnergyFunction(f"kT*({expression} + 0.5*kz*z^2)")

    def energy(x):  # the same in torch (kT), for completeness
        x1, x2 = x[..., 0, 0], x[..., 0, 1]
        return x1**4 - 6 * x1**2 + tilt * x1 + 0.5 * x2**2 + 0.5 * Z_CONFINEMENT * x[..., 0, 2] ** 2

    return dataclasses.replace(base, name=f"double_well_c{tilt:g}", system=system, analytic_energy=energy,
                               description=f"double well with tilt c = {tilt:g}")


def exact_f(tilt: float = 1.0, temperature: float = 300.0) -> float:
    """Reduced free energy -log Z of the double well in the plane (Z in nm^2) by quadrature."""
    b = 300.0 / temperature
    z1 = integrate.quad(lambda x: math.exp(-b * (x**4 - 6 * x**2 + tilt * x)), -6, 6, points=[-1.7, 1.7])[0]
    return -math.log(z1 * math.sqrt(2 * math.pi / b))


def two_well_md(system, n_frames: int, seed: int) -> mdtraj.Trajectory:
    """MD from both wells (equal amounts; the barrier is not crossed): training data, not equilibrium."""
    trajs = []
    for k, x1 in enumerate((-1.7, 1.6)):
        x0 = system.positions.copy()
        x0[0, 0] = x1
        trajs.append(openmm_bg.simulate(system, n_frames=n_frames, stride=10, seed=seed + k, positions=x0,
                                        friction=10.0, platform="Reference", progress=False))
    return mdtraj.join(trajs)


def train(system, args) -> openmm_bg.BoltzmannGenerator:
    """ML, then ML + KL with a rising KL weight (the recipe of tutorial 1), at the system's temperature."""
    small = args.smoke
    data = two_well_md(system, 100 if small else 500, args.seed)
    gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2 if small else 4,
                                             hidden=(16,) if small else (64, 64), seed=args.seed)
    n = 20 if small else 300
    Trainer(gen, data, [Stage("ml", n), Stage("ml+kl", n, kl=0.1, kl_end=1.0, kl_batch_size=256, lr=5e-4)],
            seed=args.seed, progress=False).fit()
    return gen


def report(title: str, exact_df: float, exact_kj: float, rows: list[tuple[str, object]], path: Path) -> None:
    """Print a table; plot Delta f of every estimate against the exact value (left) and the unbiased
    estimates' deviation from it with their error bars (right, zoomed)."""
    print(f"\n{title}\n{'estimate':<34}{'Delta f (reduced)':<22}{'Delta A / kJ/mol':<22}weights")
    print(f"{'exact (quadrature)':<34}{exact_df:<22.3f}{exact_kj:<22.3f}")
    labels, values, errors = [], [], []
    for label, r in rows:
        if hasattr(r, "bias"):  # the two-generator estimate
            print(f"{label:<34}{f'{r.delta_f:.3f} +- {r.error:.3f}':<22}{r.delta_a_kJ_mol:<22.3f}"
                  f"bias KL_B - KL_A = {r.bias:.3f}")
            value, error = r.delta_f, r.error
        else:
            diag = r.diagnostics_b or r.diagnostics_a
            weights = "n/a" if diag is None else f"ESS {diag.ess:.0f}/{diag.n}, Pareto k {diag.pareto_k:.2f}"
            print(f"{label:<34}{f'{r.delta_f:.3f} +- {r.error_f:.3f}':<22}"
                  f"{f'{r.delta_a_kJ_mol:.3f} +- {r.error_kJ_mol:.3f}':<22}{weights}")
            value, error = r.delta_f, r.error_f
        labels.append(label.replace(", ", "\n", 1).replace("two-generator ", "two-generator\n"))
        values.append(value)
        errors.append(error if math.isfinite(error) else 0.0)
    values, errors = np.array(values), np.array(errors)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [len(rows), 3]})
    x = np.arange(len(rows))
    left.bar(x, values, yerr=errors, capsize=4, color="tab:blue", alpha=0.8, edgecolor="black")
    left.axhline(exact_df, color="tab:red", ls="--", label=f"exact {exact_df:.3f}")
    left.axhline(0.0, color="black", lw=0.6)
    left.set_xticks(x, labels, fontsize=8)
    left.set_ylabel(r"$\Delta f = f_B - f_A$ (reduced, dimensionless)")
    left.legend(fontsize=8)
    unbiased = [k for k, (label, _) in enumerate(rows) if not label.startswith("two-generator")]
    right.errorbar(np.arange(len(unbiased)), values[unbiased] - exact_df, yerr=errors[unbiased], fmt="o",
                   capsize=4, color="tab:blue")
    right.axhline(0.0, color="tab:red", ls="--")
    right.set_xticks(np.arange(len(unbiased)), [labels[k] for k in unbiased], fontsize=8)
    right.set_xlim(-0.5, len(unbiased) - 0.5)
    right.set_ylabel(r"$\Delta f$ - exact (reduced)")
    right.set_title("unbiased estimators (zoom)", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> None:
    torch.set_num_threads(1)  # small networks: one thread is fastest (and fair on shared machines)
    args = parse_args(argv)
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    n = 2000 if args.smoke else 20000

    # Three thermodynamic states sharing one topology (one particle in the plane).
    a = load("double_well")  # c = 1, 300 K
    b_hot = a.with_temperature(T_B)  # same System, 350 K
    b_tilt = tilted_double_well(TILT_B)  # c = 2, 300 K

    # One generator per state (only the two-generator estimate needs more than the first).
    gen_a, gen_hot, gen_tilt = (train(s, args) for s in (a, b_hot, b_tilt))
    s_a = gen_a.sample(n, seed=args.seed + 1)
    print(f"generator for {a.name} at {T_A:g} K: {s_a.summary()}")

    # --- temperature change: 300 K -> 350 K -------------------------------------------------------
    exact = exact_f(1.0, T_B) - exact_f(1.0, T_A)
    exact_kj = b_hot.kT * exact_f(1.0, T_B) - a.kT * exact_f(1.0, T_A)
    # EXP from the 300 K generator's samples alone
    exp = thermodynamic_free_energy(a, b_hot, samples=s_a, method="exp", warn=False)
    # MBAR with the same generator also sampled at 350 K (its prior is scaled: a second reference state)
    one_gen = thermodynamic_free_energy(a, b_hot, samples=[s_a, gen_a.sample(n, temperature=T_B, seed=args.seed + 2)],
                                        generators=[gen_a, gen_a], warn=False)
    # MBAR with a generator trained at each temperature; it also gives the two-generator estimate
    two_gen = thermodynamic_free_energy(a, b_hot, samples=[s_a, gen_hot.sample(n, seed=args.seed + 3)],
                                        generators=[gen_a, gen_hot], warn=False)
    report(f"double well, {T_A:g} K -> {T_B:g} K", exact, exact_kj,
           [("EXP, one generator", exp), ("MBAR, one generator at 2 T", one_gen),
            ("MBAR, two generators", two_gen), ("two-generator <J_KL^B> - <J_KL^A>", two_gen.two_generator)],
           out / "temperature_change.png")

    # --- parameter change: tilt c = 1 -> 2 at 300 K -----------------------------------------------
    exact = exact_f(TILT_B, T_A) - exact_f(1.0, T_A)
    exp = thermodynamic_free_energy(a, b_tilt, samples=s_a, method="exp", warn=False)
    one_gen = thermodynamic_free_energy(a, b_tilt, samples=s_a, method="mbar", warn=False)
    two_gen = thermodynamic_free_energy(a, b_tilt, samples=[s_a, gen_tilt.sample(n, seed=args.seed + 4)],
                                        generators=[gen_a, gen_tilt], warn=False)
    report(f"double well, tilt c = 1 -> {TILT_B:g} ({T_A:g} K)", exact, a.kT * exact,
           [("EXP, one generator", exp), ("MBAR, one generator", one_gen),
            ("MBAR, two generators", two_gen), ("two-generator <J_KL^B> - <J_KL^A>", two_gen.two_generator)],
           out / "parameter_change.png")
    for g in (gen_a, gen_hot, gen_tilt):
        g.close()
    print(f"\nplots written to {out}/ in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
