"""Benchmark: Delta A(C7ax - C7eq) of alanine dipeptide (AMBER ff96, vacuum, 300 K), error vs wall clock.

Three routes, timed on this machine in one run:

(a) **plain MD** (Langevin, 1 fs, 1/ps) at 300 K from C7eq. It almost never reaches C7ax in an
    affordable run, so its time to +-0.2 kT is *extrapolated*: for a two-state process with
    relaxation time tau = 1/(k_ab + k_ba), the C7ax fraction p of a run of length T has variance
    2 tau p (1 - p) / T, so Delta A = -log(p / (1 - p)) has variance 2 tau / (T p (1 - p)); the run
    needs T = 50 tau / (p (1 - p)), i.e. about **50 C7eq -> C7ax transitions** (k_ab = p / tau), for
    a 1-sigma error of 0.2 kT: T = 50 / (k_ab (1 - p)). The rate k_ab at 300 K is taken from
    transitions counted at 300 K if there are any, else from an Arrhenius fit (ln k vs 1/T) of
    core-to-core transition rates at higher temperatures (``--hot``), with p from the reference.
    With no transition at 300 K the Poisson 95 % upper bound k_ab < 3 / T_run gives a rigorous
    *lower* bound on the MD time (and so on the speed-up), reported too. Transitions are counted
    between basin cores (C7ax: 0.5 < phi < 1.8; C7eq: phi < -0.5 or phi > 2.6 rad), not crossings.
(b) **BG reweighting**, training included: training data (a short 800 K run to find a C7ax start,
    then 300 K MD in both basins), building and training a generator in segments, and after each
    segment drawing samples and estimating Delta A with `openmm_bg.analysis.free_energy.state_free_energy`
    (bootstrap error, ESS and Pareto k per state); then more samples until the budget is spent.
    The route reaches +-0.2 kT at the first checkpoint whose weights are reliable (Pareto k < 0.7
    in both states), whose bootstrap error is <= 0.2 kT and whose estimate lies within 0.2 kT (plus
    the reference's error) of the reference. If the last checkpoint is reliable but its error is
    larger, the sampling time is extrapolated as 1/error^2.
(b') **BG as a normalised reference + MD inside each basin (MBAR)**: the same generator and the same
    300 K training MD (which stays in its basin), analysed with
    `openmm_bg.analysis.free_energy.state_free_energy_mbar` (generator, C7eq-restricted and C7ax-restricted
    states); needs only overlap between the generator and each basin, not light-tailed weights.
(c) **MD + BG move** (openmm_bg.mcmc.BoltzmannGeneratorMove in an openmmtools MCMCSampler with
    Langevin dynamics), reusing (b)'s generator, so its time includes (b)'s data and training time;
    Delta A from the C7ax fraction with a batch-means error. Reported as "not available" where the
    move cannot be imported.

The reference is read from ``benchmarks/reference/alanine_reference.json`` (``{"vacuum":
{"delta_a_kT": ..., "error_kT": ...}}``, written by ``benchmarks/reference/alanine_reference.py``) or
given with ``--reference``. Results: printed, written to ``benchmarks/results/free_energy.json`` and
plotted to ``benchmarks/results/free_energy_*.png``. Target: the BG route >= 10x faster than plain MD.

    python benchmarks/free_energy.py --train-minutes 6 --md-seconds 90 --chain-seconds 90
    python benchmarks/free_energy.py --reference 3.1 --reference-error 0.1 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import mdtraj
import numpy as np
from _common import (
    REFERENCE,
    RESULTS,
    CoreTransitions,
    alanine_reference,
    arrhenius,
    fastest_platform,
    hot_c7ax_start,
    langevin_phi,
)

from openmm_bg.analysis.free_energy import (
    InsufficientSamplesError,
    pymbar_module,
    state_free_energy,
    state_free_energy_mbar,
)
from openmm_bg.systems.alanine import in_c7ax

TARGET = 0.2  # kT


# ----------------------------------------------------------------------------------------- helpers
class Clock:
    """Wall clock of one route."""

    def __init__(self, offset: float = 0.0):
        self.start = time.perf_counter() - offset

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def read_reference(args) -> tuple[float | None, float]:
    if args.reference is not None:
        return float(args.reference), float(args.reference_error)
    entry = alanine_reference("vacuum", args.reference_file)
    if entry is not None:
        return float(entry["delta_a_kT"]), float(entry.get("error_kT", 0.0))
    print(f"no reference found at {args.reference_file} and no --reference given: times are to an error "
          f"bar of {TARGET} kT only")
    return None, 0.0


def delta_a_from_fraction(in_ax: np.ndarray, n_batches: int = 20) -> tuple[float, float]:
    """Delta A = -log(p / (1 - p)) of an indicator time series, batch-means error (kT)."""
    x = np.asarray(in_ax, dtype=float)
    p = x.mean() if x.size else 0.0
    if not 0 < p < 1:
        return (math.inf if p == 0 else -math.inf), math.inf
    nb = min(n_batches, max(2, x.size // 10))
    batches = x[: x.size // nb * nb].reshape(nb, -1).mean(1)
    se = batches.std(ddof=1) / math.sqrt(nb)
    return -math.log(p / (1 - p)), float(se / (p * (1 - p)))


def error_only_time(points: list[dict]) -> tuple[float, str]:
    """Wall time to a reliable error bar <= 0.2 kT whatever the value; extrapolated as 1/error^2 of the
    whole route's time from the last reliable point when not reached (conservative)."""
    for p in points:
        if p.get("reliable") and math.isfinite(p["delta_a_kT"]) and p["error_kT"] <= TARGET:
            return p["t_s"], "measured"
    good = [p for p in points if p.get("reliable") and math.isfinite(p["error_kT"])]
    if not good:
        return math.nan, "no reliable estimate"
    last = good[-1]
    return last["t_s"] * (last["error_kT"] / TARGET) ** 2, "extrapolated (whole route time x (error/0.2)^2)"


def reached(delta: float, err: float, reliable: bool, ref: float | None, ref_err: float) -> bool:
    if not (reliable and math.isfinite(delta) and math.isfinite(err) and err <= TARGET):
        return False
    return ref is None or abs(delta - ref) <= TARGET + ref_err


# ----------------------------------------------------------------------------------------- (a) plain MD
def run_md(system, wall_seconds: float, temperature: float, seed: int, report_steps: int = 100) -> dict:
    """Langevin MD for ``wall_seconds``; phi every ``report_steps`` fs; C7ax fraction and transitions."""
    md = langevin_phi(system, wall_seconds, temperature, seed, report_steps=report_steps)
    counter = CoreTransitions()
    counter.update(md["phi"], report_steps * 1e-6)
    wall, steps = md["wall_s"], md["steps"]
    in_ax = in_c7ax(md["phi"])  # the system's C7ax state
    delta, err = delta_a_from_fraction(in_ax)
    ns = steps * 1e-6
    return {"temperature_K": temperature, "platform": md["platform"], "wall_s": wall, "ns": ns,
            "ns_per_wall_s": ns / wall,
            "c7ax_fraction": float(in_ax.mean()), "delta_a_kT": delta, "error_kT": err,
            "eq_to_ax": counter.eq_to_ax, "ax_to_eq": counter.ax_to_eq, "time_eq_ns": counter.time_eq,
            "time_ax_ns": counter.time_ax,
            "k_eq_to_ax_per_ns": counter.eq_to_ax / counter.time_eq if counter.time_eq > 0 else math.nan}


def md_time_to_target(md300: dict, hot: list[dict], p_ax: float | None) -> dict:
    """Extrapolated wall time for plain MD to a 1-sigma error of 0.2 kT (see module docstring)."""
    out: dict = {"method": None, "wall_s": math.nan, "wall_s_lower_bound": math.nan}
    speed = md300["ns_per_wall_s"]
    if p_ax is None:
        p_ax = md300["c7ax_fraction"] if 0 < md300["c7ax_fraction"] < 1 else None
    if p_ax is None:
        out["method"] = "no reference population: cannot extrapolate"
        return out
    # var(Delta A) = 2 tau / (T p q) = 2 / N_ab with N_ab = p q T / tau transitions C7eq -> C7ax
    need_transitions = 2.0 / TARGET**2  # = 50
    out["transitions_needed"] = need_transitions
    # Poisson bound from the 300 K run: k_ab < 3 / T_eq (95 %)
    if md300["time_eq_ns"] > 0:
        k_upper = max(md300["eq_to_ax"], 3.0) / md300["time_eq_ns"]
        out["k_ab_upper_per_ns"] = k_upper
        out["wall_s_lower_bound"] = need_transitions / (k_upper * (1 - p_ax)) / speed
    if md300["eq_to_ax"] >= 3:
        k = md300["k_eq_to_ax_per_ns"]
        out.update(method="transition rate measured at 300 K", k_ab_per_ns=k)
    else:
        fit = arrhenius([(r["temperature_K"], r["k_eq_to_ax_per_ns"]) for r in hot
                         if r["eq_to_ax"] > 0 and r["time_eq_ns"] > 0])
        if fit is not None:
            k, slope = fit
            out.update(method=f"Arrhenius fit of k(C7eq->C7ax) at {[r['temperature_K'] for r in hot]} K",
                       k_ab_per_ns=k, arrhenius_barrier_kT_at_300K=float(-slope / 300.0))
        else:
            out["method"] = "Poisson bound only (fewer than two hot runs with transitions)"
            return out
    out["md_ns_needed"] = need_transitions / (k * (1 - p_ax))
    out["wall_s"] = out["md_ns_needed"] / speed
    if math.isfinite(out["wall_s_lower_bound"]) and out["wall_s"] < out["wall_s_lower_bound"]:
        # the extrapolated rate exceeds what the 300 K run allows: keep the bound
        out["note"] = "extrapolated time below the 300 K Poisson bound; the bound is used"
        out["wall_s"] = out["wall_s_lower_bound"]
    return out


# ----------------------------------------------------------------------------------------- (b) BG
def training_data(system, seed: int, ps_eq: float, ps_ax: float, clock: Clock, log):
    import openmm_bg

    start_ax = hot_c7ax_start(system, seed, n_frames=1000, stride=100)
    eq = openmm_bg.simulate(system, n_frames=int(ps_eq * 4), stride=250, seed=seed + 1,
                            equilibration_steps=5000, progress=False)
    ax = openmm_bg.simulate(system, n_frames=int(ps_ax * 4), stride=250, seed=seed + 2,
                            positions=start_ax, equilibration_steps=5000,
                            progress=False)
    log(f"training data: {ps_eq:g} ps in C7eq + {ps_ax:g} ps in C7ax at 300 K ({clock():.0f} s)")
    return eq, ax


def evaluate(samples_list, clock: Clock, ref, ref_err, label: str, log) -> dict:
    try:
        r = state_free_energy(samples_list, "C7eq", "C7ax", min_ess=1.0, n_bootstrap=200, warn=False)
        point = {"t_s": clock(), "delta_a_kT": r.delta_a_kT, "error_kT": r.error_kT, "ess_C7eq": r.ess_a,
                 "ess_C7ax": r.ess_b, "pareto_k_C7eq": r.diagnostics_a.pareto_k,
                 "pareto_k_C7ax": r.diagnostics_b.pareto_k, "pareto_k_all": r.diagnostics.pareto_k,
                 "ess_all": r.diagnostics.ess, "reliable": r.reliable,
                 "n_samples": int(sum(len(s) for s in samples_list)), "label": label}
        text = str(r)
    except (InsufficientSamplesError, ValueError) as err:
        point = {"t_s": clock(), "delta_a_kT": math.nan, "error_kT": math.inf, "reliable": False,
                 "n_samples": int(sum(len(s) for s in samples_list)), "label": label, "failure": str(err)}
        text = str(err)
    point["reached"] = reached(point["delta_a_kT"], point["error_kT"], point["reliable"], ref, ref_err)
    log(f"  [{point['t_s']:6.0f} s] {label}: {text}")
    return point


def evaluate_mbar(samples, gen, md_eq, md_ax, clock: Clock, ref, ref_err, label: str, log) -> dict:
    """Delta A with the generator as normalised reference and the basin MD (the training data) in MBAR."""
    try:
        r = state_free_energy_mbar(samples, gen, "C7eq", "C7ax", md_a=md_eq, md_b=md_ax, min_ess=1.0,
                                   warn=False)
        point = {"t_s": clock(), "delta_a_kT": r.delta_a_kT, "error_kT": r.error_kT, "ess_C7eq": r.ess_a,
                 "ess_C7ax": r.ess_b, "pareto_k_C7eq": r.diagnostics_a.pareto_k,
                 "pareto_k_C7ax": r.diagnostics_b.pareto_k, "reliable": r.reliable, "label": label}
        text = str(r)
    except (InsufficientSamplesError, ValueError) as err:
        point = {"t_s": clock(), "delta_a_kT": math.nan, "error_kT": math.inf, "reliable": False,
                 "label": label, "failure": str(err)}
        text = str(err)
    point["reached"] = reached(point["delta_a_kT"], point["error_kT"], point["reliable"], ref, ref_err)
    log(f"  [{point['t_s']:6.0f} s] {label}: {text}")
    return point


def run_bg(system, args, ref, ref_err, log) -> tuple[dict, object, float]:
    import openmm_bg
    from openmm_bg.training import Stage, Trainer

    clock = Clock()
    md_eq, md_ax = training_data(system, args.seed, args.ps_eq, args.ps_ax, clock, log)
    data = mdtraj.join([md_eq, md_ax])
    data_s = clock()
    gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=args.blocks, hidden=tuple(args.hidden),
                                             seed=args.seed)
    points, mbar_points = [], []
    seg_s = args.train_minutes * 60.0 / args.checkpoints
    step_s = None
    for c in range(args.checkpoints):
        if step_s is None:  # time a few steps (after one warm-up step) to size the segments
            probe = [Stage("probe", 1, kl=0.3, batch_size=128, kl_batch_size=128)]
            Trainer(gen, data, probe, seed=98, progress=False).fit()
            t = time.perf_counter()
            Trainer(gen, data, [Stage("probe", 5, kl=0.3, batch_size=128, kl_batch_size=128)], seed=99,
                    progress=False).fit()
            step_s = (time.perf_counter() - t) / 5
        n = max(10, int(seg_s / step_s))
        # ML first, then ML + KL with a KL weight of order one (found to lift the ESS of alanine from
        # ~0.01 % to ~1 % within minutes here; a small KL weight barely helps)
        if c == 0:
            stages = [Stage("ml", max(1, n // 2), batch_size=256, lr=1e-3),
                      Stage("ml+kl", n - n // 2, kl=0.3, batch_size=128, kl_batch_size=128, lr=5e-4)]
        else:
            stages = [Stage("ml+kl", n, kl=1.0, batch_size=128, kl_batch_size=128, lr=3e-4)]
        Trainer(gen, data, stages, seed=args.seed + c, progress=False).fit()
        samples = gen.sample(args.eval_samples, seed=1000 + c)
        points.append(evaluate([samples], clock, ref, ref_err, f"after training segment {c + 1}", log))
        mbar_points.append(evaluate_mbar(samples, gen, md_eq, md_ax, clock, ref, ref_err,
                                         f"MBAR after training segment {c + 1}", log))
    train_end = clock()
    # more samples from the final generator until the sampling budget is spent
    pool = [samples]
    t_sampling0 = clock()
    while clock() - t_sampling0 < args.sample_seconds:
        pool.append(gen.sample(args.eval_samples, seed=2000 + len(pool)))
        label = f"{len(pool) * args.eval_samples} samples"
        points.append(evaluate([_concat(pool)], clock, ref, ref_err, label, log))
    mbar_points.append(evaluate_mbar(_concat(pool), gen, md_eq, md_ax, clock, ref, ref_err,
                                     f"MBAR with {len(pool) * args.eval_samples} samples", log))
    from openmm_bg.analysis.free_energy import free_energy_surface
    from openmm_bg.apps.plots import plot_surface

    surface_png = Path(args.output).with_name(Path(args.output).stem + "_ramachandran.png")
    plot_surface(free_energy_surface(_concat(pool), "phi", "psi", bins=40), surface_png,
                 title="BG reweighted phi/psi free energy, 300 K")
    last = points[-1]
    result = {"surface_png": str(surface_png), "points": points, "data_s": data_s,
              "training_end_s": train_end,
              "total_s": clock(),
              "time_to_target_s": next((p["t_s"] for p in points if p["reached"]), math.nan),
              "mbar_points": mbar_points,
              "mbar_time_to_target_s": next((p["t_s"] for p in mbar_points if p["reached"]), math.nan)}
    if not math.isfinite(result["time_to_target_s"]):
        if last["reliable"] and math.isfinite(last["error_kT"]) and (
                ref is None or abs(last["delta_a_kT"] - ref) <= TARGET + ref_err + 2 * last["error_kT"]):
            sampling = last["t_s"] - train_end + 1e-9
            extra = sampling * max((last["error_kT"] / TARGET) ** 2 - 1, 0.0)
            result["time_to_target_s"] = last["t_s"] + extra
            result["time_to_target_note"] = "extrapolated: sampling time scaled by (error / 0.2)^2"
        else:
            result["time_to_target_note"] = ("not reached: weights unreliable (Pareto k >= 0.7) or estimate "
                                             "off the reference; no extrapolation")
    return result, gen, clock()


def _concat(pool):
    from openmm_bg import Samples

    s0 = pool[0]
    return Samples(s0.system, np.concatenate([s.positions for s in pool]),
                   np.concatenate([s.energies for s in pool]), np.concatenate([s.log_prob for s in pool]),
                   temperature=s0.temperature, rejected=np.concatenate([s.rejected for s in pool]))


# ----------------------------------------------------------------------------------------- (c) MD + BG move
def run_chain(system, gen, offset_s: float, args, ref, ref_err, log) -> dict:
    try:
        from openmm_bg.mcmc import BoltzmannGeneratorMove
    except ImportError as err:
        return {"available": False, "note": f"not available: {err}"}
    import openmm
    import openmm.unit as unit
    from openmmtools import cache, mcmc, states

    clock = Clock(offset_s)
    name, props = fastest_platform(system)
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName(name), capacity=4,
                                       platform_properties=props or None)
    thermo = states.ThermodynamicState(system.system, temperature=system.temperature * unit.kelvin)
    move = BoltzmannGeneratorMove(gen, n_proposals=args.proposals, seed=args.seed)
    langevin = mcmc.LangevinDynamicsMove(timestep=1.0 * unit.femtosecond,
                                         collision_rate=1.0 / unit.picosecond, n_steps=args.chain_md_steps,
                                         reassign_velocities=False)
    sampler = mcmc.MCMCSampler(thermo, states.SamplerState(system.positions * unit.nanometer),
                               mcmc.SequenceMove([langevin, move]))
    phi_rc = system.reaction_coordinates["phi"]
    in_ax, points, next_report, counter = [], [], 10.0, CoreTransitions()
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < args.chain_seconds:
        sampler.run(1, context_cache=context_cache)
        x = sampler.sampler_state.positions.value_in_unit(unit.nanometer)
        phi = float(phi_rc(np.asarray(x)[None])[0])
        in_ax.append(bool(in_c7ax(phi)))
        counter.update(phi, 0.0)
        if time.perf_counter() - t0 >= next_report:
            next_report += 10.0
            delta, err = delta_a_from_fraction(np.asarray(in_ax))
            # batch means mean something only after several core-to-core transitions
            ok = counter.eq_to_ax + counter.ax_to_eq >= 10
            points.append({"t_s": clock(), "delta_a_kT": delta, "error_kT": err, "iterations": len(in_ax),
                           "transitions": counter.eq_to_ax + counter.ax_to_eq, "reliable": ok,
                           "reached": reached(delta, err, ok, ref, ref_err)})
    delta, err = delta_a_from_fraction(np.asarray(in_ax))
    stats = dict(move.statistics)
    log(f"  MD + BG move: {len(in_ax)} iterations, {counter.eq_to_ax + counter.ax_to_eq} core-to-core "
        f"transitions, acceptance {move.acceptance_rate:.4f}, C7ax fraction "
        f"{np.mean(in_ax):.3f}, Delta A {delta:.3f} +- {err:.3f} kT")
    return {"available": True, "points": points, "iterations": len(in_ax), "acceptance": move.acceptance_rate,
            "statistics": {k: (float(v) if isinstance(v, int | float | np.number) else str(v))
                           for k, v in stats.items()},
            "delta_a_kT": delta, "error_kT": err, "total_s": clock(),
            "time_to_target_s": next((p["t_s"] for p in points if p["reached"]), math.nan)}


# ----------------------------------------------------------------------------------------- main
def plot(results: dict, ref, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    bg = [p for p in results["bg"]["points"] if math.isfinite(p["delta_a_kT"])]
    if bg:
        t = [p["t_s"] for p in bg]
        y = [p["delta_a_kT"] for p in bg]
        e = [min(p["error_kT"], 5) for p in bg]
        ax.errorbar(t, y, yerr=e, marker="o", label="BG reweighting (incl. data + training)", capsize=3)
    bm = [p for p in results["bg"]["mbar_points"] if math.isfinite(p["delta_a_kT"])]
    if bm:
        ax.errorbar([p["t_s"] for p in bm], [p["delta_a_kT"] for p in bm],
                    yerr=[min(p["error_kT"], 5) for p in bm], marker="D", capsize=3,
                    label="BG reference + basin MD (MBAR)")
    chain = results.get("chain", {})
    cp = [p for p in chain.get("points", []) if math.isfinite(p["delta_a_kT"])]
    if cp:
        ax.errorbar([p["t_s"] for p in cp], [p["delta_a_kT"] for p in cp],
                    yerr=[min(p["error_kT"], 5) for p in cp], marker="s", label="MD + BG move", capsize=3)
    md = results["md"]["run_300K"]
    if math.isfinite(md["delta_a_kT"]):
        ax.errorbar([md["wall_s"]], [md["delta_a_kT"]], yerr=[min(md["error_kT"], 5)], marker="^",
                    label="plain MD", capsize=3)
    t_md = results["md"]["time_to_target"].get("wall_s", math.nan)
    if math.isfinite(t_md):
        ax.axvline(t_md, color="tab:red", ls=":", label="plain MD to 0.2 kT (extrapolated)")
    if ref is not None:
        ax.axhspan(ref - TARGET, ref + TARGET, color="gray", alpha=0.3, label="reference +- 0.2 kT")
    ax.set_xscale("log")
    ax.set_xlabel("wall clock / s")
    ax.set_ylabel(r"$\Delta A$(C7ax - C7eq) / kT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=float, default=None, help="reference Delta A (kT)")
    parser.add_argument("--reference-error", type=float, default=0.0)
    parser.add_argument("--reference-file", default=str(REFERENCE))
    parser.add_argument("--md-seconds", type=float, default=90.0, help="wall time of plain MD at 300 K")
    parser.add_argument("--hot", type=float, nargs="*", default=[600.0, 700.0, 800.0],
                        help="temperatures (K) for the Arrhenius extrapolation")
    parser.add_argument("--hot-seconds", type=float, default=25.0, help="wall time per hot run")
    parser.add_argument("--train-minutes", type=float, default=2.0)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--ps-eq", type=float, default=500.0, help="300 K training MD in C7eq (ps)")
    parser.add_argument("--ps-ax", type=float, default=250.0, help="300 K training MD in C7ax (ps)")
    parser.add_argument("--eval-samples", type=int, default=10000)
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="sampling after training")
    parser.add_argument("--chain-seconds", type=float, default=60.0)
    parser.add_argument("--chain-md-steps", type=int, default=200)
    parser.add_argument("--proposals", type=int, default=20)
    parser.add_argument("--no-chain", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny budgets (a smoke test of the script)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "free_energy.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.md_seconds, args.hot_seconds, args.train_minutes, args.checkpoints = 5.0, 3.0, 0.3, 1
        args.ps_eq, args.ps_ax, args.eval_samples = 20, 10, 1000
        args.sample_seconds, args.chain_seconds = 0, 5
        args.hidden = [16]
    import torch

    torch.set_num_threads(1)
    pymbar_module()  # import pymbar once, quietly (openmmtools would print its banner)
    from openmm_bg.systems import load

    system = load("alanine_dipeptide")
    t_start = time.perf_counter()
    lines: list[str] = []

    def log(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    ref, ref_err = read_reference(args)
    log(f"reference Delta A(C7ax - C7eq) = {ref} +- {ref_err} kT" if ref is not None else "reference: none")
    results: dict = {"reference_kT": ref, "reference_error_kT": ref_err, "target_kT": TARGET,
                     "args": vars(args)}

    log("(b) BG reweighting")
    bg, gen, bg_total = run_bg(system, args, ref, ref_err, log)
    results["bg"] = bg
    if args.no_chain:
        results["chain"] = {"available": False, "note": "skipped (--no-chain)"}
    else:
        log("(c) MD + BG move")
        results["chain"] = run_chain(system, gen, bg["training_end_s"], args, ref, ref_err, log)
        if not results["chain"]["available"]:
            log(f"  {results['chain']['note']}")
    log("(a) plain MD")
    md300 = run_md(system, args.md_seconds, 300.0, args.seed)
    log(f"  300 K: {md300['ns']:.2f} ns in {md300['wall_s']:.0f} s, C7ax fraction "
        f"{md300['c7ax_fraction']:.4f}, {md300['eq_to_ax']} C7eq->C7ax transitions")
    hot = []
    for k, temperature in enumerate(args.hot):
        r = run_md(system, args.hot_seconds, temperature, args.seed + 10 + k)
        hot.append(r)
        log(f"  {temperature:g} K: {r['ns']:.2f} ns, {r['eq_to_ax']} C7eq->C7ax in {r['time_eq_ns']:.2f} ns "
            "in C7eq")
    p_ax = 1.0 / (1.0 + math.exp(ref)) if ref is not None else None
    if p_ax is None and math.isfinite(bg["points"][-1]["delta_a_kT"]):
        p_ax = 1.0 / (1.0 + math.exp(bg["points"][-1]["delta_a_kT"]))
    md_time = md_time_to_target(md300, hot, p_ax)
    results["md"] = {"run_300K": md300, "hot_runs": hot, "time_to_target": md_time}

    t_bg = bg["time_to_target_s"]
    chain = results["chain"]
    t_chain = chain.get("time_to_target_s", math.nan) if chain.get("available") else math.nan
    t_md, t_md_lo = md_time["wall_s"], md_time["wall_s_lower_bound"]
    t_bg_mbar = bg["mbar_time_to_target_s"]
    summary = {"bg_s": t_bg, "bg_note": bg.get("time_to_target_note", "measured"), "bg_mbar_s": t_bg_mbar,
               "chain_s": t_chain,
               "md_s_extrapolated": t_md, "md_s_lower_bound": t_md_lo, "md_method": md_time["method"],
               "speedup_bg_vs_md": t_md / t_bg if math.isfinite(t_bg) and math.isfinite(t_md) else math.nan,
               "speedup_bg_vs_md_lower_bound": t_md_lo / t_bg if math.isfinite(t_bg) else math.nan,
               "speedup_bg_mbar_vs_md": t_md / t_bg_mbar if math.isfinite(t_bg_mbar) else math.nan,
               "speedup_bg_mbar_vs_md_lower_bound": (t_md_lo / t_bg_mbar if math.isfinite(t_bg_mbar)
                                                     else math.nan),
               "speedup_chain_vs_md": t_md / t_chain if math.isfinite(t_chain) else math.nan,
               "benchmark_wall_s": time.perf_counter() - t_start}
    for key, pts in (("bg", bg["points"]), ("bg_mbar", bg["mbar_points"]),
                     ("chain", results["chain"].get("points", []))):
        t, how = error_only_time(pts)
        summary[f"{key}_s_to_error_0.2_any_value"] = t
        summary[f"{key}_error_only_note"] = how
        summary[f"speedup_{key}_vs_md_error_only"] = t_md / t if math.isfinite(t) else math.nan
        summary[f"speedup_{key}_vs_md_lower_bound_error_only"] = t_md_lo / t if math.isfinite(t) else math.nan
        final = [p for p in pts if math.isfinite(p["delta_a_kT"])]
        if final:
            summary[f"{key}_final_delta_a_kT"] = final[-1]["delta_a_kT"]
            summary[f"{key}_final_error_kT"] = final[-1]["error_kT"]
    results["summary"] = summary
    log("summary (wall-clock seconds to +-0.2 kT of the reference, this machine, one run):")
    for key, value in summary.items():
        log(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(_json(results), indent=1))
    plot(results, ref, out.with_suffix(".png"))
    log(f"written {out} and {out.with_suffix('.png')}")
    return results


def _json(x):
    if isinstance(x, dict):
        return {k: _json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


if __name__ == "__main__":
    main()
