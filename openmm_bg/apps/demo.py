"""The main job: alanine dipeptide in vacuum, from a Boltzmann Generator to Delta A and pictures.

``run_demo`` (``openmm-bg demo``) loads the shipped pretrained generator (or, with
``from_scratch``, runs MD and trains one), draws weighted samples and writes to the output folder:

- ``ramachandran.png``: phi/psi free energy of the MD data, the raw generator samples and the
  reweighted samples, side by side;
- ``profile_phi.png``: the reweighted free-energy profile along phi with bootstrap errors;
- ``summary.json``: Delta A = A(C7ax) - A(C7eq) with its error, ESS and weight diagnostics, timings.

Examples
--------
$ openmm-bg demo --quick -o demo-out      # about a minute: tiny MD and training
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import mdtraj
import numpy as np

from .._output import write_text_atomic
from ..analysis.samples import Samples
from ..data import structure_path
from ..systems import MolecularSystem, load
from ..systems.alanine import C7AX_RESTRAINT_PHI, c7ax_restrained, c7ax_structure

__all__ = ["run_demo", "PRETRAINED", "REFERENCE_DELTA_A_KT", "demo_data", "demo_training",
           # compat: these moved to openmm_bg.systems.alanine
           "c7ax_restrained", "c7ax_structure", "C7AX_RESTRAINT_PHI"]

#: The shipped pretrained generator (``systems/models/``), made by
#: ``python benchmarks/alanine_dipeptide.py --kl-steps 3000 --save-model systems/models/alanine_dipeptide_vacuum.bg
#: --save-data systems/models/alanine_dipeptide_vacuum_md.h5``.
PRETRAINED = "models/alanine_dipeptide_vacuum.bg"
#: Reference Delta A(C7ax - C7eq) in vacuum at 300 K and its error (kT), from
#: ``benchmarks/reference/alanine_reference.json`` (biased MD, umbrella sampling and parallel tempering;
#: the error scaled by sqrt(chi^2 / dof) of the runs, 1.86).
REFERENCE_DELTA_A_KT = (4.74, 0.08)
#: Wall-clock budget of the from-scratch training (s); the schedule is scaled to fit it.
TRAINING_BUDGET_S = 480.0


def demo_data(system: MolecularSystem, ns_c7eq: float, ns_c7ax: float, seed: int,
              progress: bool = True, restrain_c7ax: bool = False) -> mdtraj.Trajectory:
    """300 K MD frames (1 ps apart) from the C7eq reference and from a C7ax start (none if ``ns_c7ax <= 0``).

    With ``restrain_c7ax`` the C7ax run carries a flat-bottom restraint on phi
    (`openmm_bg.systems.alanine.c7ax_restrained`) that is zero inside the basin, so its frames are
    Boltzmann-distributed within C7ax and never leave it (in implicit solvent an unrestrained run
    leaves C7ax within tens of ps). Training data need not
    be Boltzmann-distributed overall: the generator's weights are exact either way.
    """
    import openmm_bg

    eq = openmm_bg.simulate(system, n_frames=max(1, int(ns_c7eq * 1000)), stride=1000, seed=seed,
                            equilibration_steps=5000, progress=progress)
    if ns_c7ax <= 0:  # no C7ax start at all (not even one frame)
        return eq
    ax_system = c7ax_restrained(system) if restrain_c7ax else system
    ax = openmm_bg.simulate(ax_system, n_frames=max(1, int(ns_c7ax * 1000)), stride=1000, seed=seed + 1,
                            positions=c7ax_structure(), equilibration_steps=5000, progress=progress)
    return mdtraj.join([eq, ax])


def demo_training(scale: float):
    """The demo's schedule: `openmm_bg.training.default_stages` (ML, then KL + 0.1 ML), steps times
    ``scale``."""
    from ..training import default_stages

    return [replace(stage, steps=max(10, stage.steps)) for stage in default_stages(scale)]


def run_demo(output: Path, quick: bool = False, from_scratch: bool = False, seed: int = 0,
             n_samples: int | None = None, progress: bool = True) -> dict:
    """Run the demo and write its files into ``output``; returns the summary.

    Parameters
    ----------
    output : Path
        Folder for the PNG and JSON files (created).
    quick : bool
        Smoke mode (about a minute): 0.1 ns of MD, a few hundred training steps, 5000 samples.
    from_scratch : bool
        Run MD (4 ns) and training (sized to ``TRAINING_BUDGET_S``) instead of loading the pretrained
        generator; also what happens when no pretrained generator is installed.
    seed : int
        Seeds MD, training and sampling.
    n_samples : int, optional
        Generator samples (default 100000, 5000 in quick mode).
    """
    import openmm_bg

    from ..analysis.free_energy import free_energy_profile, state_free_energy
    from ..training import Stage, Trainer
    from .plots import plot_profile, plot_ramachandran

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    system = load("alanine_dipeptide")
    timings = {}
    t0 = time.perf_counter()
    model_path = None
    if not (quick or from_scratch):
        try:
            model_path = structure_path(PRETRAINED)
        except FileNotFoundError:
            print("note: the pretrained demo generator is missing from this installation; training one "
                  "from scratch instead (about 15 minutes on 2 cores; --quick for a one-minute smoke run)")
            from_scratch = True
    if quick or from_scratch:
        ns_eq, ns_ax, scale = (0.08, 0.04, 0.05) if quick else (3.0, 1.0, None)
        print(f"[1/4] MD of alanine dipeptide at 300 K: {ns_eq} ns from C7eq, {ns_ax} ns from C7ax")
        data = demo_data(system, ns_eq, ns_ax, seed, progress)
        timings["md_s"] = time.perf_counter() - t0
        print("[2/4] training the Boltzmann Generator (ML, then ML + KL)")
        gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=4 if not quick else 2,
                                                 hidden=(128, 128) if not quick else (32, 32), seed=seed)
        if scale is None:  # size the schedule to the training budget from a few timed steps
            probe = Trainer(gen, data, [Stage("probe", 6, ml=0.1, kl=1.0, kl_batch_size=256)], seed=seed,
                            progress=False).fit()
            seconds_per_step = (probe[-1]["time"] - probe[0]["time"]) / 5  # the first step warms up
            # an ML step costs about 0.45 KL steps: 1500 ML + 3000 KL steps ~ 3700 KL steps
            scale = min(1.0, TRAINING_BUDGET_S / seconds_per_step / 3700)
            gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=4, hidden=(128, 128), seed=seed)
        t1 = time.perf_counter()
        Trainer(gen, data, demo_training(scale), seed=seed, progress=progress).fit()
        timings["training_s"] = time.perf_counter() - t1
        gen.save(output / "model.bg", extra={"system_spec": {"name": "alanine_dipeptide", "options": {}}})
    else:
        print(f"[1/4] loading the pretrained generator {model_path.name}")
        gen = openmm_bg.BoltzmannGenerator.load(model_path, system)
        data = mdtraj.load(str(structure_path("models/alanine_dipeptide_vacuum_md.h5")))
        print("[2/4] (training skipped: pretrained; use --from-scratch to train)")
    n = n_samples or (5000 if quick else 100_000)
    print(f"[3/4] drawing {n} samples and their importance weights")
    t2 = time.perf_counter()
    samples = gen.sample(n, seed=seed + 1, progress=progress)
    timings["sampling_s"] = time.perf_counter() - t2
    diag = samples.diagnostics(warn=False)
    print("[4/4] free energies and plots")
    summary = {"system": system.description, "n_samples": n, "diagnostics": diag.as_dict(),
               "counts": samples.counts, "timings_s": timings}
    try:
        fe = state_free_energy(samples, "C7eq", "C7ax", min_ess=10 if quick else 30, seed=seed)
        summary["delta_a"] = fe.as_dict()
        line = f"A(C7ax) - A(C7eq) = {fe.delta_a_kT:.2f} +- {fe.error_kT:.2f} kT ({fe.delta_a_kJ_mol:.2f} kJ/mol)"
        if not fe.reliable:
            line += "  [weights heavy-tailed: the error is underestimated]"
    except ValueError as err:
        summary["delta_a"] = None
        line = f"A(C7ax) - A(C7eq): not reported: {err}"
    plots = {"ramachandran": str(plot_ramachandran([
        ("MD data (300 K)", Samples.unweighted(system, data.xyz)),
        ("BG samples, raw", Samples.unweighted(system, samples.positions[np.isfinite(samples.log_prob)])),
        ("BG samples, reweighted", samples)], output / "ramachandran.png"))}
    profile = free_energy_profile(samples, "phi", bins=60, seed=seed)
    plots["profile_phi"] = str(plot_profile(profile, output / "profile_phi.png",
                                            title="alanine dipeptide (vacuum, 300 K): free energy along phi"))
    summary["plots"] = plots
    summary["timings_s"]["total"] = time.perf_counter() - t0
    write_text_atomic(output / "summary.json", json.dumps(summary, indent=1, default=_json_default) + "\n")
    width = 34
    print("\n" + "=" * 72)
    print(f"{'system':<{width}}alanine dipeptide, AMBER ff96, vacuum, 300 K")
    print(f"{'samples':<{width}}{n} ({samples.counts['out_of_domain']} out of domain, "
          f"{samples.counts['inverted_chirality']} inverted chirality)")
    print(f"{'effective sample size':<{width}}{diag.ess:.0f} ({100 * diag.ess_fraction:.1f}%), largest weight "
          f"{100 * diag.max_weight_share:.2f}%, Pareto k {diag.pareto_k:.2f}")
    print(f"{'free energy':<{width}}{line}")
    ref, ref_error = REFERENCE_DELTA_A_KT
    print(f"{'reference (benchmarks/reference)':<{width}}{ref:.2f} +- {ref_error:.2f} kT")
    print(f"{'plots':<{width}}{plots['ramachandran']}, {plots['profile_phi']}")
    print(f"{'numbers':<{width}}{output / 'summary.json'}")
    print(f"{'wall time':<{width}}{summary['timings_s']['total']:.0f} s")
    print("=" * 72)
    return summary


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
