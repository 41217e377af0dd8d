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

1. training data: Langevin MD at 300 K, ``--data-ns-per-dof`` ns per flow degree of freedom (the
   same rule for every molecule), from the minimised built structure or, with ``--starts N``, from
   ``N`` structures of `openmm_bg.md.torsion_starts` (every residue's phi/psi set to a random
   basin), merged with each frame's origin (`openmm_bg.md.simulate_starts`); cached in
   ``benchmarks/cache``;
2. reference: plain MD (``--reference-ns``) and MD with a bias ``-h (1 + cos(phi - 1 rad)) / 2``
   (``h = --bias-kt`` kT) on every phi, reweighted exactly by ``exp(+bias)``, which populates the
   rare phi > 0 basins. Each is made of independent ``--chunk-ns`` runs (own seeds), and what the
   evaluation needs of a run (per residue: weighted 36 x 36 phi/psi histograms of its two halves,
   weighted basin sums in 10 time blocks) is kept in ``benchmarks/reference/generalisation_*.npz``,
   committed: references are the expensive part, so they grow run by run and session by session,
   and several processes can make chunks side by side (``--reference-only``; a ``.lock`` file
   marks a chunk in progress). The primary reference is the biased one; the plain one checks it;
3. training: ``Trainer(gen, data)`` with the library's default recipe (or ``--recipe``), the
   default generator (``BoltzmannGenerator.build`` defaults), wall time and energy evaluations
   recorded; the budget is about 30 minutes on 2 cores (``--steps-scale`` scales it, for every
   molecule alike);
4. evaluation: ``--samples`` plain samples (10^6 at scale) and ``--particles`` annealed particles
   (10^5 at scale, ``anneal=True``: the generator's default, ``GENERATOR_DEFAULT``; until 2026-12-02
   the runs used the annealer's generic ``AnnealConfig()``, conditional ESS 0.8 per level, far fewer
   levels): ESS/N, Pareto k, largest weight; per residue the phi/psi
   KL(reference || reweighted) on a 36 x 36 grid with a 1e-10 pseudocount per bin next to the
   reference's own split-half KL; basin populations (alpha_R, beta/PPII, alpha_L) with errors next
   to the reference's; the coverage table (effective samples per basin; `openmm_bg.analysis`'s
   coverage diagnostic when it exists) and the targets of issue 14 checked on held-out molecules.

Results: ``benchmarks/results/generalisation_{molecule}_{solvent}{tag}.json``.

    python benchmarks/generalisation.py --molecules GAAG APA --solvents vacuum implicit
    python benchmarks/generalisation.py --molecules GAAG --solvents vacuum --reference-only   # refs only
    python benchmarks/generalisation.py --molecules ALA2 --solvents vacuum --tiny   # a smoke check

Peptides other than ``ALA2`` need ``openmm_bg.systems.peptide`` (the sequence builder of issue 14);
without it the script stops with a message saying so.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import mdtraj
import numpy as np
from _common import CACHE, HERE, RESULTS, multistart_md

import openmm_bg
from openmm_bg.analysis import reweighting
from openmm_bg.analysis.coverage import coverage, coverage_reference
from openmm_bg.md.simulation import default_timestep
from openmm_bg.training import Trainer

TUNING = ("ALA2", "AAA")
HELD_OUT = ("GAAG", "APA")
#: Basins of one residue in (phi, psi), rad: alpha_R, beta/PPII (phi < 0, the rest) and alpha_L (phi > 0).
BASINS = ("alpha_R", "beta", "alpha_L")
GRID = 36
PSEUDOCOUNT = 1e-10
#: Committed reference chunks (``generalisation_{molecule}_{solvent}_{kind}_{ns}ns_{index}.npz``).
REFERENCE_DIR = HERE / "reference"
#: Chunk ``i`` of the plain / biased reference runs with seed ``offset + i``.
SEED_OFFSET = {"plain": 1000, "biased": 2000}
N_BLOCKS = 10


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
def phi_bias(system, bias_kt: float):
    """``system`` with the bias ``-bias_kt (1 + cos(phi - 1)) / 2`` kT on every phi (``bias_kt > 0``)."""
    import openmm

    phi_atoms, _ = mdtraj.compute_phi(mdtraj.Trajectory(system.positions[None].astype(np.float32),
                                                        system.mdtraj_topology))
    force = openmm.CustomTorsionForce(f"-h*(1 + cos(theta - 1.0))/2; h = {bias_kt} * kT")
    force.addGlobalParameter("kT", openmm_bg.systems.kT_kJ_per_mol(system.temperature))
    for a in phi_atoms:
        force.addTorsion(*(int(i) for i in a), [])
    omm = openmm.XmlSerializer.clone(system.system)
    omm.addForce(force)
    return dataclasses.replace(system, system=omm)


def frame_stride(system) -> int:
    """MD steps per frame: one frame per ps."""
    return max(1, int(round(1.0 / default_timestep(system))))


def training_data(system, ns: float, starts: int, seed: int, tag: str):
    """Training frames 1 ps apart (cached), their start index (``None`` for one start), wall time (s).

    One start: MD from the minimised built structure. ``starts > 1``: ``starts`` structures of
    `torsion_starts` (seed ``seed``), ``ns / starts`` each.
    """
    n_frames = max(1, int(round(ns * 1000)))
    stride = frame_stride(system)
    start = time.perf_counter()
    CACHE.mkdir(parents=True, exist_ok=True)
    if starts <= 1:
        path = CACHE / f"generalisation_{tag}_{ns:g}ns_bias0_seed{seed}.h5"
        if path.exists():
            return mdtraj.load(str(path)), None, time.perf_counter() - start
        traj = openmm_bg.simulate(system, n_frames=n_frames, stride=stride, seed=seed, minimize=True,
                                  equilibration_steps=10 * stride, progress=True)
        traj.save(str(path))
        return traj, None, time.perf_counter() - start
    path = CACHE / f"generalisation_{tag}_{ns:g}ns_{starts}starts_seed{seed}.h5"
    traj, origins = multistart_md(system, path, starts, n_frames, stride, seed, equilibration_steps=10 * stride)
    return traj, origins, time.perf_counter() - start


def chunk_path(tag: str, kind: str, chunk_ns: float, index: int, bias_kt: float) -> Path:
    label = "plain" if kind == "plain" else f"bias{bias_kt:g}"
    return REFERENCE_DIR / f"generalisation_{tag}_{label}_{chunk_ns:g}ns_{index:03d}.npz"


def reference_chunk(system, tag: str, kind: str, chunk_ns: float, index: int, bias_kt: float) -> dict | None:
    """One independent reference run's summary (made and written if missing), or None while another
    process makes it.

    Keys: ``hist [n_res, 2, 36, 36]`` (weights of each half's frames per phi/psi bin, unnormalised),
    ``basin [n_res, N_BLOCKS, 3]`` and ``total [N_BLOCKS]`` (weights per basin and in all, per time
    block), ``n_frames``, ``wall_s``, ``seed``. Weights are ``exp(+bias)`` (1 for plain MD).
    """
    path = chunk_path(tag, kind, chunk_ns, index, bias_kt)
    if path.exists():
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    REFERENCE_DIR.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return None
    os.close(fd)
    try:
        seed = SEED_OFFSET[kind] + index
        md_system = system if kind == "plain" else phi_bias(system, bias_kt)
        start = time.perf_counter()
        out = CACHE / f"{path.stem}.h5"  # resumable while it runs (a killed run goes on from its checkpoint)
        CACHE.mkdir(parents=True, exist_ok=True)
        stride = frame_stride(system)
        traj = openmm_bg.simulate(md_system, n_frames=max(1, int(round(chunk_ns * 1000))), stride=stride, seed=seed,
                                  minimize=True, equilibration_steps=10 * stride, progress=True, output=out,
                                  resume=True)
        wall = time.perf_counter() - start
        phi, psi = backbone_dihedrals(system, traj.xyz)
        log_w = np.zeros(len(phi)) if kind == "plain" else (-bias_kt * (1 + np.cos(phi - 1.0)) / 2).sum(1)
        w = np.exp(log_w)  # the bias is bounded (>= -bias_kt per phi): no overflow, no underflow to 0
        n = len(w)
        halves = np.array_split(np.arange(n), 2)
        blocks = np.array_split(np.arange(n), N_BLOCKS)
        edges = np.linspace(-np.pi, np.pi, GRID + 1)
        hist = np.array([[np.histogram2d(phi[i, r], psi[i, r], bins=[edges, edges], weights=w[i])[0] for i in halves]
                         for r in range(phi.shape[1])])
        basin = np.array([[[w[i][basin_of(phi[i, r], psi[i, r]) == b].sum() for b in range(3)] for i in blocks]
                          for r in range(phi.shape[1])])
        chunk = {"hist": hist, "basin": basin, "total": np.array([w[i].sum() for i in blocks]),
                 "n_frames": np.array(n), "wall_s": np.array(wall), "seed": np.array(seed)}
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez_compressed(tmp, **chunk)
        os.replace(tmp, path)
        return chunk
    finally:
        lock.unlink(missing_ok=True)


def reference(system, tag: str, kind: str, total_ns: float, chunk_ns: float, bias_kt: float,
              wait: bool = True) -> dict | None:
    """The reference of ``kind`` ("plain" or "biased") from ``ceil(total_ns / chunk_ns)`` chunks
    (`reference_summary`); ``None`` if some chunk is being made elsewhere and ``wait`` is False."""
    n_chunks = max(1, math.ceil(total_ns / chunk_ns - 1e-9))
    chunks: list = [None] * n_chunks
    while True:
        for i in range(n_chunks):
            if chunks[i] is None:
                chunks[i] = reference_chunk(system, tag, kind, chunk_ns, i, bias_kt)
        if all(c is not None for c in chunks):
            return reference_summary(chunks, chunk_ns)
        if not wait:
            return None
        time.sleep(30)  # another process is making the missing chunks


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


def reference_summary(chunks: list[dict], chunk_ns: float) -> dict:
    """Per residue: the reference histogram, split-half KL, basin populations with block errors.

    Histograms and populations pool every chunk's weights. Split-half KL: even- against odd-numbered
    chunks (independent runs), or the two halves of a single chunk. Errors: standard error of the
    populations over the ``N_BLOCKS`` time blocks of every chunk.
    """
    hist = np.stack([c["hist"] for c in chunks])  # [chunk, res, half, 36, 36]
    basin = np.concatenate([c["basin"] for c in chunks], axis=1)  # [res, blocks, 3]
    total = np.concatenate([c["total"] for c in chunks])  # [blocks]

    def normalised(h):
        h = h / max(h.sum(), 1e-300) + PSEUDOCOUNT
        return h / h.sum()

    residues = []
    for r in range(hist.shape[1]):
        if len(chunks) >= 2:
            a, b = hist[0::2, r].sum((0, 1)), hist[1::2, r].sum((0, 1))
        else:
            a, b = hist[0, r, 0], hist[0, r, 1]
        per_block = basin[r] / total[:, None]
        pops = basin[r].sum(0) / total.sum()
        residues.append({
            "histogram": normalised(hist[:, r].sum((0, 1))).tolist(),
            "split_half_kl": kl(normalised(a), normalised(b)),
            "populations": dict(zip(BASINS, pops.tolist())),
            "errors": dict(zip(BASINS, (per_block.std(0, ddof=1) / math.sqrt(len(total))).tolist()))})
    return {"residues": residues, "n_frames": int(sum(int(c["n_frames"]) for c in chunks)),
            "n_chunks": len(chunks), "ns": len(chunks) * chunk_ns,
            "wall_s": float(sum(float(c["wall_s"]) for c in chunks))}


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
        # after a resampling the weights' ESS counts copies: the distinct ancestors bound it
        ann = result["annealed"]
        checks["ESS/N >= 20 % annealed (and >= 20 % distinct ancestors)"] = bool(
            min(ann["ess_fraction"], ann["n_distinct_ancestors"] / ann["n"]) >= 0.2)
    return checks


# ----------------------------------------------------------------------------------------- one run
def run(molecule: str, solvent: str, args) -> dict:
    system = build_system(molecule, solvent)
    tag = f"{molecule}_{solvent}"
    result = {"molecule": molecule, "solvent": solvent, "held_out": molecule in HELD_OUT,
              "recipe": args.recipe or "library default", "n_atoms": system.n_atoms}
    n_dof = 3 * system.n_atoms - 6 - system.system.getNumConstraints()  # the flow's dimensions
    result["n_dof"] = n_dof
    data, origins, data_wall = training_data(system, args.data_ns_per_dof * n_dof, args.starts, args.seed, tag)
    ref = {kind: reference(system, tag, kind, args.reference_ns, args.chunk_ns, args.bias_kt)
           for kind in ("plain", "biased")}
    reference_ = ref["biased"]
    result["data"] = {"frames": data.n_frames, "ns": args.data_ns_per_dof * n_dof, "starts": max(1, args.starts),
                      "wall_s": data_wall}
    result["reference"] = {"plain_md_ns": ref["plain"]["ns"], "biased_md_ns": ref["biased"]["ns"],
                           "chunk_ns": args.chunk_ns, "bias_kt": args.bias_kt,
                           "wall_s": ref["plain"]["wall_s"] + ref["biased"]["wall_s"],
                           "plain_populations": [r["populations"] for r in ref["plain"]["residues"]],
                           "plain_errors": [r["errors"] for r in ref["plain"]["residues"]],
                           "biased_populations": [r["populations"] for r in reference_["residues"]],
                           "biased_errors": [r["errors"] for r in reference_["residues"]],
                           "split_half_kl": [r["split_half_kl"] for r in reference_["residues"]],
                           "plain_vs_biased_kl": [kl(np.asarray(b["histogram"]), np.asarray(p["histogram"]))
                                                  for b, p in zip(reference_["residues"], ref["plain"]["residues"])]}
    gen = openmm_bg.BoltzmannGenerator.build(system, data, seed=args.seed)
    kwargs = {} if args.recipe is None else {"recipe": args.recipe}
    if origins is not None:
        kwargs["origins"] = origins
    trainer = Trainer(gen, data, seed=args.seed, progress=False, **kwargs)
    if args.steps_scale != 1.0:  # the same factor for every molecule (not a per-molecule flag)
        stages = [dataclasses.replace(s, steps=max(1, int(s.steps * args.steps_scale))) for s in trainer.stages]
        trainer = Trainer(gen, data, stages, seed=args.seed, progress=False, **kwargs)
    start = time.perf_counter()
    history = trainer.fit()
    result["training"] = {"wall_s": time.perf_counter() - start, "steps": len(history),
                          "stage_steps": trainer.stage_steps, "energy_evaluations": trainer.energy_evaluations,
                          "recipe": trainer.recipe}
    if args.save_model:
        gen.save(CACHE / f"generalisation_{tag}{args.tag}.bg", extra={"benchmark": "generalisation", "tag": args.tag})
    start = time.perf_counter()
    plain = gen.sample(args.samples, seed=args.seed)
    result["plain"] = evaluate(system, plain, reference_, "plain")
    result["plain"]["wall_s"] = time.perf_counter() - start
    result["plain"]["energy_evaluations"] = args.samples
    if args.particles:
        start = time.perf_counter()
        annealed = gen.sample(args.particles, seed=args.seed, anneal=True)
        result["annealed"] = evaluate(system, annealed, reference_, "annealed")
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
    p.add_argument("--starts", type=int, default=1, help="training MD from this many torsion_starts structures")
    p.add_argument("--reference-ns", type=float, default=100.0, help="MD of each reference, plain and biased (ns)")
    p.add_argument("--chunk-ns", type=float, default=10.0, help="length of each independent reference run (ns)")
    p.add_argument("--reference-only", action="store_true",
                   help="only make the missing reference chunks (run several side by side), then stop")
    p.add_argument("--save-model", action="store_true", help="write the trained generator to benchmarks/cache")
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
        args.chunk_ns = 0.1
        global REFERENCE_DIR
        REFERENCE_DIR = CACHE  # smoke-check chunks stay out of the committed references
        args.steps_scale = min(args.steps_scale, 0.02)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for molecule in args.molecules:
        for solvent in args.solvents:
            if args.reference_only:
                system, tag = build_system(molecule, solvent), f"{molecule}_{solvent}"
                for kind in ("plain", "biased"):
                    done = reference(system, tag, kind, args.reference_ns, args.chunk_ns, args.bias_kt, wait=False)
                    print(f"{tag} {kind} reference: " + ("complete" if done else "chunks still being made elsewhere"))
                continue
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
