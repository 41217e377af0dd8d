"""Throughput of energy + forces for alanine dipeptide: plain OpenMM loop vs `OpenMMEnergy`.

For vacuum and implicit solvent (OBC1), a batch of perturbed configurations is evaluated by

- the fastest plain single-context loop (``setPositions`` + ``getState(getEnergy, getForces)``)
  over the platforms Reference, CPU with 1 thread and CPU with all threads;
- `OpenMMEnergy` with ``n_workers=1`` on the loop's fastest platform (forward + backward through
  torch autograd), which measures the op's own overhead (conversion, failure handling);
- `OpenMMEnergy` with ``n_workers=1`` and ``n_workers=2`` on the automatically selected platform.

Each method is timed ``--repeats`` times, interleaved, and the best time is kept (other processes
on a shared machine only ever slow a run down). Not a CI test.

Usage::

    python benchmarks/energy_throughput.py --batch 1024 --seed 0

Targets on 2 cores: the 2-worker pool >= 1.7x the fastest loop for implicit solvent, and the op's
overhead < 10 % of the loop's cost for vacuum.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import openmm
import torch
from _common import best_time, plain_loop

from openmm_bg.energy import OpenMMEnergy
from openmm_bg.systems import load


def op_call(energy: OpenMMEnergy, x: torch.Tensor) -> None:
    """Energy and forces through the torch op: forward + backward."""
    xr = x.detach().requires_grad_(True)
    energy(xr).sum().backward()


def cpu_seconds(pids: list[int]) -> float:
    """CPU time (user + system) of this process and of the given worker processes."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (FileNotFoundError, IndexError):
            pass
    return total


def run(solvent: str, batch: int, seed: int, repeats: int) -> dict[str, float]:
    ms = load("alanine_dipeptide", solvent=solvent)
    rng = np.random.default_rng(seed)
    x = ms.positions[None] + 0.003 * rng.standard_normal((batch, ms.n_atoms, 3))
    xt = torch.tensor(x)
    n_cpu = os.cpu_count() or 1

    loops = {"Reference": {}, "CPU/1 thread": {"Threads": "1"},
             f"CPU/{n_cpu} threads": {"Threads": str(n_cpu)}}
    contexts = {}
    for label, props in loops.items():
        platform = openmm.Platform.getPlatformByName(label.split("/")[0])
        contexts[label] = openmm.Context(ms.system, openmm.VerletIntegrator(0.001), platform, props)
        plain_loop(contexts[label], x[:8])  # warm-up
    # choose the fastest loop on a sub-batch, then time it on the full batch
    quick = {label: best_time(lambda c=c: plain_loop(c, x[:64]), 2) for label, c in contexts.items()}
    best_loop = min(quick, key=quick.get)
    loop_platform = best_loop.split("/")[0]
    loop_props = loops[best_loop]

    same = OpenMMEnergy(ms, platform=loop_platform, platform_properties=loop_props)
    auto1 = OpenMMEnergy(ms, n_workers=1)
    auto2 = OpenMMEnergy(ms, n_workers=2)
    for e in (same, auto1, auto2):
        op_call(e, xt[:16])  # warm-up (pool started)

    methods = {
        "loop": lambda: plain_loop(contexts[best_loop], x),
        "op_same_platform": lambda: op_call(same, xt),
        "op_1_worker": lambda: op_call(auto1, xt),
        "op_2_workers": lambda: op_call(auto2, xt),
    }
    pids = {"op_2_workers": auto2.worker_pids}
    times = {k: np.inf for k in methods}
    cpu = {k: 0.0 for k in methods}
    for _ in range(repeats):  # interleaved, best of `repeats`
        for k, fn in methods.items():
            c0 = cpu_seconds(pids.get(k, []))
            times[k] = min(times[k], best_time(fn, 1))
            cpu[k] += cpu_seconds(pids.get(k, [])) - c0
    auto2.close()

    print(f"\nalanine dipeptide, {solvent}, batch {batch}")
    per_conf = ", ".join(f"{k} {v / 64 * 1e6:.0f} us" for k, v in quick.items())
    print(f"  fastest plain loop: {best_loop} ({per_conf} per configuration on 64)")
    print(f"  OpenMMEnergy auto platform: {auto1.platform_name}")
    for k, t in times.items():
        print(f"  {k:18s} {batch / t:10.0f} conf/s   {t / batch * 1e6:8.1f} us/conf   "
              f"x{times['loop'] / t:5.2f} vs loop   CPU {cpu[k] / repeats / batch * 1e6:7.1f} us/conf")
    ideal = 2 * cpu["loop"] / cpu["op_2_workers"]
    print(f"  2-worker speed-up implied by CPU cost on 2 free cores: {ideal:.2f}x "
          "(CPU time of the parent and workers; insensitive to other load, ignores idle waits)")
    overhead = times["op_same_platform"] / times["loop"] - 1.0
    print(f"  op overhead (same platform, 1 worker): {100 * overhead:+.1f} % of the loop")
    return {"overhead": overhead, "speedup_2_workers": times["loop"] / times["op_2_workers"],
            "cpu_overhead": cpu["op_same_platform"] / cpu["loop"] - 1.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="configurations per call")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbations")
    parser.add_argument("--repeats", type=int, default=10, help="timings per method (best kept)")
    parser.add_argument("--solvent", choices=["vacuum", "implicit", "both"], default="both")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.2f}, "
          f"OpenMM {openmm.__version__}, torch {torch.__version__}")
    results = {}
    for solvent in (["vacuum", "implicit"] if args.solvent == "both" else [args.solvent]):
        results[solvent] = run(solvent, args.batch, args.seed, args.repeats)
    print(f"\nload average after: {os.getloadavg()[0]:.2f} (other processes on the machine add noise)")
    if "vacuum" in results:
        ok = results["vacuum"]["overhead"] < 0.10
        print(f"target vacuum overhead < 10 %: {100 * results['vacuum']['overhead']:.1f} % "
              f"{'met' if ok else 'NOT met'} (by CPU time: {100 * results['vacuum']['cpu_overhead']:.1f} %)")
    if "implicit" in results:
        ok = results["implicit"]["speedup_2_workers"] >= 1.7
        print(f"target implicit 2-worker speed-up >= 1.7x: {results['implicit']['speedup_2_workers']:.2f}x "
              f"{'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
