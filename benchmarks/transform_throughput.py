"""Throughput of the internal-coordinate transforms (float32, CPU) and Z-matrix build time.

Measures configurations per second of ``inverse`` (x -> y) and ``forward`` (y -> x) for a batch of
4096 alanine-dipeptide and 256 trpzip2 configurations (reference structure plus Gaussian noise,
random orientations), and the time to build the Z-matrix of openmmtools' T4 lysozyme receptor
(2603 atoms).

Usage::

    python benchmarks/transform_throughput.py --seed 0 [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse

import torch
from _common import best_time


def _frames(ms, n, seed, scale=0.01):
    from openmm_bg.transforms import apply_rigid, random_rotation

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, ms.n_atoms, 3, generator=g, dtype=torch.float64)
    x = torch.as_tensor(ms.positions) + scale * noise
    return apply_rigid(x, random_rotation(n, generator=g, dtype=torch.float64))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timings repeated, best reported")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (0: torch default; 1 is faster on a loaded 2-core machine)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    import openmm.app as app
    from openmmtools.testsystems import get_data_filename

    import openmm_bg.systems as bgs
    from openmm_bg.transforms import MixedTransform, build_zmatrix

    results = {}
    for name, batch in [("alanine_dipeptide", 4096), ("trpzip2", 256)]:
        ms = bgs.load(name)
        train = _frames(ms, 500, args.seed)
        t = MixedTransform.from_system(ms, train)
        x = _frames(ms, batch, args.seed + 1).float()
        with torch.no_grad():
            y, _ = t.inverse(x)
            t_inv = best_time(lambda x=x, t=t: t.inverse(x), args.repeats)
            t_fwd = best_time(lambda y=y, t=t: t.forward(y), args.repeats)
        results[name] = (batch / t_inv, batch / t_fwd)
        print(f"{name:18s} batch {batch:5d}, n_dof {t.n_dof:4d}: inverse {batch / t_inv:12,.0f} conf/s, "
              f"forward {batch / t_fwd:12,.0f} conf/s")

    top = app.AmberPrmtopFile(get_data_filename("data/T4-lysozyme-L99A-implicit/receptor.prmtop")).topology
    t_zm = best_time(lambda: build_zmatrix(top), args.repeats)
    results["lysozyme_zmatrix_s"] = t_zm
    print(f"T4 lysozyme receptor ({top.getNumAtoms()} atoms) Z-matrix build: {t_zm:.3f} s")
    print(f"(torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU)")
    return results


if __name__ == "__main__":
    main()
