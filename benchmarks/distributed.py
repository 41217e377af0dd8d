"""Data-parallel training steps/s and sharded samples/s vs the number of ranks (torchrun, gloo, CPU).

For each rank count (``--ranks``, default 1 and 2) the script launches one
``torchrun --standalone --nproc_per_node=R`` job of itself (``--worker``) on alanine dipeptide in
vacuum, with the shipped generator (``systems/models/alanine_dipeptide_vacuum.bg``):

1. training: `DistributedTrainer` with ``--shards`` shards, ``--steps`` steps of ``KL + 0.1 ML``
   (batch ``--batch`` frames and latent points), on a freshly built default-size flow whose
   training frames are 2000 resampled draws of the shipped model; the first 3 steps (process
   group, DDP, energy set-up) are not timed;
2. sampling: `openmm_bg.model.sharded.sample_shards` of ``--samples`` plain samples, each rank
   writing its own file; timed from a barrier before to a barrier after, merge not included.

Each rank evaluates energies with `openmm_bg.distributed.energy_options` (workers = cores / ranks)
and draws samples with cores / ranks worker threads. Both jobs draw exactly the same shards, so the
figures compare the same work; the merged sample sets are checked to be identical. Printed side by
side with the load average (the machine is usually shared). Not a CI test; no GPU, one node.

Usage::

    python benchmarks/distributed.py --ranks 1 2 --steps 20 --samples 40000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODEL = HERE.parent / "systems" / "models" / "alanine_dipeptide_vacuum.bg"
WARMUP = 3


def worker(args: argparse.Namespace) -> None:
    import torch

    from openmm_bg import BoltzmannGenerator
    from openmm_bg.distributed import close_distributed, energy_options, init_distributed
    from openmm_bg.energy import energy_for
    from openmm_bg.model.sharded import part_path, sample_shards
    from openmm_bg.systems import load
    from openmm_bg.training import DistributedTrainer, Stage

    torch.set_num_threads(1)
    info = init_distributed()
    system = load("alanine_dipeptide")
    energy = energy_for(system, **energy_options(info))
    shipped = BoltzmannGenerator.load(MODEL, system, energy=energy)
    cores = len(os.sched_getaffinity(0))
    threads = max(1, cores // info.local_world_size)
    data = shipped.sample(2000, seed=0, threads=threads).resample(seed=0)
    gen = BoltzmannGenerator.build(system, data, seed=0, energy=energy)
    stages = [Stage("kl", steps=args.steps + WARMUP, ml=0.1, kl=1.0, lr=1e-4, batch_size=args.batch)]
    trainer = DistributedTrainer(gen, data, stages, seed=0, shards=args.shards, progress=False)
    trainer.fit()
    times = [row["time"] for row in trainer.history]
    steps_per_s = args.steps / (times[-1] - times[WARMUP - 1])

    if info.distributed:
        torch.distributed.barrier()
    start = time.perf_counter()
    samples = sample_shards(shipped, args.samples, seed=0, shards=args.shards, threads=threads)
    if info.distributed:
        torch.distributed.barrier()
    sample_s = time.perf_counter() - start
    out = Path(args.out)
    samples.save(part_path(out, info.rank, info.world_size))
    if info.is_main:
        print(json.dumps({"ranks": info.world_size, "backend": info.backend, "steps_per_s": steps_per_s,
                          "samples_per_s": args.samples / sample_s, "energy_workers": energy.n_workers,
                          "threads": threads, "final_loss": trainer.history[-1]["loss"]}), flush=True)
    close_distributed()


def load_average() -> float:
    return os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (after 3 untimed)")
    parser.add_argument("--batch", type=int, default=256, help="frames and latent points per step")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--samples", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0, help="unused: every stream is keyed by seed 0")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "cache" / "distributed" / "samples.npz"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for ranks in args.ranks:
        out = HERE / "cache" / "distributed" / f"ranks{ranks}" / "samples.npz"
        out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
                   __file__, "--worker", "--steps", str(args.steps), "--batch", str(args.batch), "--shards",
                   str(args.shards), "--samples", str(args.samples), "--out", str(out)]
        load_before = load_average()
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"{ranks} ranks failed:\n{done.stderr[-4000:]}")
        row = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
        row.update(job_wall_s=wall, load=f"{load_before:.1f}-{load_average():.1f}")
        rows.append(row)
        print(json.dumps(row), flush=True)
    first = rows[0]
    print(f"\n{'ranks':>5} {'steps/s':>8} {'x':>5} {'samples/s':>10} {'x':>5} {'job s':>6}  load   energy workers/rank")
    for row in rows:
        print(f"{row['ranks']:>5} {row['steps_per_s']:8.2f} {row['steps_per_s'] / first['steps_per_s']:5.2f} "
              f"{row['samples_per_s']:10.0f} {row['samples_per_s'] / first['samples_per_s']:5.2f} "
              f"{row['job_wall_s']:6.0f}  {row['load']}  {row['energy_workers']}")
    # the same shards whatever the rank count: the merged sets must be identical
    from openmm_bg.analysis.merge import merge_sample_files
    from openmm_bg.model.sharded import part_path
    from openmm_bg.systems import load

    system = load("alanine_dipeptide")
    merged = []
    for row in rows:
        out = HERE / "cache" / "distributed" / f"ranks{row['ranks']}" / "samples.npz"
        merged.append(merge_sample_files([part_path(out, r, row["ranks"]) for r in range(row["ranks"])], system))
    same = all(np.array_equal(m.log_weights, merged[0].log_weights) for m in merged)
    losses = {row["ranks"]: row["final_loss"] for row in rows}
    print(f"merged sample sets identical across rank counts: {same}; final training loss by ranks: {losses}")


if __name__ == "__main__":
    main()
