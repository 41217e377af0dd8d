"""Throughput of energy + forces: the fastest plain OpenMM loop vs `TorchForceField`.

For alanine dipeptide (vacuum; implicit solvent = OBC1 as a CustomGBForce) and trpzip2 (OBC2
via GBSAOBCForce), perturbed configurations (0.01 nm Gaussian noise) are evaluated by

- the fastest plain single-context loop (``setPositions`` + ``getState(getEnergy, getForces)``),
  Reference platform or CPU platform with 1 thread, whichever is faster here;
- `TorchForceField.energy_and_forces` on the CPU in float64 and float32, for each batch size
  (default 256 ... 16384; trpzip2 uses smaller batches), with the default chunk size.

Configurations per second are reported with the speedup over the OpenMM loop. Each timing is
the best of ``--repeats`` runs (other processes on a shared machine only slow a run down), but
numbers on a shared 2-core machine remain noisy. Not a CI test.

Usage::

    python benchmarks/torch_forcefield_throughput.py --seed 0
    python benchmarks/torch_forcefield_throughput.py --systems ala-implicit --batch 4096 --compile

Target: torch >= 50x the fastest OpenMM loop for implicit-solvent alanine dipeptide at batch >= 4096.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import openmm
import torch
from _common import best_time, plain_loop

from openmm_bg.energy.torchff.forcefield import TorchForceField
from openmm_bg.systems import load

SYSTEMS = {
    "ala-vacuum": ("alanine_dipeptide", {"solvent": "vacuum"}),
    "ala-implicit": ("alanine_dipeptide", {"solvent": "implicit"}),
    "trpzip2": ("trpzip2", {}),
}


def openmm_loop_rate(system: openmm.System, xs: np.ndarray, repeats: int) -> tuple[float, str]:
    """Configurations/s of the fastest plain loop over Reference and CPU (1 thread)."""
    results = {}
    for platform, properties in (("Reference", {}), ("CPU", {"Threads": "1"})):
        context = openmm.Context(system, openmm.VerletIntegrator(1.0),
                                 openmm.Platform.getPlatformByName(platform), properties)
        plain_loop(context, xs)  # warm-up
        results[platform] = len(xs) / best_time(lambda context=context: plain_loop(context, xs), repeats)
        del context
    best = max(results, key=results.get)
    return results[best], f"{best} ({', '.join(f'{k} {v:.0f}/s' for k, v in results.items())})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    parser.add_argument("--batch", nargs="+", type=int, default=[256, 1024, 4096, 16384],
                        help="batch sizes for alanine dipeptide")
    parser.add_argument("--trpzip2-batch", nargs="+", type=int, default=[16, 64, 256],
                        help="batch sizes for trpzip2 (218 atoms)")
    parser.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    parser.add_argument("--openmm-configs", type=int, default=300,
                        help="configurations in the OpenMM loop (a tenth of it for trpzip2)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time TorchForceField(compile=True)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; OpenMM {openmm.__version__}")
    rows = []
    for key in args.systems:
        name, options = SYSTEMS[key]
        ms = load(name, **options)
        n_loop = max(5, args.openmm_configs // (10 if name == "trpzip2" else 1))
        xs = ms.positions[None] + 0.01 * rng.standard_normal((n_loop, *ms.positions.shape))
        loop_rate, which = openmm_loop_rate(ms.system, xs, args.repeats)
        print(f"\n{key}: OpenMM loop {loop_rate:.0f} conf/s, {1e6 / loop_rate:.0f} us/conf; {which}")
        batches = args.trpzip2_batch if name == "trpzip2" else args.batch
        variants = [(dtype, False) for dtype in args.dtypes]
        if args.compile:
            variants += [(dtype, True) for dtype in args.dtypes]
        for dtype_name, compiled in variants:
            dtype = getattr(torch, dtype_name)
            ff = TorchForceField(ms.system, dtype=dtype, compile=compiled)
            label = dtype_name + (" compiled" if compiled else "")
            if compiled:
                start = time.perf_counter()  # one compilation (dynamic batch dimension)
                ff.energy_and_forces(torch.as_tensor(xs))
                print(f"  {label}: compilation {time.perf_counter() - start:.0f} s")
            else:
                ff.energy_and_forces(torch.as_tensor(xs[:8]))  # warm-up
            for batch in batches:
                noise = 0.01 * rng.standard_normal((batch, *ms.positions.shape))
                x = torch.as_tensor(ms.positions[None] + noise, dtype=dtype)
                rate = batch / best_time(lambda ff=ff, x=x: ff.energy_and_forces(x), args.repeats)
                rows.append({"system": key, "dtype": dtype_name, "compiled": compiled, "batch": batch,
                             "conf_per_s": rate, "openmm_conf_per_s": loop_rate, "speedup": rate / loop_rate,
                             "chunk_size": ff.chunk_size})
                print(f"  {label:18s} batch {batch:6d} (chunk {ff.chunk_size:5d}): {rate:9.0f} conf/s "
                      f"{1e6 / rate:9.1f} us/conf  {rate / loop_rate:6.1f}x OpenMM")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
