"""Ranks, process groups and random streams for running on several processes (torch.distributed).

A job started by ``torchrun`` (or ``srun`` with the same environment variables) has one process
per rank; ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` say which one this
is. `rank_info` reads them (a plain process is rank 0 of 1), `init_distributed` joins the
process group with a timeout on every collective (backend ``nccl`` when the ranks have GPUs,
``gloo`` otherwise), and `stream_seed` keys every random stream by ``(seed, stream, step,
shard)``: work is cut into a *fixed* number of shards, each drawn from its own stream, so that
the result does not depend on how many ranks share the shards (`shard_sizes`, `shards_of_rank`).

`energy_options` is the one hook that gives a rank its energy resources: the GPU of its local
rank (``DeviceIndex``, used where OpenMM's CUDA platform is chosen) and its share of the node's
cores as energy worker processes.

Examples
--------
>>> info = rank_info({})  # a plain process
>>> info.rank, info.world_size, info.distributed
(0, 1, False)
>>> shard_sizes(10, 4), shards_of_rank(1, 2, 4)
([3, 3, 2, 2], [2, 3])
>>> stream_seed(0, ML_STREAM, 5, 2) == stream_seed(0, ML_STREAM, 5, 2) != stream_seed(0, ML_STREAM, 5, 3)
True
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from . import _validation as check

__all__ = ["RankInfo", "rank_info", "init_distributed", "close_distributed", "choose_backend", "stream_seed",
           "shard_sizes", "shards_of_rank", "check_shards", "energy_options", "DEFAULT_SHARDS",
           "DEFAULT_TIMEOUT_S", "ML_STREAM", "KL_STREAM", "SAMPLE_STREAM", "FAB_STREAM"]

#: Shards of a training batch or a sample set unless the caller says otherwise (at most this many ranks).
DEFAULT_SHARDS = 8
#: Seconds a collective waits for the other ranks before it fails (a dead or hung rank ends the job).
DEFAULT_TIMEOUT_S = 300.0
#: Stream keys of `stream_seed`: ML batch indices, KL/RC latent points, sample shards, FAB annealing and replay.
ML_STREAM, KL_STREAM, SAMPLE_STREAM, FAB_STREAM = 1, 2, 3, 4


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a (possibly one-process) job.

    Attributes
    ----------
    rank, world_size : int
        This process's rank and the number of ranks.
    local_rank, local_world_size : int
        Its rank on this node and the number of ranks on this node.
    backend : str or None
        ``"gloo"`` or ``"nccl"`` once the process group is joined; None in a plain process.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    backend: str | None = None

    @property
    def distributed(self) -> bool:
        """More than one rank."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The torch device of this rank: its local GPU with the ``nccl`` backend, else the CPU."""
        if self.backend == "nccl":
            return torch.device("cuda", self.local_rank)
        return torch.device("cpu")

    def describe(self) -> str:
        """One line, e.g. ``"rank 0 of 2 (backend gloo, cpu)"``."""
        backend = self.backend or "none: one process"
        return f"rank {self.rank} of {self.world_size} (backend {backend}, {self.device})"


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    text = env.get(key)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {key}={text!r} is not an integer; torchrun and srun set it "
                         "to one") from None


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo:
    """This process's rank from ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` (torchrun's).

    The backend is that of the joined process group (None before `init_distributed`).

    Raises
    ------
    ValueError
        A variable that is not an integer, or a rank outside ``[0, WORLD_SIZE)``.
    """
    env = os.environ if env is None else env
    world = _env_int(env, "WORLD_SIZE", 1)
    rank = _env_int(env, "RANK", 0)
    local_rank = _env_int(env, "LOCAL_RANK", rank)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local_rank < max(local_world, 1):
        raise ValueError(f"inconsistent rank variables: RANK={rank}, WORLD_SIZE={world}, LOCAL_RANK={local_rank}, "
                         f"LOCAL_WORLD_SIZE={local_world}")
    dist = torch.distributed
    backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
    return RankInfo(rank, world, local_rank, max(local_world, 1), backend)


def choose_backend() -> str:
    """``"nccl"`` where torch sees a CUDA GPU and NCCL is built in, else ``"gloo"``."""
    if torch.cuda.is_available() and torch.distributed.is_nccl_available():
        return "nccl"
    return "gloo"


def init_distributed(timeout_s: float = DEFAULT_TIMEOUT_S, backend: str | None = None) -> RankInfo:
    """Join the process group of a multi-rank job (no-op for a plain process); returns `rank_info`.

    Parameters
    ----------
    timeout_s : float
        Seconds every collective waits for the other ranks before it raises: a rank that died or
        hangs ends the job instead of blocking it (torchrun then stops the other ranks and names
        the failed one).
    backend : {"gloo", "nccl"}, optional
        Default `choose_backend`. With ``nccl`` this process's GPU is its local rank's.

    Raises
    ------
    ValueError
        ``timeout_s`` not positive, an unknown backend, or inconsistent rank variables.
    RuntimeError
        torch.distributed is not available in this build of torch.
    """
    timeout_s = check.positive("timeout_s", timeout_s, "s")
    if backend is not None and backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo', 'nccl' or None (automatic), got {backend!r}")
    info = rank_info()
    if not info.distributed:
        return info
    dist = torch.distributed
    if not dist.is_available():
        raise RuntimeError("this build of torch has no torch.distributed: run on one process")
    if not dist.is_initialized():
        backend = backend or choose_backend()
        if backend == "nccl":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    return rank_info()


def close_distributed() -> None:
    """Leave the process group, if joined (after a barrier, so no rank leaves while others still talk)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def stream_seed(seed: int, *keys: int) -> int:
    """A seed in ``[0, 2**63)`` for the random stream keyed by ``(seed, *keys)`` (e.g. stream, step, shard).

    Different keys give independent streams (`numpy.random.SeedSequence` hashing); the same keys
    give the same seed on every rank and in every run.
    """
    seed = check.non_negative_int("seed", seed)
    entropy = [seed, *(check.non_negative_int("key", k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def shard_sizes(n: int, n_shards: int) -> list[int]:
    """``n`` items cut into ``n_shards`` shards as even as possible, the larger ones first."""
    n, n_shards = check.non_negative_int("n", n), check.positive_int("n_shards", n_shards)
    return [n // n_shards + (k < n % n_shards) for k in range(n_shards)]


def shards_of_rank(rank: int, world_size: int, n_shards: int) -> list[int]:
    """The shards rank ``rank`` of ``world_size`` works on: a contiguous block, in order.

    Raises
    ------
    ValueError
        More ranks than shards (some rank would have nothing to do).
    """
    check_shards(n_shards, world_size)
    lo, hi = rank * n_shards // world_size, (rank + 1) * n_shards // world_size
    return list(range(lo, hi))


def check_shards(n_shards, world_size: int) -> int:
    """``n_shards`` checked: an integer >= 1 and >= the number of ranks."""
    n_shards = check.positive_int("shards", n_shards)
    if n_shards < world_size:
        raise ValueError(f"shards={n_shards} is fewer than the {world_size} ranks: give at least one shard per "
                         f"rank (--shards {world_size} or more; keep the same number to reproduce a run)")
    return n_shards


def energy_options(info: RankInfo | None = None) -> dict:
    """Options of `openmm_bg.energy.energy_for` that give this rank its own energy resources.

    ``device="cuda:K"`` (K = local rank modulo the visible GPUs: OpenMM's CUDA platform on that GPU,
    see `openmm_bg.energy.devices`) where OpenMM has a CUDA platform and torch sees GPUs, and
    ``n_workers`` = the node's usable cores / its ranks (at least 1).

    Examples
    --------
    >>> energy_options(RankInfo(0, 2, 0, 2))["n_workers"] >= 1
    True
    """
    info = rank_info() if info is None else info
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options: dict = {"n_workers": max(1, cores // info.local_world_size)}
    if torch.cuda.is_available():
        import openmm

        names = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
        if "CUDA" in names:
            # the energy layer's device (openmm_bg.energy.devices): OpenMM's CUDA platform on this GPU
            options["device"] = f"cuda:{info.local_rank % torch.cuda.device_count()}"
            options["n_workers"] = 1  # one context on the rank's GPU
    return options
