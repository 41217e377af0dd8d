"""Quality benchmark of the Boltzmann Generator on alanine dipeptide (AMBER ff96, 300 K, no constraints).

Per run (one solvent, one flow), on the CPU:

1. training data: Langevin MD at 300 K from a C7eq start and from the shipped C7ax structure,
   cached in ``benchmarks/cache/`` (total within the 10 ns budget);
2. training: the default schedule (`openmm_bg.training.default_stages`: 1500 ML steps, then KL +
   0.1 ML with cosine learning-rate decay), its KL stage ``--kl-steps`` long (fixed step counts keep
   the run reproducible; the wall time is reported and must stay within the 30-minute budget);
3. ``--samples`` reweighted samples: ESS/N with the weight diagnostics, the fraction with inverted
   chirality, Delta A = A(C7ax) - A(C7eq) with its bootstrap error, KL(reference || reweighted) of
   the 64 x 64 phi/psi histogram (pseudocount 1e-10 per bin) against the reference samples of
   ``benchmarks/reference/alanine_reference.py``, energy evaluations and wall times.

``--evaluate-only`` re-evaluates the cached model of an earlier run (e.g. against a newer reference).
Results go to ``benchmarks/results/alanine_{solvent}_{flow}.json`` and a Ramachandran plot
``...png``; the model to ``benchmarks/cache/alanine_{solvent}_{flow}.bg`` (``--save-model`` elsewhere).

    python benchmarks/alanine_dipeptide.py --solvent vacuum --flow realnvp --kl-steps 3000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import mdtraj
import numpy as np
import torch
from _common import CACHE, RESULTS, alanine_reference, multistart_md

import openmm_bg
from openmm_bg.analysis.free_energy import state_free_energy
from openmm_bg.apps.plots import plot_history
from openmm_bg.systems import load
from openmm_bg.training import Trainer, default_stages


def training_data(system, solvent: str, md_ns: float, c7ax_fraction: float, seed: int,
                  restrain_c7ax: bool = False, starts: int = 1) -> mdtraj.Trajectory:
    """300 K MD frames (1 ps apart) from C7eq and from the shipped C7ax structure (the demo's data
    recipe, `openmm_bg.apps.demo.demo_data`, the C7ax run optionally held in C7ax by a flat-bottom phi
    restraint); cached. ``starts > 1``: instead, ``md_ns / starts`` from each of ``starts`` structures of
    the generic peptide recipe `openmm_bg.md.torsion_starts` (random alpha_R / beta / alpha_L per
    residue; no knowledge of C7ax)."""
    from openmm_bg.apps.demo import demo_data

    if starts > 1:
        path = CACHE / f"alanine_{solvent}_md_{md_ns:g}ns_{starts}starts_seed{seed}.h5"
        return multistart_md(system, path, starts, int(md_ns * 1000), stride=1000, seed=seed,
                             equilibration_steps=5000)[0]
    tag = "_restrained" if restrain_c7ax else ""
    path = CACHE / f"alanine_{solvent}_md_{md_ns:g}ns_ax{c7ax_fraction:g}{tag}_seed{seed}.h5"
    if path.exists():
        return mdtraj.load(str(path))
    CACHE.mkdir(parents=True, exist_ok=True)
    data = demo_data(system, md_ns * (1 - c7ax_fraction), md_ns * c7ax_fraction, seed, restrain_c7ax=restrain_c7ax)
    data.save(str(path))
    return data


def histogram_kl(reference: dict, phi: np.ndarray, psi: np.ndarray, log_w: np.ndarray, bins: int = 64) -> float:
    """KL(reference || reweighted) of the phi/psi histograms, pseudocount 1e-10 per bin."""
    edges = np.linspace(-math.pi, math.pi, bins + 1)

    def hist(a, b, lw):
        w = np.exp(lw - lw[np.isfinite(lw)].max())
        w[~np.isfinite(lw)] = 0
        h = np.histogram2d(a, b, bins=[edges, edges], weights=w)[0] + 1e-10
        return h / h.sum()

    p = hist(reference["phi"], reference["psi"], reference["log_weights"])
    q = hist(phi, psi, log_w)
    return float(np.sum(p * np.log(p / q)))


def ramachandran(path: Path, data_phi, data_psi, phi, psi, log_w, ref) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    w[~np.isfinite(log_w)] = 0
    rw = np.exp(ref["log_weights"] - ref["log_weights"].max())
    panels = [("MD training data", data_phi, data_psi, None), ("BG samples (raw)", phi, psi, None),
              ("BG samples (reweighted)", phi, psi, w), ("reference", ref["phi"], ref["psi"], rw)]
    for ax, (title, a, b, weights) in zip(axes, panels):
        h, xe, ye = np.histogram2d(a, b, bins=64, range=[[-math.pi, math.pi]] * 2, weights=weights)
        with np.errstate(divide="ignore"):
            f = -np.log(h / h.sum())
        ax.pcolormesh(xe, ye, (f - np.nanmin(f[np.isfinite(f)])).T, vmax=10, cmap="viridis")
        ax.set_title(title)
        ax.set_xlabel("phi (rad)")
    axes[0].set_ylabel("psi (rad)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvent", choices=["vacuum", "implicit"], default="vacuum")
    parser.add_argument("--flow", choices=["realnvp", "spline"], default="realnvp")
    parser.add_argument("--recipe", choices=["classic", "adaptive"], default="classic",
                        help="classic: the stages below; adaptive: the library's adaptive recipe (ML with early "
                             "stopping, then FAB), its own sizes (--kl-steps/--kl-stage-ml are not used)")
    parser.add_argument("--kl-steps", type=int, default=3000, help="steps of the KL stage")
    parser.add_argument("--kl-stage-ml", type=float, default=0.1, help="ML weight in the KL stage")
    parser.add_argument("--md-ns", type=float, default=10.0, help="training MD at 300 K (ns, <= 10)")
    parser.add_argument("--c7ax-fraction", type=float, default=0.25, help="share of MD started in C7ax")
    parser.add_argument("--starts", type=int, default=1,
                        help="> 1: MD from this many torsion_starts structures instead (no C7ax start or restraint)")
    parser.add_argument("--c7ax-restraint", action="store_true",
                        help="hold the C7ax part of the MD in C7ax with a flat-bottom phi restraint")
    parser.add_argument("--c7ax-stride", type=int, default=1,
                        help="train on every N-th frame of the C7ax part of the MD only (fewer C7ax frames)")
    parser.add_argument("--tag", default="", help="suffix of the result and model file names")
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--n-blocks", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128, 128])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-model", type=Path, default=None, help="also write the trained model here")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="skip training: evaluate the cached model of an earlier run of the same --solvent/--flow")
    parser.add_argument("--save-data", type=Path, default=None,
                        help="also write every 3rd training frame here (the demo's MD panel)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    tag = f"alanine_{args.solvent}_{args.flow}{args.tag}"
    system = load("alanine_dipeptide", solvent=args.solvent)
    t0 = time.perf_counter()
    if args.starts > 1 and (args.c7ax_restraint or args.c7ax_stride > 1):
        parser.error("--starts replaces the C7eq/C7ax data: --c7ax-restraint and --c7ax-stride do not apply")
    data = training_data(system, args.solvent, args.md_ns, args.c7ax_fraction, args.seed, args.c7ax_restraint,
                         args.starts)
    if args.c7ax_stride > 1:  # demo_data puts the C7eq frames first
        n_eq = max(1, int(args.md_ns * (1 - args.c7ax_fraction) * 1000))
        data = mdtraj.join([data[:n_eq], data[n_eq::args.c7ax_stride]])
    t_data = time.perf_counter() - t0
    CACHE.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.evaluate_only:  # the cached model of an earlier run; its training figures from its JSON
        gen = openmm_bg.BoltzmannGenerator.load(CACHE / f"{tag}.bg", system)
        earlier = json.loads((RESULTS / f"{tag}.json").read_text())
        training = {k: earlier[k] for k in ("training_steps", "skipped_steps", "training_energy_evaluations")}
        t_train = earlier["wall_s"]["training"]
    else:
        gen = openmm_bg.BoltzmannGenerator.build(system, data, flow=args.flow, n_blocks=args.n_blocks,
                                                 hidden=tuple(args.hidden), seed=args.seed)
        stages = None  # the adaptive recipe sizes its own stages
        if args.recipe == "classic":
            stages = default_stages(1.0, kl_scale=args.kl_steps / default_stages()[1].steps)
            stages[1] = replace(stages[1], ml=args.kl_stage_ml)
        trainer = Trainer(gen, data, stages, seed=args.seed, checkpoint=CACHE / f"{tag}_seed{args.seed}.ckpt",
                          checkpoint_every=500, metrics=RESULTS / f"{tag}_training.csv", recipe=args.recipe)
        t2 = time.perf_counter()
        history = trainer.fit(resume=True)
        t_train = time.perf_counter() - t2
        training = {"recipe": trainer.recipe, "stage_steps": trainer.stage_steps,
                    "training_steps": len(history), "skipped_steps": trainer.n_skipped,
                    "training_energy_evaluations": trainer.energy_evaluations}
        plot_history(history, RESULTS / f"{tag}_training.png")
        extra = {"benchmark": {k: str(v) for k, v in vars(args).items()},
                 "system_spec": {"name": "alanine_dipeptide", "options": {"solvent": args.solvent}}}
        gen.save(CACHE / f"{tag}.bg", extra=extra)
        if args.save_model is not None:
            gen.save(args.save_model, extra=extra)
    if args.save_data is not None:
        data[::3].save(str(args.save_data))
    t3 = time.perf_counter()
    samples = gen.sample(args.samples, seed=args.seed + 1, progress=True)
    t_sample = time.perf_counter() - t3
    diag = samples.diagnostics(warn=False)
    phi, psi = samples.coordinate("phi"), samples.coordinate("psi")
    result = {"solvent": args.solvent, "flow": args.flow, "n_samples": len(samples), "ess_fraction": diag.ess_fraction,
              "max_weight_share": diag.max_weight_share, "pareto_k": diag.pareto_k,
              "inverted_fraction": samples.counts["inverted_chirality"] / len(samples),
              "out_of_domain_fraction": samples.counts["out_of_domain"] / len(samples),
              **training, "energy_evaluations": training["training_energy_evaluations"] + len(samples),
              "md_ns": args.md_ns,
              "wall_s": {"md": t_data, "training": t_train, "sampling": t_sample}}
    try:
        fe = state_free_energy(samples, "C7eq", "C7ax", warn=False)
        result.update(delta_a_kT=fe.delta_a_kT, delta_a_error_kT=fe.error_kT, ess_c7ax=fe.ess_b)
    except ValueError as err:
        result.update(delta_a_kT=None, delta_a_error_kT=None, delta_a_note=str(err))
    reference = alanine_reference(args.solvent)
    ref_samples = None
    for method in ("biased_md", "umbrella", "pt"):  # the best reference first
        path = CACHE / f"alanine_{args.solvent}_{method}.npz"
        if path.exists():
            ref_samples = dict(np.load(path))
            result["histogram_reference"] = method
            break
    if reference is not None:
        result.update(reference_delta_a_kT=reference["delta_a_kT"], reference_error_kT=reference["error_kT"])
        if result.get("delta_a_kT") is not None:
            result["delta_a_deviation_kT"] = result["delta_a_kT"] - reference["delta_a_kT"]
    if ref_samples is not None:
        result["kl_phi_psi"] = histogram_kl(ref_samples, phi, psi, samples.log_weights)
        ramachandran(RESULTS / f"{tag}.png", system.reaction_coordinates["phi"](data),
                     system.reaction_coordinates["psi"](data), phi, psi, samples.log_weights, ref_samples)
    (RESULTS / f"{tag}.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
