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
checkpoint resumes only with the same number of shards, but with any number of ranks.

The adaptive recipe shards the same way. A FAB stage keeps one replay buffer *per shard*: shard
``k``'s annealing run (``1/shards`` of the particles, latent start points and kernel noise from
the ``(seed, FAB_STREAM, t, k)`` streams, its own kernel step size) fills shard ``k``'s buffer,
its replay batch is drawn from that buffer alone, and its FAB term is the mean NLL of its batch,
weighted by its share of the particles. The ranks owning a shard hold its buffer; checkpoints
gather every shard's buffer to rank 0, and a resumed run (with any number of ranks) takes the
buffers of its shards from the broadcast checkpoint. Held-out NLL checks (early stopping, the ML
weight of ``ml_auto``) are computed on rank 0 and broadcast, so that every rank stops, restores
the best weights and sets the ML weight alike.
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
    FAB_STREAM,
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
from .fab import ReplayBuffer
from .losses import kl_loss, ml_loss, rc_loss
from .stages import Stage
from .trainer import FAB_BUFFER_RUNS, FAB_REFRESH, Trainer

__all__ = ["DistributedTrainer"]

logger = logging.getLogger(__name__)

#: Per-shard sums that the ranks add up: ML, KL, RC (times rows), u (times rows), rows with u, out of domain,
#: inverted; then of FAB: the term (times the shard's share), replay rows, annealing runs, ESS (particles), levels,
#: last-level jumps, failed runs, energy evaluations, kernel step size after the run.
_STATS = 16
(_FAB, _FAB_ROWS, _FAB_RUNS, _FAB_ESS, _FAB_LEVELS, _FAB_JUMP, _FAB_FAILED, _FAB_EVALS, _FAB_STEP) = range(7, 16)


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
    generator, data, stages, seed, rc, checkpoint, checkpoint_every, metrics, progress, recipe, validation, origins
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
                 shards: int = DEFAULT_SHARDS, timeout_s: float = DEFAULT_TIMEOUT_S, recipe: str = "classic",
                 validation: float | None = None, origins=None):
        super().__init__(generator, data, stages, seed=seed, rc=rc, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, metrics=metrics, progress=progress, recipe=recipe,
                         validation=validation, origins=origins)
        if self.by_group:
            raise ValueError("by_group (held-out checks judged per cluster) is not supported by DistributedTrainer "
                             "yet: each rank would judge its own per-frame NLLs; use the plain Trainer or "
                             "by_group=False")
        self.info: RankInfo = init_distributed(timeout_s)
        self.timeout_s = float(timeout_s)
        self.shards = check_shards(shards, self.info.world_size)
        for stage in self.stages:
            sizes = {"batch_size": min(stage.batch_size, len(self.v_data)) if stage.ml > 0 else None,
                     "kl_batch_size": (stage.kl_batch_size or stage.batch_size)
                     if (stage.kl > 0 or stage.kl_end or stage.rc > 0 or stage.fab > 0) else None}
            for name, size in sizes.items():
                if size is not None and size < self.shards:
                    raise ValueError(f"Stage {stage.name!r}: {name}={size} (rows per step) is smaller than shards="
                                     f"{self.shards}: give batches of at least one row per shard, or fewer shards")
        self.progress = bool(progress) and self.info.is_main
        self._local_shards = shards_of_rank(self.info.rank, self.info.world_size, self.shards)
        self._module: nn.Module | None = None
        self._stats: torch.Tensor | None = None
        # FAB: the replay buffers of this rank's shards (all shards' after a checkpoint) and every shard's step size
        self._shard_buffers: dict[int, ReplayBuffer] = {}
        self._shard_step_sizes = [self._fab_step_size] * self.shards
        self._fab_drawn: list[tuple[int, torch.Tensor, torch.Tensor]] = []

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
        stats = self._stats  # the step's, with the FAB refreshes in it (`_step`)
        w_ml = self._ml_weight_of(k, stage)
        fab_sizes = shard_sizes(self._fab_particles(stage), self.shards)
        self._fab_drawn = []
        for s in self._local_shards:
            if b_ml:
                rng = torch.Generator(device=gen.device).manual_seed(stream_seed(self.seed, ML_STREAM, self.step, s))
                idx = torch.randint(0, len(self.v_data), (ml_sizes[s],), generator=rng, device=gen.device)
                ml_sum = ml_loss(gen, self.v_data[idx]).to(torch.float64) * ml_sizes[s]
                objective = objective + scale * w_ml / b_ml * ml_sum
                stats[s, 0] = ml_sum.item()
            if stage.fab > 0 and s in self._shard_buffers:
                rng = torch.Generator().manual_seed(stream_seed(self.seed, FAB_STREAM, self.step, s, 2))
                index, log_q = self._fab_draw(self._shard_buffers[s], fab_sizes[s], rng)
                if index is not None:
                    share = fab_sizes[s] / sum(fab_sizes)
                    fab = -share * log_q.to(torch.float64).mean()
                    objective = objective + scale * stage.fab * fab
                    stats[s, _FAB], stats[s, _FAB_ROWS] = fab.item(), index.numel()
                    self._fab_drawn.append((s, index, log_q.detach()))
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
                stats[s, 3:7] = torch.tensor([info["u_mean"] * valid if has_u else 0.0, valid if has_u else 0,
                                             info["out_of_domain"], info["inverted"]], dtype=torch.float64)
        return objective

    def _held_out_nll(self, v: torch.Tensor) -> tuple[float, float]:
        """Rank 0's held-out NLL and standard error, broadcast: every rank takes the same decisions."""
        if not self.info.distributed:
            return super()._held_out_nll(v)
        values = torch.zeros(2, dtype=torch.float64)
        if self.info.is_main:
            values = torch.tensor(super()._held_out_nll(v), dtype=torch.float64)
        values = values.to(self.info.device)
        torch.distributed.broadcast(values, src=0)
        val, se = values.cpu().tolist()
        return val, se

    def _all_reduce(self, values: torch.Tensor) -> torch.Tensor:
        if self.info.distributed:
            device = self.info.device
            values = values.to(device)
            torch.distributed.all_reduce(values)  # each entry has one rank's value, the others add exact zeros
            values = values.cpu()
        return values

    def _fab_particles(self, stage: Stage) -> int:
        return (stage.kl_batch_size or stage.batch_size) if stage.fab > 0 else 0

    def _fab_refresh_shards(self, stage: Stage, i: int) -> None:
        """Annealing runs of this rank's shards that are due (every `FAB_REFRESH` steps, or an empty buffer)."""
        gen = self.gen
        sizes = shard_sizes(self._fab_particles(stage), self.shards)
        t = gen.training_temperature if stage.temperature is None else stage.temperature
        for s in self._local_shards:
            buffer = self._shard_buffers.setdefault(s, ReplayBuffer(FAB_BUFFER_RUNS * sizes[s], gen.n_dof))
            if i % FAB_REFRESH != 0 and len(buffer) > 0:
                continue
            rng = torch.Generator(device=gen.device).manual_seed(stream_seed(self.seed, FAB_STREAM, self.step, s, 0))
            with torch.no_grad():
                z0 = gen.sample_latent(sizes[s], rng, t).to(torch.float64)
            info = self._fab_anneal(stage, z0, stream_seed(self.seed, FAB_STREAM, self.step, s, 1),
                                    self._shard_step_sizes[s], buffer)
            self._stats[s, _FAB_RUNS:] = torch.tensor(
                [1.0, info.get("fab_ess", 0.0) * sizes[s], info.get("fab_levels", 0), info.get("fab_jump", 0),
                 info.get("fab_failed", 0), info["energy_evaluations"], info.get("step_size", 0.0)],
                dtype=torch.float64)

    def _step(self, k: int, stage: Stage, i: int) -> dict:
        opt, w_kl, row = self._start_step(k, stage, i)
        b_ml, b_kl = self._batch_sizes(stage, w_kl)
        self._stats = torch.zeros(self.shards, _STATS, dtype=torch.float64)
        if stage.fab > 0:  # before the DDP forward: annealing runs take no parameter gradients
            self._fab_refresh_shards(stage, i)
        objective = self._objective()(k, i)
        per_shard = self._all_reduce(self._stats)  # each row from the rank owning that shard
        sums = per_shard.sum(0)  # in shard order: the same on every rank and for any R
        loss = 0.0
        w_ml = self._ml_weight_of(k, stage)
        if stage.ml_auto:
            row["w_ml"] = w_ml
        if b_ml:
            row["ml"] = float(sums[0]) / b_ml
            loss += w_ml * row["ml"]
        if stage.fab > 0:
            self._fab_row(stage, per_shard, sums, row)
            if sums[_FAB_ROWS] > 0:
                row["fab"] = float(sums[_FAB])
                loss += stage.fab * row["fab"]
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
        row = self._apply_gradients(opt, stage, row, objective.backward)
        if not row["skipped"]:  # p^2/q moved with q: log w += log q_old - log q_new, in each shard's buffer
            for s, index, log_q in self._fab_drawn:
                self._shard_buffers[s].adjust(index, log_q)
        self._fab_drawn = []
        return row

    def _fab_row(self, stage: Stage, per_shard: torch.Tensor, sums: torch.Tensor, row: dict) -> None:
        """The step's FAB annealing metrics (as `Trainer`'s, over the shards that annealed) and step sizes."""
        runs = per_shard[:, _FAB_RUNS] > 0
        if not bool(runs.any()):
            return
        self.energy_evaluations += int(sums[_FAB_EVALS])
        for s in torch.nonzero(runs & (per_shard[:, _FAB_FAILED] == 0)).flatten().tolist():
            self._shard_step_sizes[s] = float(per_shard[s, _FAB_STEP])
        if sums[_FAB_FAILED] > 0:
            row["fab_failed"] = int(sums[_FAB_FAILED])
        if sums[_FAB_FAILED] < sums[_FAB_RUNS]:
            sizes = shard_sizes(self._fab_particles(stage), self.shards)
            particles = sum(sizes[s] for s in torch.nonzero(runs).flatten().tolist())
            row.update(fab_ess=float(sums[_FAB_ESS]) / particles, fab_levels=int(per_shard[:, _FAB_LEVELS].max()),
                       fab_jump=int(per_shard[:, _FAB_JUMP].max()))

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
        """`Trainer.state` plus the number of ranks that wrote it (for information: resume with any), and
        the FAB replay buffers of the shards this rank holds (every shard's on rank 0 at a checkpoint) with
        every shard's kernel step size."""
        state = {**super().state(), "world_size": self.info.world_size}
        state["shard_fab"] = {"step_sizes": list(self._shard_step_sizes),
                              "buffers": {s: (b.capacity, b.state_dict())
                                          for s, b in sorted(self._shard_buffers.items())}}
        return state

    def _gather_buffers(self) -> None:
        """Every shard's replay buffer onto every rank (a collective: all ranks call it)."""
        if not self.info.distributed:
            return
        mine = {s: (b.capacity, b.state_dict()) for s, b in self._shard_buffers.items() if s in self._local_shards}
        parts: list = [None] * self.info.world_size
        torch.distributed.all_gather_object(parts, mine)
        for part in parts:
            for s, (capacity, buffer) in part.items():
                if s not in self._local_shards:
                    self._shard_buffers[s] = self._restored_buffer(capacity, buffer)

    def _restored_buffer(self, capacity: int, buffer: dict) -> ReplayBuffer:
        restored = ReplayBuffer(capacity, self.gen.n_dof)
        restored.load_state_dict({key: value.to(self.gen.device) for key, value in buffer.items()})
        return restored

    def _apply_state(self, state: dict, path: str | os.PathLike) -> None:
        """`Trainer._apply_state`, then every shard's FAB buffer and step size (with any number of ranks)."""
        super()._apply_state(state, path)
        fab = state.get("shard_fab") or {"step_sizes": [self._fab_step_size] * self.shards, "buffers": {}}
        self._shard_step_sizes = list(fab["step_sizes"])
        self._shard_buffers = {s: self._restored_buffer(capacity, buffer)
                               for s, (capacity, buffer) in fab["buffers"].items()}

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Rank 0 writes the checkpoint atomically (see `Trainer.save_checkpoint`) with every shard's replay
        buffer, gathered from the ranks first (all ranks call this); other ranks write nothing."""
        self._gather_buffers()
        if self.info.is_main:
            super().save_checkpoint(path)

    def write_metrics(self, path: str | os.PathLike) -> None:
        """Rank 0 writes the metrics; other ranks do nothing (their history is the same)."""
        if self.info.is_main:
            super().write_metrics(path)
