"""Sharded sampling: every rank of a job draws its shards of a sample set from its own streams.

A set of ``n`` samples is cut into ``shards`` shards (`openmm_bg.distributed.shard_sizes`); shard
``k`` is ``generator.sample(n_k, seed=stream_seed(seed, SAMPLE_STREAM, k))``, plain or annealed.
Rank ``r`` of ``R`` draws the contiguous block `openmm_bg.distributed.shards_of_rank` and returns
them merged (`openmm_bg.analysis.merge.merge_samples`); merging the ranks' sets (files, one per
rank: `part_path`) gives exactly the set one process drawing all shards gets, for any ``R <=
shards``. Annealed shards are annealed (and resampled) on their own: resampling never crosses
shards or ranks, and the merged normaliser is the particle-weighted mean of the shards'.

Examples
--------
>>> # dw_gen: a small generator of the double well (conftest.py)
>>> one = sample_shards(dw_gen, 40, seed=1, shards=4)  # one process, all four shards
>>> half = [sample_shards(dw_gen, 40, seed=1, shards=4, rank=r, world_size=2) for r in (0, 1)]
>>> from openmm_bg.analysis.merge import merge_samples
>>> bool((merge_samples(half).log_weights == one.log_weights).all()), len(one)
(True, 40)
"""

from __future__ import annotations

import os
from pathlib import Path

from .._validation import non_negative_int, positive_int
from ..analysis.merge import as_shard, merge_samples
from ..analysis.samples import Samples
from ..distributed import (
    DEFAULT_SHARDS,
    SAMPLE_STREAM,
    check_shards,
    rank_info,
    shard_sizes,
    shards_of_rank,
    stream_seed,
)

__all__ = ["sample_shards", "part_path", "shard_seed"]


def shard_seed(seed: int, shard: int) -> int:
    """The seed of shard ``shard``'s stream in a sharded set seeded with ``seed``."""
    return stream_seed(seed, SAMPLE_STREAM, shard)


def part_path(output: str | os.PathLike, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` writes its part of ``output``: ``NAME.rank{r}of{R}.npz``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.rank{rank}of{world_size}.npz")


def sample_shards(generator, n: int, seed: int = 0, shards: int = DEFAULT_SHARDS, rank: int | None = None,
                  world_size: int | None = None, **options) -> Samples:
    """This rank's shards of a sharded sample set of ``n``, merged (all shards in a plain process).

    Parameters
    ----------
    generator : BoltzmannGenerator
    n : int
        Samples (annealed: particles) of the whole set, >= ``shards``.
    seed : int
        Seed of the whole set; shard ``k`` draws from `shard_seed` ``(seed, k)``.
    shards : int
        Shards of the set (>= ranks); keep it fixed to get the same set with any number of ranks.
    rank, world_size : int, optional
        Default: this process's (`openmm_bg.distributed.rank_info`).
    **options
        Passed to `BoltzmannGenerator.sample` (``temperature``, ``batch_size``, ``anneal``,
        ``threads``, ``progress``).

    Returns
    -------
    Samples
        The shards of this rank, in order, marked for `openmm_bg.analysis.merge.merge_samples`.

    Raises
    ------
    ValueError
        ``n`` < ``shards``, fewer shards than ranks, a rank outside ``[0, world_size)``, or an
        option `BoltzmannGenerator.sample` refuses (``seed`` is this function's).
    """
    if "seed" in options:
        raise ValueError("give the seed of the whole set as seed=...; shard seeds are derived from it")
    info = rank_info()
    rank = info.rank if rank is None else non_negative_int("rank", rank)
    world_size = info.world_size if world_size is None else positive_int("world_size", world_size)
    if rank >= world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    n, seed, shards = positive_int("n", n), non_negative_int("seed", seed), check_shards(shards, world_size)
    if n < shards:
        raise ValueError(f"n={n} samples cannot fill {shards} shards: give n >= shards (or fewer --shards)")
    sizes = shard_sizes(n, shards)
    parts = [as_shard(generator.sample(sizes[k], seed=shard_seed(seed, k), **options), k, shards, run_seed=seed)
             for k in shards_of_rank(rank, world_size, shards)]
    return merge_samples(parts)
