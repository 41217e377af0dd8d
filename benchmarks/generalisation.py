"""Generalisation benchmark: the default training recipe, no per-molecule flags, on capped peptides.

Peptides (all capped, ACE-...-NME, amber14 unless built in, 300 K), each in vacuum and in implicit
solvent (OBC2 for peptides built from a sequence; the built-in alanine dipeptide uses its own
OBC1):

- tuning set (the recipe may be tuned on these): ``ALA2`` (built-in alanine dipeptide) and ``AAA``;
- **held out** (named here before any tuning; the default is judged on them only, never tuned on
  them): ``GAAG`` (glycines at both ends: two very flexible residues, broad phi > 0 basins) and
  ``APA`` (a proline: its ring constrains phi near -1.1 rad and is closed by a bond that is not a
  Z-matrix coordinate).

Per molecule and solvent:

1. training data: Langevin MD at 300 K from the minimised built structure, ``--data-ns-per-dof``
   ns per flow degree of freedom (the same rule for every molecule), cached in ``benchmarks/cache``;
2. reference: long plain MD (``--reference-ns``) and MD with a bias ``-h (1 + cos(phi - 1 rad)) / 2``
   (``h = --bias-kt`` kT) on every phi, reweighted exactly by ``exp(+bias)``, which populates the
   rare phi > 0 basins (both cached; their cost is reported, they are the expensive part);
3. training: ``Trainer(gen, data)`` with the library's default recipe (or ``--recipe``), the
   default generator (``BoltzmannGenerator.build`` defaults), wall time and energy evaluations
   recorded; the budget is about 30 minutes on 2 cores (``--steps-scale`` scales it, for every
   molecule alike);
4. evaluation: ``--samples`` plain samples (10^6 at scale) and ``--particles`` annealed particles
   (10^5 at scale, ``AnnealConfig()``): ESS/N, Pareto k, largest weight; per residue the phi/psi
   KL(reference || reweighted) on a 36 x 36 grid with a 1e-10 pseudocount per bin next to the
   reference's own split-half KL; basin populations (alpha_R, beta/PPII, alpha_L) with errors next
   to the reference's; the coverage table (effective samples per basin; `openmm_bg.analysis`'s
   coverage diagnostic when it exists) and the targets of issue 14 checked on held-out molecules.

Results: ``benchmarks/results/generalisation_{molecule}_{solvent}.json``.

    python benchmarks/generalisation.py --molecules GAAG APA --solvents vacuum implicit
    python benchmarks/generalisation.py --molecules ALA2 --solvents vacuum --tiny   # a smoke check

Peptides other than ``ALA2`` need ``openmm_bg.systems.peptide`` (the sequence builder of issue 14);
without it the script stops with a message saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import mdtraj
import numpy as np
from _common import CACHE, RESULTS

import openmm_bg
from openmm_bg.analysis import reweighting
from openmm_bg.analysis.coverage import coverage, coverage_reference
from openmm_bg.md.simulation import default_timestep
from openmm_bg.sampling import AnnealConfig
from openmm_bg.training import Trainer

TUNING = ("ALA2", "AAA")
HELD_OUT = ("GAAG", "APA")
#: Basins of one residue in (phi, psi), rad: alpha_R, beta/PPII (phi < 0, the rest) and alpha_L (phi > 0).
BASINS = ("alpha_R", "beta", "alpha_L")
GRID = 36
PSEUDOCOUNT = 1e-10


# ----------------------------------------------------------------------------------------- systems
def build_system(molecule: str, solvent: str):
    """The molecule as a `MolecularSystem`: the built-in alanine dipeptide or a capped peptide."""
    if molecule == "ALA2":
        return openmm_bg.systems.load("alanine_dipeptide", solvent=solvent)
    try:
        from openmm_bg.systems import peptide
    except ImportError:
        raise SystemExit(f"{molecule}: this benchmark builds peptides with openmm_bg.systems.peptide (issue 14's "
                         "sequence builder), which this installation does not have; run it on ALA2 only, or "
                         "install a version with the peptide builder") from None
    return peptide(molecule, caps=True, solvent=solvent)


def backbone_dihedrals(system, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-residue phi and psi ``[n, n_residues]`` (rad) of frames ``xyz [n, n_atoms, 3]`` (nm)."""
    traj = mdtraj.Trajectory(np.asarray(xyz, dtype=np.float32), system.mdtraj_topology)
    (phi_atoms, phi), (psi_atoms, psi) = mdtraj.compute_phi(traj), mdtraj.compute_psi(traj)
    # pair the phi of residue i (C(i-1) N CA C) with its psi (N CA C N(i+1)) by the shared CA
    phi_ca, psi_ca = phi_atoms[:, 2], psi_atoms[:, 1]
    common = [c for c in phi_ca if c in set(psi_ca)]
    pi = [int(np.flatnonzero(phi_ca == c)[0]) for c in common]
    si = [int(np.flatnonzero(psi_ca == c)[0]) for c in common]
    return phi[:, pi].astype(np.float64), psi[:, si].astype(np.float64)


def basin_of(phi: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Basin index (0 alpha_R, 1 beta/PPII, 2 alpha_L) of each (phi, psi), rad."""
    alpha_r = (phi < 0) & (psi > -2.1) & (psi < 0.87)
    return np.where(phi >= 0, 2, np.where(alpha_r, 0, 1))


# ----------------------------------------------------------------------------------------- data
def md(system, ns: float, seed: int, tag: str, bias_kt: float = 0.0) -> tuple[mdtraj.Trajectory, np.ndarray, float]:
    """MD frames 1 ps apart (cached), their log reweighting factors to the unbiased ensemble, wall time (s).

    With ``bias_kt > 0`` every phi gets the bias ``-bias_kt (1 + cos(phi - 1)) / 2`` kT; the frames'
    log weights are then ``+bias``, exactly (the bias depends on positions only).
    """
    import openmm

    path = CACHE / f"generalisation_{tag}_{ns:g}ns_bias{bias_kt:g}_seed{seed}.h5"
    biased = system
    if bias_kt > 0:
        phi_atoms, _ = mdtraj.compute_phi(mdtraj.Trajectory(system.positions[None].astype(np.float32),
                                                            system.mdtraj_topology))
        force = openmm.CustomTorsionForce(f"-h*(1 + cos(theta - 1.0))/2; h = {bias_kt} * kT")
        force.addGlobalParameter("kT", openmm_bg.systems.kT_kJ_per_mol(system.temperature))
        for a in phi_atoms:
            force.addTorsion(*(int(i) for i in a), [])
        omm = openmm.XmlSerializer.clone(system.system)
        omm.addForce(force)
        biased = dataclasses.replace(system, system=omm)
    start = time.perf_counter()
    if path.exists():
        traj = mdtraj.load(str(path))
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        stride = max(1, int(round(1.0 / default_timestep(system))))  # one frame per ps
        traj = openmm_bg.simulate(biased, n_frames=max(1, int(round(ns * 1000))), stride=stride, seed=seed,
                                  minimize=True, equilibration_steps=10 * stride, progress=False)
        traj.save(str(path))
    wall = time.perf_counter() - start
    log_w = np.zeros(traj.n_frames)
    if bias_kt > 0:
        phi, _ = backbone_dihedrals(system, traj.xyz)
        log_w = (-bias_kt * (1 + np.cos(phi - 1.0)) / 2).sum(1)  # exp(+bias), the bias (kT) is <= 0
    return traj, log_w, wall


# ----------------------------------------------------------------------------------------- measures
def histogram(phi, psi, log_w=None) -> np.ndarray:
    """Normalised 36 x 36 (phi, psi) histogram with the 1e-10 pseudocount per bin."""
    w = None if log_w is None else reweighting.normalized_weights(log_w)
    h, _, _ = np.histogram2d(phi, psi, bins=GRID, range=[[-np.pi, np.pi], [-np.pi, np.pi]], weights=w)
    h = h / max(h.sum(), 1e-300) + PSEUDOCOUNT
    return h / h.sum()


def kl(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.sum(p * np.log(p / q)))


def populations(basin: np.ndarray, log_w=None, blocks: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Basin populations and their errors: block standard errors (contiguous blocks, MD) or, with
    weights, a bootstrap over samples."""
    n = len(basin)
    if log_w is None:
        pops = np.array([(basin == b).mean() for b in range(3)])
        parts = np.array_split(np.arange(n), blocks)
        per = np.array([[(basin[i] == b).mean() for b in range(3)] for i in parts])
        return pops, per.std(0, ddof=1) / math.sqrt(blocks)
    w = reweighting.normalized_weights(log_w)
    pops = np.array([w[basin == b].sum() for b in range(3)])
    rng = np.random.default_rng(0)
    reps = []
    for _ in range(200):
        i = rng.integers(0, n, n)
        wi = w[i] / w[i].sum()
        reps.append([wi[basin[i] == b].sum() for b in range(3)])
    return pops, np.std(reps, axis=0, ddof=1)


def effective_samples(basin: np.ndarray, log_w) -> np.ndarray:
    """Kish effective samples of the weights inside each basin."""
    out = []
    for b in range(3):
        lw = np.where(basin == b, log_w, -np.inf)
        out.append(reweighting.kish_ess(lw) if np.isfinite(lw).any() else 0.0)
    return np.array(out)


def evaluate(system, samples, reference: dict, tag: str) -> dict:
    """Weights, per-residue KL, basin populations and coverage of one sample set against the reference."""
    log_w = np.asarray(samples.log_weights, dtype=np.float64)
    good = np.isfinite(log_w)
    diag = reweighting.diagnose(log_w, warn=False)
    phi, psi = backbone_dihedrals(system, np.nan_to_num(samples.positions))
    out = {"kind": tag, "n": int(len(log_w)), "ess": diag.ess, "ess_fraction": diag.ess_fraction,
           "pareto_k": diag.pareto_k, "max_weight_share": diag.max_weight_share, "residues": []}
    for r in range(phi.shape[1]):
        basin = basin_of(phi[:, r], psi[:, r])
        pops, err = populations(basin[good], log_w[good])
        q = histogram(phi[good, r], psi[good, r], log_w[good])
        ref = reference["residues"][r]
        n_eff = effective_samples(basin[good], log_w[good])
        raw = np.array([(basin[good] == b).mean() for b in range(3)])
        out["residues"].append({
            "kl": kl(np.asarray(ref["histogram"]), q), "reference_split_half_kl": ref["split_half_kl"],
            "populations": dict(zip(BASINS, pops.tolist())), "errors": dict(zip(BASINS, err.tolist())),
            "raw_shares": dict(zip(BASINS, raw.tolist())), "effective_samples": dict(zip(BASINS, n_eff.tolist())),
            "reference_populations": ref["populations"], "reference_errors": ref["errors"]})
    return out


def reference_summary(system, traj: mdtraj.Trajectory, log_w: np.ndarray) -> dict:
    """Per residue: the reference histogram, split-half KL, basin populations with block errors."""
    phi, psi = backbone_dihedrals(system, traj.xyz)
    n = len(log_w)
    half = n // 2
    residues = []
    for r in range(phi.shape[1]):
        basin = basin_of(phi[:, r], psi[:, r])
        w = reweighting.normalized_weights(log_w)
        pops = np.array([w[basin == b].sum() for b in range(3)])
        parts = np.array_split(np.arange(n), 10)
        per = np.array([[reweighting.normalized_weights(log_w[i])[basin[i] == b].sum() for b in range(3)]
                        for i in parts])
        residues.append({
            "histogram": histogram(phi[:, r], psi[:, r], log_w).tolist(),
            "split_half_kl": kl(histogram(phi[:half, r], psi[:half, r], log_w[:half]),
                                histogram(phi[half:, r], psi[half:, r], log_w[half:])),
            "populations": dict(zip(BASINS, pops.tolist())),
            "errors": dict(zip(BASINS, (per.std(0, ddof=1) / math.sqrt(10)).tolist()))})
    return {"residues": residues, "n_frames": n}


def targets(result: dict, solvent: str) -> dict:
    """Issue 14's targets, checked on one molecule's plain samples (report for tuning molecules too)."""
    plain = result["plain"]
    kl_limit = 0.1 if solvent == "vacuum" else 0.3
    checks = {"basins >= 1 % have >= 30 effective samples": True, "populations within 3 sqrt(SE^2 + SE_ref^2)": True,
              f"per-residue KL <= {kl_limit} and <= 2 x split-half": True,
              "ESS/N >= 1 % plain": plain["ess_fraction"] >= 0.01}
    for res in plain["residues"]:
        for b in BASINS:
            ref, ref_err = res["reference_populations"][b], res["reference_errors"][b]
            if ref >= 0.01 and res["effective_samples"][b] < 30:
                checks["basins >= 1 % have >= 30 effective samples"] = False
            if abs(res["populations"][b] - ref) > 3 * math.hypot(res["errors"][b], ref_err):
                checks["populations within 3 sqrt(SE^2 + SE_ref^2)"] = False
        if not (res["kl"] <= kl_limit and res["kl"] <= 2 * res["reference_split_half_kl"]):
            checks[f"per-residue KL <= {kl_limit} and <= 2 x split-half"] = False
    if "annealed" in result and solvent == "vacuum":
        checks["ESS/N >= 20 % annealed"] = result["annealed"]["ess_fraction"] >= 0.2
    return checks


# ----------------------------------------------------------------------------------------- one run
def run(molecule: str, solvent: str, args) -> dict:
    system = build_system(molecule, solvent)
    tag = f"{molecule}_{solvent}"
    result = {"molecule": molecule, "solvent": solvent, "held_out": molecule in HELD_OUT,
              "recipe": args.recipe or "library default", "n_atoms": system.n_atoms}
    n_dof = 3 * system.n_atoms - 6 - system.system.getNumConstraints()  # the flow's dimensions
    result["n_dof"] = n_dof
    data, _, data_wall = md(system, args.data_ns_per_dof * n_dof, args.seed, tag)
    plain_ref, plain_w, plain_wall = md(system, args.reference_ns, args.seed + 1, tag)
    bias_ref, bias_w, bias_wall = md(system, args.reference_ns, args.seed + 2, tag, bias_kt=args.bias_kt)
    reference = reference_summary(system, bias_ref, bias_w)
    plain_summary = reference_summary(system, plain_ref, plain_w)
    result["data"] = {"frames": data.n_frames, "ns": args.data_ns_per_dof * n_dof, "wall_s": data_wall}
    result["reference"] = {"plain_md_ns": args.reference_ns, "biased_md_ns": args.reference_ns,
                           "bias_kt": args.bias_kt, "wall_s": plain_wall + bias_wall,
                           "plain_populations": [r["populations"] for r in plain_summary["residues"]],
                           "biased_populations": [r["populations"] for r in reference["residues"]],
                           "split_half_kl": [r["split_half_kl"] for r in reference["residues"]]}
    gen = openmm_bg.BoltzmannGenerator.build(system, data, seed=args.seed)
    kwargs = {} if args.recipe is None else {"recipe": args.recipe}
    trainer = Trainer(gen, data, seed=args.seed, progress=False, **kwargs)
    if args.steps_scale != 1.0:  # the same factor for every molecule (not a per-molecule flag)
        stages = [dataclasses.replace(s, steps=max(1, int(s.steps * args.steps_scale))) for s in trainer.stages]
        trainer = Trainer(gen, data, stages, seed=args.seed, progress=False, **kwargs)
    start = time.perf_counter()
    history = trainer.fit()
    result["training"] = {"wall_s": time.perf_counter() - start, "steps": len(history),
                          "stage_steps": trainer.stage_steps, "energy_evaluations": trainer.energy_evaluations,
                          "recipe": trainer.recipe}
    start = time.perf_counter()
    plain = gen.sample(args.samples, seed=args.seed)
    result["plain"] = evaluate(system, plain, reference, "plain")
    result["plain"]["wall_s"] = time.perf_counter() - start
    result["plain"]["energy_evaluations"] = args.samples
    if args.particles:
        start = time.perf_counter()
        annealed = gen.sample(args.particles, seed=args.seed, anneal=AnnealConfig())
        result["annealed"] = evaluate(system, annealed, reference, "annealed")
        result["annealed"]["wall_s"] = time.perf_counter() - start
        result["annealed"]["energy_evaluations"] = annealed.provenance["n_energy_evaluations"]
        # the weights are those since the last resampling: their ESS says nothing of how many
        # lineages survived, so the distinct ancestors stand next to it (issue 13's rule)
        for key in ("n_levels", "n_resampling", "n_distinct_ancestors"):
            result["annealed"][key] = annealed.provenance[key]
    result["targets"] = targets(result, solvent)
    # the library's coverage table against the training data (what `openmm-bg train` prints)
    reference_clusters = coverage_reference(system, data)
    plain_coverage = coverage(plain, reference_clusters)
    result["coverage"] = {"plain": plain_coverage.as_dict()}
    print(f"{tag} coverage of the plain samples:\n{plain_coverage.table()}")
    if args.particles:
        result["coverage"]["annealed"] = coverage(annealed, reference_clusters).as_dict()
    return result


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--molecules", nargs="+", default=list(TUNING + HELD_OUT))
    p.add_argument("--solvents", nargs="+", default=["vacuum", "implicit"], choices=["vacuum", "implicit"])
    p.add_argument("--recipe", choices=["classic", "adaptive"], default=None, help="default: the library's")
    p.add_argument("--data-ns-per-dof", type=float, default=0.05, help="training MD per flow degree of freedom (ns)")
    p.add_argument("--reference-ns", type=float, default=100.0, help="each reference MD run (ns)")
    p.add_argument("--bias-kt", type=float, default=3.0, help="depth of the phi > 0 bias of the second reference")
    p.add_argument("--samples", type=int, default=1_000_000)
    p.add_argument("--particles", type=int, default=100_000)
    p.add_argument("--steps-scale", type=float, default=1.0, help="scales every stage, for all molecules alike")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tag", default="", help="suffix of the result file (e.g. the recipe compared)")
    p.add_argument("--tiny", action="store_true", help="smoke check: minute-sized data, training and samples")
    args = p.parse_args(argv)
    if args.tiny:
        args.data_ns_per_dof, args.reference_ns, args.samples, args.particles = 0.002, 0.2, 2000, 200
        args.steps_scale = min(args.steps_scale, 0.02)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for molecule in args.molecules:
        for solvent in args.solvents:
            result = run(molecule, solvent, args)
            suffix = args.tag + ("_tiny" if args.tiny else "")
            out = RESULTS / f"generalisation_{molecule}_{solvent}{suffix}.json"
            out.write_text(json.dumps(result, indent=1))
            plain = result["plain"]
            print(f"{molecule} {solvent}: ESS/N {plain['ess_fraction']:.2%}, k {plain['pareto_k']:.2f}, KL per "
                  f"residue {[round(r['kl'], 3) for r in plain['residues']]}, train "
                  f"{result['training']['wall_s']:.0f} s; targets {result['targets']} -> {out}")


if __name__ == "__main__":
    main()
