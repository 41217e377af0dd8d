"""Speed of plain sampling from the shipped alanine-dipeptide generator (vacuum), energies included.

Target (issue 13): ``gen.sample(10**6)`` from Python with default settings in <= 60 s on 2 idle
cores. The script measures, in one process and side by side:

1. where the time goes, one torch thread, one batch size (``--batch``) at a time: drawing latent
   points, the flow, the coordinate transform, OpenMM energies without and with forces, the torch
   force field's energies, the numpy conversions;
2. ``--compare`` samples (default 10^5) drawn by the loop ``sample`` ran before (batches one
   after another, torch's thread count as the caller left it: the default, and 1), by ``sample``
   now with ``threads=1`` and with its default worker threads, with a larger batch, and with the
   energy on 2 worker processes; each checked to give the same samples as the first where it
   should (bit for bit), and the torch force field's energies against OpenMM's;
3. the headline: ``gen.sample(--n)`` (default 10^6) with default settings.

The machine is usually shared: the load average is printed next to every time; ratios measured
side by side are the figures to trust. Not a CI test.

Usage::

    python benchmarks/sampling_speed.py --n 1000000 --compare 100000 --seed 0
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np
import torch
from _common import HERE

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.energy import OpenMMEnergy
from openmm_bg.model.batches import default_threads, torch_threads

MODEL = HERE.parent / "systems" / "models" / "alanine_dipeptide_vacuum.bg"


def load_generator(energy: OpenMMEnergy | None = None) -> BoltzmannGenerator:
    return BoltzmannGenerator.load(MODEL, openmm_bg.systems.load("alanine_dipeptide"), energy=energy)


def load_average() -> str:
    return f"load {os.getloadavg()[0]:.2f}"


def timed(label: str, fn, n: int):
    start = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    print(f"  {label:<58s} {wall:7.2f} s  {n / wall:9.0f} samples/s  ({load_average()})", flush=True)
    return out, wall


def previous_sample(gen: BoltzmannGenerator, n: int, seed: int, batch_size: int = 4096) -> np.ndarray:
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


def breakdown(gen: BoltzmannGenerator, n: int, batch: int, seed: int) -> None:
    print(f"where the time goes: {n} samples, batch {batch}, 1 torch thread, one step after another")
    g = torch.Generator().manual_seed(seed)
    sizes = [min(batch, n - s) for s in range(0, n, batch)]
    with torch_threads(1), torch.no_grad():
        z, _ = timed("latent draws (prior)", lambda: [gen.sample_latent(m, g) for m in sizes], n)
        v, _ = timed("flow forward", lambda: [gen.flow(zb) for zb in z], n)
        y, _ = timed("standardize", lambda: [gen.standardize(vb.to(torch.float64))[0] for vb, _ in v], n)
        x, _ = timed("coordinate transform (internal -> Cartesian)", lambda: [gen.transform(yb)[0] for yb in y], n)
        timed("numpy conversion of positions", lambda: [xb.numpy().copy() for xb in x], n)
        timed("chirality check", lambda: [gen.inverted(xb) for xb in x], n)
        energy = gen.energy
        e_mm, _ = timed(f"OpenMM energies, no forces ({energy.platform_name})",
                        lambda: torch.cat([energy.evaluate(xb, forces=False)[0] for xb in x]), n)
        timed("OpenMM energies with forces", lambda: [energy.evaluate(xb, forces=True) for xb in x], n)
        torch_energy = OpenMMEnergy(gen.system, backend="torch")
        e_t, _ = timed("torch force field energies, no forces (float64)",
                       lambda: torch.cat([torch_energy.evaluate(xb, forces=False)[0] for xb in x]), n)
    rel = (e_t - e_mm).abs() / e_mm.abs().clamp(min=1.0)
    print(f"  torch force field vs OpenMM: largest relative energy difference {float(rel.max()):.2e} "
          "(needs <= 1e-9 to replace OpenMM without changing results)")


def compare(n: int, seed: int) -> None:
    print(f"\nside by side: {n} samples, seed {seed}, default threads here: {default_threads()}, "
          f"torch default intra-op threads: {torch.get_num_threads()}")
    gen = load_generator()
    gen.sample(2000, seed=seed)  # warm up (platform choice, caches)
    ref, t_before_1 = None, None
    with torch_threads(1):
        ref, t_before_1 = timed("before: batch after batch, 1 torch thread", lambda: previous_sample(gen, n, seed), n)
    before_default, t_before = timed(f"before: batch after batch, torch default ({torch.get_num_threads()} threads)",
                                     lambda: previous_sample(gen, n, seed), n)
    now_serial, t_serial = timed("now: sample(threads=1)", lambda: gen.sample(n, seed=seed, threads=1), n)
    now, t_now = timed(f"now: sample() (default: {default_threads()} worker threads)",
                       lambda: gen.sample(n, seed=seed), n)
    big, t_big = timed("now: sample(batch_size=16384)", lambda: gen.sample(n, seed=seed, batch_size=16384), n)
    with OpenMMEnergy(gen.system, n_workers=2) as pool:
        gen_pool = load_generator(energy=pool)
        gen_pool.sample(2000, seed=seed)
        pooled, t_pool = timed("now: sample() with energies on 2 worker processes",
                               lambda: gen_pool.sample(n, seed=seed), n)
    same = {"threads=1": now_serial.energies, "default": now.energies, "2 worker processes": pooled.energies}
    for label, e in same.items():
        print(f"  same energies as 'before, 1 torch thread' ({label}): {np.array_equal(e, ref)}")
    diff = np.abs(before_default - ref)[np.isfinite(ref)]
    print(f"  'before, default threads' vs 1 thread: largest energy difference {diff.max():.2e} kT "
          "(float32 flow: the reduction order depends on the thread count)")
    print(f"  batch 16384 vs 4096 draws other latent points (batches are drawn one by one): "
          f"ESS/N {big.ess_fraction:.3f} vs {now.ess_fraction:.3f}")
    print(f"  speed-up of the default over 'before, default threads' {t_before / t_now:.2f}x, over "
          f"'before, 1 thread' {t_before_1 / t_now:.2f}x")


def headline(n: int, seed: int) -> None:
    print(f"\nheadline: gen.sample({n}) with default settings, energies included")
    gen = load_generator()
    start = time.perf_counter()
    samples = gen.sample(n, seed=seed)
    wall = time.perf_counter() - start
    print(f"  {wall:.1f} s ({n / wall:.0f} samples/s, {load_average()}); target <= 60 s on 2 idle cores")
    print(f"  {samples.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10**6, help="samples of the headline run (default 10^6)")
    parser.add_argument("--compare", type=int, default=10**5, help="samples of the side-by-side runs")
    parser.add_argument("--batch", type=int, default=4096, help="batch size of the breakdown")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, {load_average()}, torch {torch.__version__}")
    breakdown(load_generator(), min(args.compare, 10**5), args.batch, args.seed)
    compare(args.compare, args.seed)
    headline(args.n, args.seed)


if __name__ == "__main__":
    main()
