"""Protein benchmark: trpzip2 at 300 K (OBC2, H-bond constraints) -- MD speed, a generator, a side-chain move.

Measures, against a long MD reference run (cached in ``benchmarks/cache/``; its length is printed
and stored):

1. MD speed on Reference and CPU (1 thread): ms per step and ns/day of ``LangevinMiddleIntegrator``
   at 2 fs, timing MD steps (not ``getState`` calls);
2. a generator trained with the tutorial's recipe (``tutorials/04_protein.py:protein_stages``,
   ~18 CPU-minutes at scale 1, see ``protein_training_speed.py``) on the first 80 % of the reference
   frames: ESS/N, Pareto k, held-out NLL (per degree of freedom, on the last 20 %), the raw-sample
   energy distribution vs MD (plot
   ``results/protein_energies.png``; target: median within one MD standard deviation), the
   fraction of valid samples (`openmm_bg.analysis.validity.valid_samples`; target >= 99 %), backbone
   RMSD to the native structure, and per residue the phi/psi region populations (beta: phi < 0 and
   psi > 50 deg, alpha: phi < 0 and psi <= 50 deg, left: phi > 0) and chi1 rotamer populations of
   MD, raw and reweighted samples;
3. the side-chain move (`openmm_bg.mcmc.TorsionMove`, fitted on the training frames) mixed with
   Langevin dynamics vs plain MD for the same wall time: committed core-to-core chi1 transitions per
   residue, per wall second and per energy evaluation (MD: one per step; move: one per proposal and
   one per ``apply`` for the current state), acceptance per residue. Residues whose chi1 changes
   slower than 1/ns in the reference MD are named (with zero transitions the rate is bounded by the
   95 % Poisson limit 3 / length); target: >= 10x more transitions per wall second for them with
   the move, and >= 20 transitions in the move run.

    python benchmarks/protein.py --reference-ns 20 --train-scale 1 --move-seconds 600
    python benchmarks/protein.py --smoke          # minutes: checks that everything runs
    python benchmarks/protein.py --md md.h5 --model model.bg --parts generator   # metrics of a trained model
    python benchmarks/protein.py --md run0.h5 run1.h5 --parts generator,move   # two independent MD runs

With ``--md`` the reference is those trajectories (independent runs; H-bond constraints, 300 K; not
cached, lengths read from their time axes): the first 80 % of each run trains, the last 20 % of each
is held out, and chi1 transitions are counted within each run. With ``--model`` the generator is
that model file (trained on the same training frames for the held-out NLL to mean anything) instead
of one trained here.

Results: printed and written to ``benchmarks/results/protein.json`` (updated after each part).
Not a CI test.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mdtraj  # noqa: E402
import numpy as np  # noqa: E402
import openmm  # noqa: E402
import openmm.unit as unit  # noqa: E402
import torch  # noqa: E402
from _common import CACHE, RESULTS  # noqa: E402

import openmm_bg  # noqa: E402
from openmm_bg.analysis.protein import backbone_rmsd, core_transitions, rotamer_populations  # noqa: E402
from openmm_bg.analysis.validity import valid_samples  # noqa: E402
from openmm_bg.energy import energy_for  # noqa: E402
from openmm_bg.mcmc import TorsionMove, side_chain_rotors, torsions_of  # noqa: E402
from openmm_bg.md import simulate  # noqa: E402
from openmm_bg.systems import load  # noqa: E402
from openmm_bg.training import Stage, Trainer  # noqa: E402

TUTORIAL = Path(__file__).resolve().parents[1] / "tutorials" / "04_protein.py"
TIMESTEP_PS = 0.002


def _recipe():
    """``protein_stages`` of ``tutorials/04_protein.py`` (its own ``_common`` module shadows ours while it loads)."""
    import sys

    spec = importlib.util.spec_from_file_location("tutorial_04_protein", TUTORIAL)
    mod = importlib.util.module_from_spec(spec)
    ours = sys.modules.pop("_common", None)
    sys.path.insert(0, str(TUTORIAL.parent))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(TUTORIAL.parent))
        sys.modules.pop("_common", None)
        if ours is not None:
            sys.modules["_common"] = ours
    return mod.protein_stages


def md_speed(system, platform: str, n_steps: int) -> dict:
    integ = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, TIMESTEP_PS * unit.picosecond)
    props = {"Threads": "1"} if platform == "CPU" else {}
    ctx = openmm.Context(system.system, integ, openmm.Platform.getPlatformByName(platform), props)
    ctx.setPositions(system.positions)
    integ.step(20)
    t0 = time.perf_counter()
    integ.step(n_steps)
    ctx.getState(getPositions=True)
    ms = (time.perf_counter() - t0) / n_steps * 1e3
    return {"ms_per_step": ms, "ns_per_day": TIMESTEP_PS * 86400e3 / ms / 1e3}


def phipsi_regions(traj: mdtraj.Trajectory, weights=None) -> np.ndarray:
    """``[n_residues_with_both, 3]`` populations of beta, alpha, left (phi > 0) regions."""
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    phi, psi = phi[:, 1:], psi[:, :-1]  # residues with both
    w = np.full(len(phi), 1 / len(phi)) if weights is None else np.asarray(weights)
    beta = (phi < 0) & (psi > np.radians(50))
    alpha = (phi < 0) & (psi <= np.radians(50))
    left = phi >= 0
    return np.stack([(w[:, None] * r).sum(0) for r in (beta, alpha, left)], -1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference-ns", type=float, default=20.0, help="length of the MD reference (cached)")
    p.add_argument("--train-scale", type=float, default=1.0, help="multiplies the recipe's training steps")
    p.add_argument("--samples", type=int, default=10000)
    p.add_argument("--move-seconds", type=float, default=600.0, help="wall time of each mixing run")
    p.add_argument("--uniform-weight", type=float, default=0.2,
                   help="uniform part of the side-chain proposal (reaches rotamers the MD data lack)")
    p.add_argument("--smoke", action="store_true", help="minutes: tiny runs that check the plumbing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=RESULTS / "protein.json")
    p.add_argument("--md", type=Path, nargs="+",
                   help="reference MD trajectories (independent runs) to use instead of making (or reusing) one")
    p.add_argument("--model", type=Path, help="trained generator to measure instead of training one")
    p.add_argument("--patience", type=int, help="early stopping of the recipe's ML stage (Stage.patience; "
                   "the Trainer holds out a share of the training frames)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on 2 shared cores)")
    p.add_argument("--save-model", type=Path, help="write the generator trained here to this file")
    p.add_argument("--parts", default="speed,generator,move",
                   help="comma-separated parts to run: speed, generator, move (default all)")
    args = p.parse_args(argv)
    parts = {x.strip() for x in args.parts.split(",")}
    if not parts <= {"speed", "generator", "move"}:
        p.error(f"--parts takes speed, generator, move; got {args.parts!r}")
    if "move" in parts and "generator" not in parts:
        p.error("--parts move needs the generator part too (it names the chi1 residues and fits on its frames)")
    torch.set_num_threads(args.threads)
    if args.smoke:
        args.reference_ns, args.samples, args.move_seconds = 0.04, 128, 15.0
        args.output = args.output.with_name("protein_smoke.json")
    res: dict = {"settings": {k: str(v) if isinstance(v, Path) else [str(f) for f in v] if isinstance(v, list) else v
                              for k, v in vars(args).items()}}

    def save():
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(res, indent=1, default=float))

    system = load("trpzip2", constraints="hbonds")
    # 1. MD speed
    n_speed = 100 if args.smoke else 2000
    if "speed" in parts:
        res["md_speed"] = {pl: md_speed(system, pl, n_speed) for pl in ("Reference", "CPU")}
        print("MD speed:", res["md_speed"])
        save()

    # 2. reference MD (cached): one frame per ps
    stride = 50 if args.smoke else 500
    n_frames = int(round(args.reference_ns / (stride * TIMESTEP_PS / 1000)))
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"trpzip2_hbonds_300K_{n_frames}x{stride}_seed{args.seed}.dcd"
    t0 = time.perf_counter()
    top = mdtraj.Topology.from_openmm(system.topology)
    if args.md:
        runs_md = [mdtraj.load(str(f)) for f in args.md]
        path = [str(f) for f in args.md]
        length_ns = sum(float(t.time[-1] - t.time[0] + (t.time[1] - t.time[0])) / 1000 for t in runs_md)
    else:
        runs_md = [mdtraj.load(str(path), top=top) if path.is_file() else
                   simulate(system, n_frames, stride, seed=args.seed, output=path, equilibration_steps=5000,
                            resume=True, progress=not args.smoke)]
        length_ns = n_frames * stride * TIMESTEP_PS / 1000
    # each run: its first 80 % trains, its last 20 % (a contiguous block) is held out
    cut = [int(0.8 * t.n_frames) for t in runs_md]
    ref = mdtraj.join(runs_md, check_topology=False) if len(runs_md) > 1 else runs_md[0]
    res["reference_md"] = {"ns": length_ns, "frames": ref.n_frames, "runs": len(runs_md), "file": str(path),
                           "seconds": time.perf_counter() - t0}
    print("reference MD:", res["reference_md"])
    xyz = ref.xyz.astype(np.float64)
    train = np.concatenate([t.xyz[:c] for t, c in zip(runs_md, cut, strict=True)]).astype(np.float64)
    held = np.concatenate([t.xyz[c:] for t, c in zip(runs_md, cut, strict=True)]).astype(np.float64)
    save()

    # 3. generator
    if "generator" not in parts:
        print(f"written {args.output}")
        return
    if args.model is not None:
        stages = []
        gen = openmm_bg.BoltzmannGenerator.load(args.model, system)
    elif args.smoke:
        stages = [Stage("ml", steps=10, lr=5e-4, batch_size=32),
                  Stage("kl", steps=3, ml=0.5, kl=1.0, lr=1e-4, batch_size=32, kl_batch_size=16)]
        gen = openmm_bg.BoltzmannGenerator.build(system, train, n_blocks=2, hidden=(32, 32), seed=args.seed)
    else:
        stages = _recipe()(args.train_scale)
        if args.patience is not None:  # early stopping of the ML stage on held-out frames (Stage.patience)
            stages[0] = dataclasses.replace(stages[0], patience=args.patience)
        gen = openmm_bg.BoltzmannGenerator.build(system, train, n_blocks=6, hidden=(256, 256), seed=args.seed)
    t0 = time.perf_counter()
    train_evals = None
    if stages:
        trainer = Trainer(gen, train, stages, seed=args.seed, progress=not args.smoke)
        trainer.fit()
        train_evals = trainer.energy_evaluations
        if args.save_model is not None:
            gen.save(args.save_model)
    train_s = time.perf_counter() - t0 if stages else None
    with torch.no_grad():
        nll = -gen.log_prob(torch.as_tensor(held)).double().numpy()
        nll_train = -gen.log_prob(torch.as_tensor(train[:: max(1, len(train) // len(held))])).double().numpy()
    samples = gen.sample(args.samples, seed=args.seed + 1, progress=not args.smoke)
    diag = samples.diagnostics(warn=False)
    u_md = np.asarray(energy_for(system)(xyz), dtype=np.float64)
    u_bg = np.asarray(samples.energies, dtype=np.float64)
    report = valid_samples(system, samples.positions, energies=u_bg, reference=xyz)
    r_md = backbone_rmsd(xyz, system.positions, system.topology)
    r_bg = backbone_rmsd(samples.positions, system.positions, system.topology)
    rotors = [r for r in side_chain_rotors(system.topology) if r.name.endswith("chi1")]
    names = [r.name.split()[0] for r in rotors]
    chi_md, chi_bg = torsions_of(xyz, rotors), torsions_of(samples.positions, rotors)
    w = samples.weights if samples.n_weighted else np.zeros(len(samples))
    traj_bg = mdtraj.Trajectory(samples.positions, top)
    ok_u = u_bg[np.isfinite(u_bg)]
    res["generator"] = {
        "training_seconds": train_s, "training_steps": sum(s.steps for s in stages) or None,
        "training_energy_evaluations": train_evals, "n_training_frames": len(train),
        "model": None if args.model is None else str(args.model), "n_dof": gen.transform.n_dof,
        "transform": type(gen.transform).__name__, "n_samples": len(samples),
        "ess_fraction": samples.ess_fraction, "pareto_k": float(getattr(diag, "pareto_k", np.nan)),
        "heldout_nll_per_dof": float(np.nanmean(nll)) / gen.transform.n_dof, "heldout_frames": len(held),
        "heldout_nll_per_dof_median": float(np.nanmedian(nll)) / gen.transform.n_dof,
        "training_nll_per_dof_median": float(np.nanmedian(nll_train)) / gen.transform.n_dof,
        "energy_md_median": float(np.median(u_md)), "energy_md_std": float(np.std(u_md)),
        "energy_bg_median": float(np.median(ok_u)) if len(ok_u) else np.nan,
        "valid": report.fraction, "rmsd_md_median_nm": float(np.median(r_md)),
        "rmsd_bg_median_nm": float(np.nanmedian(r_bg)),
        "chi1_residues": names,
        "chi1_md": rotamer_populations(chi_md).tolist(), "chi1_bg_raw": rotamer_populations(chi_bg).tolist(),
        "chi1_bg_reweighted": rotamer_populations(chi_bg, w).tolist(),
        "phipsi_md": phipsi_regions(ref).tolist(), "phipsi_bg_raw": phipsi_regions(traj_bg).tolist(),
        "phipsi_bg_reweighted": phipsi_regions(traj_bg, w).tolist(),
    }
    g = res["generator"]
    g["median_energy_within_1sd"] = bool(abs(g["energy_bg_median"] - g["energy_md_median"]) <= g["energy_md_std"])
    print({k: v for k, v in g.items() if not k.startswith(("chi1_", "phipsi_"))})
    fig, ax = plt.subplots(figsize=(6, 4))
    bins = np.linspace(np.percentile(u_md, 0.5) - 20, np.percentile(u_md, 99.5) + 200, 70)
    ax.hist(u_md, bins=bins, density=True, alpha=0.6, label=f"MD ({res['reference_md']['ns']:.1f} ns)")
    ax.hist(np.clip(ok_u, bins[0], bins[-1]), bins=bins, density=True, alpha=0.6, label="BG raw samples")
    ax.set_xlabel("u (kT)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.output.with_name(args.output.stem + "_energies.png"), dpi=110)
    plt.close(fig)
    save()

    # 4. side-chain move in MD vs plain MD, same wall time each
    if "move" not in parts:
        print(f"written {args.output}")
        return
    from openmmtools import cache, mcmc, states

    # transitions counted within each run (never across the junction of two runs)
    md_rate = sum(core_transitions(torsions_of(t.xyz.astype(np.float64), rotors)) for t in runs_md) \
        / res["reference_md"]["ns"]
    slow = [n for n, r in zip(names, md_rate, strict=True) if r < 1.0]
    thermo = states.ThermodynamicState(system.system, temperature=300 * unit.kelvin)
    platform = openmm.Platform.getPlatformByName("CPU")
    ccache = cache.ContextCache(platform=platform, platform_properties={"Threads": "1"})
    md_steps = 50  # 0.1 ps between chi1 readings
    runs = {}
    for label, with_move in (("plain_md", False), ("md_plus_move", True)):
        move = (TorsionMove.fit(system, train, n_proposals=5, uniform_weight=args.uniform_weight, seed=args.seed)
                if with_move else None)
        sstate = states.SamplerState(xyz[-1] * unit.nanometer)
        langevin = mcmc.LangevinDynamicsMove(timestep=TIMESTEP_PS * unit.picosecond, n_steps=md_steps,
                                             collision_rate=1 / unit.picosecond)
        chis, evals = [], 0
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < args.move_seconds:
            langevin.apply(thermo, sstate, context_cache=ccache)
            evals += md_steps
            if move is not None:
                n0 = move.n_proposed
                move.apply(thermo, sstate, context_cache=ccache)
                evals += 1 + move.n_proposed - n0
            chis.append(torsions_of(np.asarray(sstate.positions.value_in_unit(unit.nanometer)), rotors))
        wall = time.perf_counter() - t0
        trans = core_transitions(np.array(chis))
        runs[label] = {"wall_s": wall, "energy_evaluations": evals, "md_ns": len(chis) * md_steps * TIMESTEP_PS / 1000,
                       "transitions": dict(zip(names, trans.tolist(), strict=True)),
                       "per_wall_s": dict(zip(names, (trans / wall).tolist(), strict=True)),
                       "per_energy_eval": dict(zip(names, (trans / evals).tolist(), strict=True))}
        if move is not None:
            runs[label]["acceptance"] = move.acceptance_rate
            runs[label]["acceptance_per_residue"] = {k: (a / p if p else np.nan)
                                                     for k, (a, p) in move.group_statistics.items()}
        print(label, {k: v for k, v in runs[label].items() if k not in ("per_energy_eval",)})
    def ratio(a, b):
        return a / b if b > 0 else (np.inf if a > 0 else np.nan)

    speedup = {n: ratio(runs["md_plus_move"]["per_wall_s"][n], runs["plain_md"]["per_wall_s"][n]) for n in names}
    res["side_chain_move"] = {**runs, "reference_md_rate_per_ns": dict(zip(names, md_rate.tolist(), strict=True)),
                              "slow_residues": slow, "speedup_per_wall_s": speedup,
                              "poisson_bound_per_ns_if_zero": 3.0 / res["reference_md"]["ns"]}
    print("slow residues (< 1 transition/ns in the reference):", slow, "speed-up per wall s:", speedup)
    save()
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
