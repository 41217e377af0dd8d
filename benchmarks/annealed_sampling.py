"""Plain versus annealed sampling of alanine dipeptide (AMBER ff96, 300 K), over several seeds.

For one generator and one solvent, per seed:

- ``plain``: ``gen.sample(--plain-n)`` (default 10^6; heavy tails hide at small N);
- ``annealed``: ``gen.sample(--particles, anneal=AnnealConfig(...))`` (default 10^5 particles),
  annealed importance sampling in the flow's latent space; the annealer's settings are options.

Each row reports ESS/N, the largest weight share and Pareto k of the *final unnormalised weights*
(`gen.sample` never resamples after the last level; with resampling they are the weights since the
last resampling, next to the number of distinct ancestors), Delta A(C7ax - C7eq) with its stated
error (`state_free_energy`: bootstrap, over lineages for annealed sets) or the refusal, the ESS in
C7ax, energy evaluations (sampling; training from ``--training-evaluations``), effective samples
per 10^6 evaluations, wall and CPU time. The summary gives per method the seed mean and spread of
Delta A against the mean stated error and the reference (read from
``benchmarks/reference/alanine_reference.json`` at run time), and the issue-13 targets met or not.

Results go to ``benchmarks/results/annealed_sampling_{solvent}{--tag}.json``, rewritten after every
row; a killed run started again with the same arguments skips the rows it already has (a row is
keyed by method, seed, size and settings).

    nice -n 5 python benchmarks/annealed_sampling.py --solvent vacuum --seeds 0 1 2 3 4 \\
        --plain-n 1000000 --particles 100000

Not a CI test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from _common import HERE, RESULTS, alanine_reference

import openmm_bg
from openmm_bg.analysis.free_energy import state_free_energy
from openmm_bg.sampling import AnnealConfig

SHIPPED = HERE.parent / "systems" / "models" / "alanine_dipeptide_vacuum.bg"
#: Energy evaluations of the shipped model's training (``benchmarks/results/alanine_vacuum_realnvp.json``,
#: the run that wrote it: 4500 steps, 768,000 evaluations).
SHIPPED_TRAINING_EVALUATIONS = 768_000
TARGETS = {"vacuum": {"ess_fraction": 0.5}, "implicit": {"ess_fraction": 0.2}}
TARGET_PARETO_K, TARGET_EVALUATIONS, TARGET_DEVIATION_KT = 0.5, 2e7, 0.15


def _finite(value):
    return value if value is not None and math.isfinite(value) else None


def evaluate(samples, n_evaluations: int, training_evaluations: int) -> dict:
    """The row's figures for one sample set (plain or annealed)."""
    diag = samples.diagnostics(warn=False)
    row = {"n": len(samples), "ess": diag.ess, "ess_fraction": diag.ess_fraction,
           "max_weight_share": diag.max_weight_share, "pareto_k": _finite(diag.pareto_k),
           "energy_evaluations": n_evaluations, "training_energy_evaluations": training_evaluations,
           "total_energy_evaluations": n_evaluations + training_evaluations,
           "ess_per_1e6_evaluations": 1e6 * diag.ess / n_evaluations,
           "ess_per_1e6_evaluations_incl_training": 1e6 * diag.ess / (n_evaluations + training_evaluations)}
    try:
        fe = state_free_energy(samples, "C7eq", "C7ax", warn=False)
        row.update(delta_a_kT=fe.delta_a_kT, delta_a_error_kT=fe.error_kT, ess_c7ax=fe.ess_b, ess_c7eq=fe.ess_a)
    except ValueError as err:  # InsufficientSamplesError: a refusal, counted
        row.update(delta_a_kT=None, delta_a_error_kT=None, refusal=str(err))
    return row


def run_plain(gen, n: int, seed: int, training_evaluations: int) -> dict:
    samples = gen.sample(n, seed=seed, progress=True)
    return evaluate(samples, len(samples), training_evaluations)


def run_annealed(gen, n: int, seed: int, config: AnnealConfig, training_evaluations: int) -> dict:
    samples = gen.sample(n, seed=seed, anneal=config, progress=True)
    p = samples.provenance
    row = evaluate(samples, p["n_energy_evaluations"], training_evaluations)
    acceptance = [a for a in p["acceptance"] if a is not None]
    row.update(n_levels=p["n_levels"], n_resampling=p["n_resampling"], n_distinct_ancestors=p["n_distinct_ancestors"],
               n_energy_force_evaluations=p["n_energy_force_evaluations"], betas=p["betas"],
               step_sizes=p["step_sizes"], mean_acceptance=float(np.mean(acceptance)) if acceptance else None,
               n_invalid=int(sum(p["n_invalid"])))
    if p.get("independence_acceptance") is not None:
        row["independence_acceptance"] = p["independence_acceptance"]
    if samples.ancestors is not None:  # how many lineages carry C7ax (the lineage bootstrap's unit)
        in_ax = np.asarray(samples.system.states["C7ax"](samples.positions), dtype=bool)
        lineages, share = np.unique(samples.ancestors[in_ax], return_inverse=True)
        w = samples.weights[in_ax]
        row.update(n_distinct_ancestors_c7ax=int(lineages.size),
                   largest_lineage_share_c7ax=float(np.bincount(share, w).max() / w.sum()) if w.sum() > 0 else None)
    return row


def summarise(rows: list[dict], reference: dict | None, solvent: str) -> dict:
    """Seed mean and spread of Delta A, mean stated error, deviations and the targets per row and overall."""
    done = [r for r in rows if r.get("delta_a_kT") is not None]
    out = {"n_seeds": len(rows), "refusals": len(rows) - len(done),
           "ess_fraction": [r["ess_fraction"] for r in rows], "pareto_k": [r["pareto_k"] for r in rows],
           "max_weight_share": [r["max_weight_share"] for r in rows]}
    if done:
        values = np.array([r["delta_a_kT"] for r in done])
        errors = np.array([r["delta_a_error_kT"] for r in done])
        out.update(delta_a_mean_kT=float(values.mean()),
                   delta_a_seed_spread_kT=float(values.std(ddof=1)) if len(values) > 1 else None,
                   mean_stated_error_kT=float(errors.mean()))
    target = TARGETS[solvent]["ess_fraction"]
    met = {"ess_fraction": all(r["ess_fraction"] >= target for r in rows),
           "pareto_k": all(r["pareto_k"] is not None and r["pareto_k"] < TARGET_PARETO_K for r in rows),
           "evaluations": all(r["total_energy_evaluations"] <= TARGET_EVALUATIONS for r in rows),
           "no_refusals": out["refusals"] == 0}
    if reference is not None and done:
        s_ref = reference["error_kT"]
        dev = [r["delta_a_kT"] - reference["delta_a_kT"] for r in done]
        out["deviation_kT"] = dev
        met["delta_a_within_0.15"] = out["refusals"] == 0 and all(abs(d) <= TARGET_DEVIATION_KT for d in dev)
        met["delta_a_within_2sigma"] = out["refusals"] == 0 and all(
            abs(d) <= 2.0 * math.hypot(r["delta_a_error_kT"], s_ref) for d, r in zip(dev, done))
        if out.get("delta_a_seed_spread_kT") is not None:  # spread consistent with the stated errors (factor 2)
            met["spread_consistent"] = 0.5 <= out["delta_a_seed_spread_kT"] / out["mean_stated_error_kT"] <= 2.0
    out["targets_met"] = met
    return out


def _write(path: Path, results: dict) -> dict:
    """Write ``results`` merged with the rows already in ``path`` (runs of other seeds or methods in
    parallel processes add theirs); returns the merged results."""
    if path.exists():
        results["rows"] = {**json.loads(path.read_text())["rows"], **results["rows"]}
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1) + "\n")
    tmp.replace(path)
    return results


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvent", choices=["vacuum", "implicit"], default="vacuum")
    parser.add_argument("--model", type=Path, default=SHIPPED, help="generator file (default: the shipped vacuum one)")
    parser.add_argument("--training-evaluations", type=int, default=None,
                        help="energy evaluations the model's training cost (default: the shipped model's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=None, help="run this one seed only (overrides --seeds)")
    parser.add_argument("--methods", nargs="+", choices=["plain", "annealed"], default=["plain", "annealed"])
    parser.add_argument("--plain-n", type=int, default=1_000_000, help="plain samples per seed")
    parser.add_argument("--particles", type=int, default=100_000, help="annealed particles per seed")
    parser.add_argument("--kernel", choices=["mala", "hmc"], default="mala")
    parser.add_argument("--target-cess", type=float, default=AnnealConfig.target_cess)
    parser.add_argument("--max-levels", type=int, default=AnnealConfig.n_levels)
    parser.add_argument("--steps-per-level", type=int, default=AnnealConfig.mcmc_steps_per_level)
    parser.add_argument("--independence-steps", type=int, default=AnnealConfig.independence_steps,
                        help="proposals from the prior per level (global moves), after the kernel steps")
    parser.add_argument("--resample-threshold", type=float, default=AnnealConfig.resample_threshold)
    parser.add_argument("--step-size", type=float, default=AnnealConfig.step_size)
    parser.add_argument("--precondition", action="store_true")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--tag", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    seeds = [args.seed] if args.seed is not None else args.seeds
    system = openmm_bg.systems.load("alanine_dipeptide", solvent=args.solvent)
    gen = openmm_bg.BoltzmannGenerator.load(args.model, system)
    training = (SHIPPED_TRAINING_EVALUATIONS if args.model.resolve() == SHIPPED.resolve() else 0) \
        if args.training_evaluations is None else args.training_evaluations
    config = AnnealConfig(n_levels=args.max_levels, kernel=args.kernel, mcmc_steps_per_level=args.steps_per_level,
                          step_size=args.step_size, target_cess=args.target_cess,
                          resample_threshold=args.resample_threshold, precondition=args.precondition,
                          independence_steps=args.independence_steps)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k not in ("seed", "schedule", "progress")}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out_path = RESULTS / f"annealed_sampling_{args.solvent}{args.tag}.json"
    results = json.loads(out_path.read_text()) if out_path.exists() else {"rows": {}}
    reference = alanine_reference(args.solvent)
    results.update(solvent=args.solvent, model=str(args.model), generator=gen.identity(), temperature_K=300.0,
                   reference=reference and {k: reference[k] for k in ("delta_a_kT", "error_kT")},
                   cpu_count=os.cpu_count())

    def key(method, seed):
        if method == "plain":
            return f"plain/n{args.plain_n}/seed{seed}"
        return f"annealed/n{args.particles}/{json.dumps(settings, sort_keys=True)}/seed{seed}"

    for seed in seeds:
        for method in args.methods:
            k = key(method, seed)
            if k in results["rows"]:
                print(f"{k}: done earlier, skipped", flush=True)
                continue
            print(f"{method}, seed {seed} ({os.getloadavg()[0]:.1f} load) ...", flush=True)
            t0, c0 = time.perf_counter(), time.process_time()
            if method == "plain":
                row = run_plain(gen, args.plain_n, seed, training)
            else:
                row = run_annealed(gen, args.particles, seed, config, training)
            row.update(method=method, seed=seed, wall_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0,
                       load_average=os.getloadavg()[0], settings=settings if method == "annealed" else None)
            results["rows"][k] = row
            brief = {f: row.get(f) for f in ("ess_fraction", "max_weight_share", "pareto_k", "delta_a_kT",
                                             "delta_a_error_kT", "energy_evaluations", "wall_s", "cpu_s")}
            print(f"  {json.dumps(brief)}", flush=True)
            _write(out_path, results)
    results = _write(out_path, results)  # with the rows other processes added meanwhile
    groups: dict[str, list] = {}
    for k, row in results["rows"].items():
        groups.setdefault(k.rsplit("/seed", 1)[0], []).append(row)
    results["summary"] = {g: summarise(rows, reference, args.solvent) for g, rows in groups.items()}
    _write(out_path, results)
    print(json.dumps(results["summary"], indent=1))
    return results


if __name__ == "__main__":
    main()
