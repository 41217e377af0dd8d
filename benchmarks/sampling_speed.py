"""Speed of plain sampling from the shipped alanine-dipeptide generator (vacuum), energies included.

Target (issue 13): ``gen.sample(10**6)`` from Python with default settings in <= 60 s on 2 idle
cores. The machine this runs on is usually shared, so every figure comes with the CPU time (user +
system, of the process and its energy workers) next to the wall time and the load average: CPU
seconds per 10^6 samples are what the choice of defaults changes; wall time on 2 idle cores is
about half the CPU time with the default 2 worker threads (flow and energy of different batches
overlap; the Python that holds the GIL is a few per cent of the work).

1. Where the time goes (this process, one torch thread, one step after another over ``--compare``
   samples, batch ``--batch``): latent draws, flow, coordinate transform, numpy conversion,
   chirality check, OpenMM energies without and with forces, the torch force field.
2. Side by side, each configuration in a fresh process (``--compare`` samples, default 10^5): the
   loop before worker threads (torch's default thread count; at most 2 x 10^4 samples, its OpenMP
   threads spin on a loaded machine), the defaults before this change (glibc malloc returning freed
   memory: ``OPENMM_BG_KEEP_FREED_MEMORY=0``), the defaults now, and alternatives that were not
   adopted (1 thread, batch 16,384, 2 energy worker processes, the torch force field); each says
   whether its energies are bit for bit those of the defaults.
3. The headline: ``gen.sample(--n)`` (default 10^6) with the old and the new defaults.

Results go to ``benchmarks/results/sampling_speed.json``. Not a CI test.

Usage::

    python benchmarks/sampling_speed.py --n 1000000 --compare 100000 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from _common import HERE, RESULTS

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.energy import OpenMMEnergy
from openmm_bg.model.batches import default_threads, keep_freed_memory, torch_threads

MODEL = HERE.parent / "systems" / "models" / "alanine_dipeptide_vacuum.bg"

#: name -> (description, environment, options of the child run)
CONFIGS = {
    "loop_before_threads": ("old: batch after batch, torch default threads (before worker threads)",
                            {"OPENMM_BG_KEEP_FREED_MEMORY": "0"}, {"loop": True}),
    "old_defaults": ("old defaults: sample() with malloc returning freed memory", {"OPENMM_BG_KEEP_FREED_MEMORY": "0"},
                     {}),
    "new_defaults": ("new defaults: sample()", {}, {}),
    "threads_1": ("new, threads=1", {}, {"threads": 1}),
    "batch_16384": ("new, batch_size=16384 (draws other latent points)", {}, {"batch_size": 16384}),
    "workers_2": ("new, energies on 2 worker processes", {}, {"n_workers": 2}),
    "torch_ff": ("new, torch force field energies (not bit-identical)", {}, {"backend": "torch"}),
}


def load_generator(energy: OpenMMEnergy | None = None) -> BoltzmannGenerator:
    return BoltzmannGenerator.load(MODEL, openmm_bg.systems.load("alanine_dipeptide"), energy=energy)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def worker_cpu_seconds(energy: OpenMMEnergy | None) -> float:
    """CPU seconds so far of the energy's worker processes (Linux ``/proc``; 0 without workers)."""
    total = 0.0
    for pid in energy.worker_pids if energy is not None else []:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def load_average() -> float:
    return os.getloadavg()[0]


def loop_before_threads(gen: BoltzmannGenerator, n: int, seed: int, batch_size: int = 4096) -> np.ndarray:
    """The loop ``BoltzmannGenerator.sample`` ran before worker threads: batch after batch in the
    calling thread, with whatever torch thread count the caller had. Returns the energies."""
    g = torch.Generator().manual_seed(seed)
    energies = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            p = gen.propose(min(batch_size, n - start), generator=g)
            u = torch.full_like(p.log_q, math.inf)
            u[p.ok] = gen.reduced_energy(p.x[p.ok]).to(u)
            _ = torch.where(p.ok[:, None, None], p.x, math.nan).numpy(), p.log_q.numpy(), gen.inverted(p.x)
            energies.append(u.numpy())
    return np.concatenate(energies)


def child(name: str, n: int, seed: int) -> None:
    """Run one configuration (in a fresh process) and print one JSON line."""
    options = dict(CONFIGS[name][2])
    energy = None
    if "n_workers" in options or "backend" in options:
        energy = OpenMMEnergy(openmm_bg.systems.load("alanine_dipeptide"), n_workers=options.pop("n_workers", 1),
                              backend=options.pop("backend", "openmm"))
    gen = load_generator(energy)
    loop = options.pop("loop", False)
    gen.sample(4096, seed=seed + 1, **options)  # warm up: platform choice, contexts, workers, heaps
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    load0, cpu0, workers0, start = load_average(), cpu_seconds(), worker_cpu_seconds(energy), time.perf_counter()
    energies = loop_before_threads(gen, n, seed) if loop else gen.sample(n, seed=seed, **options).energies
    wall = time.perf_counter() - start
    cpu = cpu_seconds() - cpu0 + worker_cpu_seconds(energy) - workers0  # with the energy workers' share
    if energy is not None:
        energy.close()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    print(json.dumps({"config": name, "n": n, "cpu_s": cpu, "wall_s": wall, "load": [load0, load_average()],
                      "page_faults_per_sample": faults / n, "dtype": str(energies.dtype),
                      "energies_sha1": hashlib.sha1(np.ascontiguousarray(energies).tobytes()).hexdigest(),
                      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "torch_threads": torch.get_num_threads(), "malloc_kept": keep_freed_memory()}))


def run_child(name: str, n: int, seed: int) -> dict:
    env = {**os.environ, **CONFIGS[name][1]}
    done = subprocess.run([sys.executable, __file__, "--child", name, "--n", str(n), "--seed", str(seed)],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


HEADER = (f"  {'configuration':<66s} {'CPU s':>7s} {'CPU s/1e6':>9s} {'wall s':>7s} {'samples/s':>9s} "
          f"{'faults/smp':>10s}  load       same energies as the new defaults")


def report(r: dict, reference: dict | None) -> None:
    """One row; ``same`` compares the energies with ``reference`` (the new defaults, same n)."""
    same = "-" if reference is None or reference is r else str(r["energies_sha1"] == reference["energies_sha1"])
    print(f"  {CONFIGS[r['config']][0]:<66s} {r['cpu_s']:7.1f} {r['cpu_s'] / r['n'] * 1e6:9.1f} "
          f"{r['wall_s']:7.1f} {r['n'] / r['wall_s']:9.0f} {r['page_faults_per_sample']:10.2f}  "
          f"{r['load'][0]:.1f}-{r['load'][1]:.1f}    {same}", flush=True)


def timed(label: str, fn, n: int):
    load0, cpu0, start = load_average(), time.process_time(), time.perf_counter()
    out = fn()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - start
    print(f"  {label:<58s} CPU {cpu:6.2f} s ({cpu / n * 1e6:5.1f} us/sample)  wall {wall:6.2f} s  "
          f"(load {load0:.1f})", flush=True)
    return out, cpu


def breakdown(n: int, batch: int, seed: int) -> dict:
    keep_freed_memory()  # as sample() does
    gen = load_generator()
    print(f"where the time goes: {n} samples, batch {batch}, 1 torch thread, one step after another")
    g = torch.Generator().manual_seed(seed)
    sizes = [min(batch, n - s) for s in range(0, n, batch)]
    cpu = {}
    with torch_threads(1), torch.no_grad():
        gen.flow(gen.sample_latent(batch, g))  # warm up
        z, cpu["latent draws"] = timed("latent draws (prior)", lambda: [gen.sample_latent(m, g) for m in sizes], n)
        v, cpu["flow"] = timed("flow forward", lambda: [gen.flow(zb) for zb in z], n)
        y, cpu["standardize"] = timed("standardize", lambda: [gen.standardize(vb.to(torch.float64))[0] for vb, _ in v],
                                      n)
        x, cpu["transform"] = timed("coordinate transform (internal -> Cartesian)",
                                    lambda: [gen.transform(yb)[0] for yb in y], n)
        _, cpu["numpy"] = timed("numpy conversion of positions", lambda: [xb.numpy().copy() for xb in x], n)
        _, cpu["chirality"] = timed("chirality check", lambda: [gen.inverted(xb) for xb in x], n)
        energy = gen.energy
        e_mm, cpu["openmm"] = timed(f"OpenMM energies, no forces ({energy.platform_name} platform)",
                                    lambda: torch.cat([energy.evaluate(xb, forces=False)[0] for xb in x]), n)
        _, cpu["openmm_forces"] = timed("OpenMM energies with forces (annealing, training)",
                                        lambda: [energy.evaluate(xb, forces=True) for xb in x], n)
        torch_energy = OpenMMEnergy(gen.system, backend="torch")
        e_t, cpu["torch_ff"] = timed("torch force field energies, no forces (float64)",
                                     lambda: torch.cat([torch_energy.evaluate(xb, forces=False)[0] for xb in x]), n)
    rel = (e_t - e_mm).abs() / e_mm.abs().clamp(min=1.0)
    print(f"  torch force field vs OpenMM: largest relative energy difference {float(rel.max()):.2e} "
          "(not bit-identical, so not a default)")
    return {k: v / n * 1e6 for k, v in cpu.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10**6, help="samples of the headline runs (default 10^6)")
    parser.add_argument("--compare", type=int, default=10**5, help="samples of the side-by-side runs")
    parser.add_argument("--batch", type=int, default=4096, help="batch size of the breakdown")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=list(CONFIGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.seed)
        return
    print(f"{os.cpu_count()} cores, load {load_average():.1f}, torch {torch.__version__}, default worker threads "
          f"{default_threads()}, torch default intra-op threads {torch.get_num_threads()}")
    results = {"cores": os.cpu_count(), "default_threads": default_threads(),
               "breakdown_cpu_us_per_sample": breakdown(min(args.compare, 10**5), args.batch, args.seed)}
    out = RESULTS / "sampling_speed.json"
    print(f"\nside by side: {args.compare} samples, seed {args.seed}, each configuration in a fresh process "
          "(rows as they finish; 'same energies' compares with the new defaults, run first)")
    print(HEADER)
    results["compare"] = []
    for name in ["new_defaults"] + [c for c in CONFIGS if c != "new_defaults"]:
        # the loop with torch's default threads spins OpenMP threads on a loaded machine: 2 x 10^4 samples tell
        n = min(args.compare, 20000) if CONFIGS[name][2].get("loop") else args.compare
        results["compare"].append(run_child(name, n, args.seed))
        report(results["compare"][-1], results["compare"][0] if n == args.compare else None)
        out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nheadline: gen.sample({args.n}) with default settings, energies included (new, then old defaults)")
    print(HEADER)
    results["headline"] = []
    for name in ("new_defaults", "old_defaults"):
        results["headline"].append(run_child(name, args.n, args.seed))
        report(results["headline"][-1], results["headline"][0])
        out.write_text(json.dumps(results, indent=1) + "\n")
    new = results["headline"][0]
    per_sample = new["cpu_s"] / new["n"] * 1e6
    print(f"  new defaults: {per_sample:.1f} CPU-us per sample. On 2 idle cores with {default_threads()} worker "
          f"threads: at least CPU / 2 = {per_sample / 2:.0f} s per 10^6; with ~10 % of the work holding the GIL "
          f"(the energy loop's per-configuration Python, <= 6 us of ~55) about CPU x 0.55 = {per_sample * 0.55:.0f} "
          "s (target <= 60 s)")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
