"""`DistributedTrainer`: data-parallel training on the ranks of a ``torchrun`` job (or on one process).

Every step's global batch is cut into a fixed number of shards (``shards``, default
`openmm_bg.distributed.DEFAULT_SHARDS`); shard ``k`` of step ``t`` draws its ML frames and its
KL/RC latent points from its own streams, seeded by ``(seed, stream, t, k)``
(`openmm_bg.distributed.stream_seed`). Rank ``r`` of ``R`` evaluates the contiguous block of shards
`openmm_bg.distributed.shards_of_rank` gives it (energies on its own OpenMM context or workers), the
flow is wrapped in ``DistributedDataParallel`` so that the backward pass all-reduces the gradients,
and the per-shard metrics are summed over ranks in shard order. So the loss curve and the weights
are those of one process running the same number of shards, up to the rounding of the gradient
all-reduce (float64: ~1e-15 relative per step), with any ``R <= shards``.

Batch-coupled terms are computed *per shard*, which keeps them independent of ``R``: the RC loss's
KDE is taken over each shard's own samples (the global RC term is the particle-weighted mean of the
shards'), as is the chirality penalty's scale. A sharded run therefore differs from the plain
`Trainer` (one stream, one batch) even on one process; its run record holds ``shards`` and a
checkpoint resumes only with the same number of shards, but with any number of ranks. The trainer
has no replay buffer or SMC schedule to share.

Rank 0 writes metrics and (atomic) checkpoints and reads the checkpoint it resumes from, which is
broadcast to the other ranks (no shared file system is needed for that). Every collective has the
process group's timeout (`openmm_bg.distributed.init_distributed`): a rank that dies or hangs ends
the job with an error naming the rank and the checkpoint to resume from.

Examples
--------
>>> from openmm_bg.training import Stage
>>> # dw_data: MD frames of the double well; dw_gen: a generator built on them (conftest.py)
>>> trainer = DistributedTrainer(dw_gen, dw_data, [Stage("ml", steps=3, batch_size=32)], shards=4, progress=False)
>>> trainer.describe()
'training on 1 rank (one process), 4 shards per batch'
>>> [row["step"] for row in trainer.fit()]
[1, 2, 3]
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Sequence

import torch
from torch import nn

from .._validation import one_line
from ..distributed import (
    DEFAULT_SHARDS,
    DEFAULT_TIMEOUT_S,
    KL_STREAM,
    ML_STREAM,
    RankInfo,
    check_shards,
    init_distributed,
    shard_sizes,
    shards_of_rank,
    stream_seed,
)
from ..model.generator import BoltzmannGenerator
from ..systems import ReactionCoordinate
from .losses import kl_loss, ml_loss, rc_loss
from .stages import Stage
from .trainer import Trainer

__all__ = ["DistributedTrainer"]

logger = logging.getLogger(__name__)

#: Per-shard sums that the ranks add up: ML, KL, RC (times rows), u (times rows), rows with u, out of domain,
#: inverted.
_STATS = 7


class _ShardObjective(nn.Module):
    """The flow as the module ``DistributedDataParallel`` wraps; its forward is the trainer's local objective."""

    def __init__(self, trainer: DistributedTrainer):
        super().__init__()
        self.flow = trainer.gen.flow
        self._trainer = [trainer]  # a list: not a submodule

    def forward(self, stage_index: int, step_in_stage: int):
        return self._trainer[0]._local_objective(stage_index, step_in_stage)


class DistributedTrainer(Trainer):
    """`Trainer` whose batches are cut into fixed shards, shared among the ranks of a torchrun job.

    Parameters
    ----------
    generator, data, stages, seed, rc, checkpoint, checkpoint_every, metrics, progress
        As for `Trainer`. Only rank 0 writes ``checkpoint`` and ``metrics`` and shows progress.
    shards : int
        Shards of every ML and KL batch (>= the number of ranks, <= every batch size). Results
        depend on it, not on the number of ranks.
    timeout_s : float
        Collective timeout (s) when this call joins the process group (see
        `openmm_bg.distributed.init_distributed`); a process group joined before keeps its own.

    Notes
    -----
    Under ``torchrun`` (``WORLD_SIZE > 1``) the process group is joined here if it is not yet
    (backend ``gloo`` on CPUs, ``nccl`` on GPUs). Move the generator to
    ``rank_info().device`` before (the command line does), and give it the rank's energy
    (``energy_for(system, **energy_options())``) where the default is not wanted.

    Raises
    ------
    ValueError
        As `Trainer`; and ``shards`` fewer than the ranks, or a batch smaller than ``shards``.
    """

    def __init__(self, generator: BoltzmannGenerator, data, stages: Sequence[Stage] | None = None, seed: int = 0,
                 rc: str | ReactionCoordinate | None = None, checkpoint: str | os.PathLike | None = None,
                 checkpoint_every: int = 100, metrics: str | os.PathLike | None = None, progress: bool = True,
                 shards: int = DEFAULT_SHARDS, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__(generator, data, stages, seed=seed, rc=rc, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, metrics=metrics, progress=progress)
        self.info: RankInfo = init_distributed(timeout_s)
        self.timeout_s = float(timeout_s)
        self.shards = check_shards(shards, self.info.world_size)
        for stage in self.stages:
            sizes = {"batch_size": min(stage.batch_size, len(self.v_data)) if stage.ml > 0 else None,
                     "kl_batch_size": (stage.kl_batch_size or stage.batch_size)
                     if (stage.kl > 0 or stage.kl_end or stage.rc > 0) else None}
            for name, size in sizes.items():
                if size is not None and size < self.shards:
                    raise ValueError(f"Stage {stage.name!r}: {name}={size} (rows per step) is smaller than shards="
                                     f"{self.shards}: give batches of at least one row per shard, or fewer shards")
        self.progress = bool(progress) and self.info.is_main
        self._local_shards = shards_of_rank(self.info.rank, self.info.world_size, self.shards)
        self._module: nn.Module | None = None
        self._stats: torch.Tensor | None = None

    def describe(self) -> str:
        """One line on how the run is spread, e.g. ``"training on 2 ranks (backend gloo), 8 shards per batch"``."""
        r = self.info.world_size
        where = f"{r} ranks (backend {self.info.backend})" if r > 1 else "1 rank (one process)"
        return f"training on {where}, {self.shards} shards per batch"

    # ------------------------------------------------------------------ one step
    def _objective(self) -> nn.Module:
        if self._module is None:
            module = _ShardObjective(self)
            if self.info.distributed:
                device_ids = [self.info.local_rank] if self.gen.device.type == "cuda" else None
                ddp = nn.parallel.DistributedDataParallel
                # the flow's buffers are constants: synced once at construction, not at every step
                quiet = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                         else {"broadcast_buffers": False})
                module = ddp(module, device_ids=device_ids, **quiet)
            self._module = module
        return self._module

    def _batch_sizes(self, stage: Stage, w_kl: float) -> tuple[int, int]:
        b_ml = min(stage.batch_size, len(self.v_data)) if stage.ml > 0 else 0
        b_kl = (stage.kl_batch_size or stage.batch_size) if (w_kl > 0 or stage.rc > 0) else 0
        return b_ml, b_kl

    def _local_objective(self, k: int, i: int) -> torch.Tensor:
        """This rank's shards of the step: the objective whose gradient, averaged over ranks, is the global one;
        fills ``self._stats`` ``[shards, 7]`` (zeros for other ranks' shards)."""
        gen, stage = self.gen, self.stages[k]
        w_kl = stage.kl_weight(i)
        b_ml, b_kl = self._batch_sizes(stage, w_kl)
        ml_sizes, kl_sizes = shard_sizes(b_ml, self.shards), shard_sizes(b_kl, self.shards)
        t = gen.training_temperature if stage.temperature is None else stage.temperature
        scale = float(self.info.world_size)  # DDP averages the ranks' gradients
        params = list(gen.flow.parameters())
        objective = 0.0 * sum(p.sum() for p in params).to(torch.float64)  # every parameter in the graph
        stats = torch.zeros(self.shards, _STATS, dtype=torch.float64)
        for s in self._local_shards:
            if b_ml:
                rng = torch.Generator(device=gen.device).manual_seed(stream_seed(self.seed, ML_STREAM, self.step, s))
                idx = torch.randint(0, len(self.v_data), (ml_sizes[s],), generator=rng, device=gen.device)
                ml_sum = ml_loss(gen, self.v_data[idx]).to(torch.float64) * ml_sizes[s]
                objective = objective + scale * stage.ml / b_ml * ml_sum
                stats[s, 0] = ml_sum.item()
            if b_kl:
                rng = torch.Generator(device=gen.device).manual_seed(stream_seed(self.seed, KL_STREAM, self.step, s))
                z = gen.sample_latent(kl_sizes[s], rng, t)
                kl, proposal, info = kl_loss(gen, z, t, self._reference(), stage.energy_high, stage.energy_max,
                                             stage.chirality_weight)
                n = kl_sizes[s]
                if w_kl > 0:
                    objective = objective + scale * w_kl / b_kl * kl * n
                if stage.rc > 0:
                    rcl = rc_loss(proposal.x, proposal.ok, self.rc)
                    objective = objective + scale * stage.rc / b_kl * rcl * n
                    stats[s, 2] = rcl.item() * n
                valid = n - info["out_of_domain"]
                has_u = math.isfinite(info["u_mean"]) and valid > 0
                stats[s, 1] = kl.item() * n
                stats[s, 3:] = torch.tensor([info["u_mean"] * valid if has_u else 0.0, valid if has_u else 0,
                                             info["out_of_domain"], info["inverted"]], dtype=torch.float64)
        self._stats = stats
        return objective

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.info.distributed:
            device = self.info.device
            values = values.to(device)
            torch.distributed.all_reduce(values)  # each entry has one rank's value, the others add exact zeros
            values = values.cpu()
        return values

    def _step(self, k: int, stage: Stage, i: int) -> dict:
        opt, w_kl, row = self._start_step(k, stage, i)
        b_ml, b_kl = self._batch_sizes(stage, w_kl)
        objective = self._objective()(k, i)
        sums = self._all_reduce(self._stats).sum(0)  # in shard order: the same on every rank and for any R
        loss = 0.0
        if b_ml:
            row["ml"] = float(sums[0]) / b_ml
            loss += stage.ml * row["ml"]
        if b_kl:
            self.energy_evaluations += b_kl
            row.update(u_mean=float(sums[3] / sums[4]) if sums[4] > 0 else math.inf,
                       out_of_domain=int(sums[5]), inverted=int(sums[6]))
            if w_kl > 0:
                row["kl"] = float(sums[1]) / b_kl
                loss += w_kl * row["kl"]
            if stage.rc > 0:
                row["rc"] = float(sums[2]) / b_kl
                loss += stage.rc * row["rc"]
        row["loss"] = loss
        # finite or not, the same decision on every rank: no rank starts a backward (a DDP all-reduce) alone
        return self._apply_gradients(opt, stage, row, objective.backward)

    # ------------------------------------------------------------------ loop and files
    def fit(self, resume: bool = False) -> list[dict]:
        """Run (or, with ``resume``, continue from rank 0's checkpoint) the schedule on every rank.

        Raises
        ------
        RuntimeError
            On a multi-rank run, any failure (e.g. a collective that timed out because another rank
            died), naming this rank, the step and the checkpoint to resume from.
        """
        if resume and self.checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        if self.info.is_main:
            logger.info(self.describe())
        try:
            if resume:
                state = self._shared_checkpoint()
                if state is not None:
                    self._apply_state(state, self.checkpoint)
            return super().fit(resume=False)
        except Exception as err:
            if not self.info.distributed:
                raise
            where = (f"; run the same torchrun (or srun) command again to resume from {self.checkpoint}"
                     if self.checkpoint else "")
            raise RuntimeError(f"rank {self.info.rank} of {self.info.world_size} stopped at step {self.step}: "
                               f"{one_line(err)} (if another rank died or hung, collectives fail after "
                               f"{self.timeout_s:g} s){where}") from err

    def _shared_checkpoint(self) -> dict | None:
        """Rank 0's checked checkpoint state (None if there is none), broadcast to every rank; its error on all."""
        payload = None
        if self.info.is_main:
            try:
                payload = self.read_checkpoint(self.checkpoint) if self.checkpoint.is_file() else None
            except Exception as err:  # every rank raises it, none waits for a broadcast that never comes
                payload = err
        if self.info.distributed:
            box = [payload]
            torch.distributed.broadcast_object_list(box, src=0, device=self.info.device)
            payload = box[0]
        if isinstance(payload, Exception):
            raise payload
        return payload

    def state(self) -> dict:
        """`Trainer.state` plus the number of ranks that wrote it (for information: resume with any)."""
        return {**super().state(), "world_size": self.info.world_size}

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Rank 0 writes the checkpoint atomically (see `Trainer.save_checkpoint`); other ranks do nothing."""
        if self.info.is_main:
            super().save_checkpoint(path)

    def write_metrics(self, path: str | os.PathLike) -> None:
        """Rank 0 writes the metrics; other ranks do nothing (their history is the same)."""
        if self.info.is_main:
            super().write_metrics(path)
