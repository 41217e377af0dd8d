"""One rank of the torchrun job of ``tests/test_distributed.py``.

Usage: ``python -m torch.distributed.run --standalone --nproc_per_node=2 tests/distributed_worker.py
DATA OUT [--die-at STEP]``. On the double well (float64, Reference platform) every rank draws its
shards of a plain and an annealed sample set (one file per rank in OUT, merged there by rank 0),
then trains with sharded batches (rank 0 writes metrics, checkpoints and the final weights to
OUT/full), then runs the adaptive parts (held-out early stopping, FAB with per-shard replay buffers,
the ML weight from held-out data) in OUT/fab: it stops after FAB_STOP steps (a copy of that
checkpoint is kept as OUT/fab/half.ckpt) and resumes to the end on 2 ranks. With ``--die-at``
the ranks then train again in OUT/killed, and rank 1 kills itself (SIGKILL) before step STEP + 1,
which must end the job.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
from pathlib import Path

import torch

from openmm_bg import BoltzmannGenerator
from openmm_bg.analysis.merge import merge_sample_files
from openmm_bg.distributed import close_distributed, init_distributed
from openmm_bg.energy import energy_for
from openmm_bg.model.sharded import part_path, sample_shards
from openmm_bg.sampling import AnnealConfig
from openmm_bg.systems import load
from openmm_bg.training import DistributedTrainer, Stage

#: Shards of every batch and sample set (fixed: the results do not depend on the number of ranks).
SHARDS = 4
#: Sample sets: name -> (n, sample options).
SAMPLE_SETS = {"plain": (400, {}), "annealed": (80, {"anneal": AnnealConfig(n_levels=4, adaptive=False)})}
SAMPLE_SEED = 3


def stages() -> list[Stage]:
    """12 steps: ML, then ML + KL + RC (the RC KDE taken per shard)."""
    return [Stage("ml", steps=6, batch_size=32, lr=5e-3),
            Stage("mix", steps=6, ml=0.5, kl=1.0, rc=0.1, batch_size=32, kl_batch_size=24, lr=2e-3)]


#: The adaptive run on 2 ranks stops after this many steps (mid-FAB, buffers filled), then resumes.
FAB_STOP = 7


def fab_stages() -> list[Stage]:
    """11 steps: ML with early stopping, then FAB (annealing at its steps 0 and 4) + ML weight from held-out data."""
    return [Stage("ml", steps=4, batch_size=32, lr=5e-3, patience=1, validate_every=2),
            Stage("fab", steps=7, ml=0.1, fab=1.0, batch_size=32, kl_batch_size=16, fab_levels=2, lr=2e-3,
                  clip_grad=10.0, ml_auto=True, validate_every=2)]


def fab_trainer(gen, data, out: Path, cls=DistributedTrainer) -> DistributedTrainer:
    out.mkdir(parents=True, exist_ok=True)
    return cls(gen, data, fab_stages(), seed=1, checkpoint=out / "run.ckpt", checkpoint_every=3,
               metrics=out / "metrics.json", progress=False, shards=SHARDS, timeout_s=30, validation=0.2)


class _Stopping(DistributedTrainer):
    """Ends `fit` after ``stop_at`` steps (with a checkpoint), as a run that was stopped there."""

    stop_at = 10**9

    @property
    def total_steps(self) -> int:
        return min(super().total_steps, self.stop_at)


def generator(data) -> BoltzmannGenerator:
    """The double-well generator of every rank, in float64, with energies on the Reference platform."""
    dw = load("double_well")
    return BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0, dtype=torch.float64,
                                    energy=energy_for(dw, platform="Reference"))


def trainer(gen, data, out: Path, cls=DistributedTrainer) -> DistributedTrainer:
    out.mkdir(parents=True, exist_ok=True)
    return cls(gen, data, stages(), seed=0, rc="x1", checkpoint=out / "run.ckpt", checkpoint_every=2,
               metrics=out / "metrics.json", progress=False, shards=SHARDS, timeout_s=30)


class _Dying(DistributedTrainer):
    """Rank 1 kills itself (SIGKILL) before step ``die_at + 1``: a real dead rank, mid-training."""

    die_at = -1

    def _step(self, k, stage, i):
        if self.step == self.die_at and self.info.rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return super()._step(k, stage, i)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("out")
    parser.add_argument("--die-at", type=int, default=-1)
    parser.add_argument("--only-kill", action="store_true", help="skip sampling and the full training run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    info = init_distributed(timeout_s=30)
    gen = generator(args.data)
    for name, (n, options) in ({} if args.only_kill else SAMPLE_SETS).items():
        part = sample_shards(gen, n, seed=SAMPLE_SEED, shards=SHARDS, **options)
        part.save(part_path(out / f"{name}.npz", info.rank, info.world_size))
    if info.distributed:
        torch.distributed.barrier()
    if info.is_main and not args.only_kill:
        for name in SAMPLE_SETS:
            parts = [part_path(out / f"{name}.npz", r, info.world_size) for r in range(info.world_size)]
            merge_sample_files(parts, gen.system).save(out / f"{name}.npz")
    if not args.only_kill:
        run = trainer(gen, args.data, out / "full")
        if info.is_main:
            print(run.describe(), flush=True)
        run.fit(resume=True)
        if info.is_main:
            torch.save(gen.flow.state_dict(), out / "full" / "weights.pt")
    if not args.only_kill:
        _Stopping.stop_at = FAB_STOP
        fab_trainer(generator(args.data), args.data, out / "fab", _Stopping).fit(resume=False)
        if info.is_main:
            shutil.copy(out / "fab" / "run.ckpt", out / "fab" / "half.ckpt")
        gen = generator(args.data)
        fab_trainer(gen, args.data, out / "fab").fit(resume=True)
        if info.is_main:
            torch.save(gen.flow.state_dict(), out / "fab" / "weights.pt")
    if args.die_at >= 0:
        _Dying.die_at = args.die_at
        trainer(generator(args.data), args.data, out / "killed", _Dying).fit(resume=True)
    close_distributed()


if __name__ == "__main__":
    main()
