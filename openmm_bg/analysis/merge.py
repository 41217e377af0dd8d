"""Merging sample sets drawn as shards (by the ranks of a job, or one after another) into one set.

A sample set of ``n`` is cut into a fixed number of shards, each drawn from its own random stream
(`openmm_bg.model.sharded.sample_shards`). `as_shard` marks a drawn set as shard ``k`` of ``K``;
`merge_samples` concatenates shards in shard order, so the union is the same set whichever ranks
drew which shards, and ESS, Delta A and profiles over it equal those of one process drawing the
same streams.

Weights: plain samples carry absolute log weights ``-u - log q`` (one proposal ``q``): the union
is their concatenation. Annealed (SMC) shards carry unnormalised final weights relative to their
own last resampling, and their own ``log Z-hat_k``. `as_shard` shifts a shard's log weights by a
constant so that their log mean is ``log Z-hat_k`` (the shift is recorded); then the union's
self-normalised weights give each shard the share ``n_k Z-hat_k / sum_j n_j Z-hat_j`` and the merged
normaliser is ``log(sum_k n_k Z-hat_k / n)``, the particle-weighted mean of the shards' normalisers
(``logsumexp_k log Z-hat_k - log K`` for equal shards), still unbiased for a fixed schedule.
Resampling is per shard: lineages never cross shards (ancestor indices are offset to rows of the
union).

Examples
--------
>>> import numpy as np
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> parts = [as_shard(Samples(dw, np.zeros((2, 1, 3)), np.zeros(2), np.zeros(2)), k, 2, run_seed=0) for k in (1, 0)]
>>> merged = merge_samples(parts)
>>> len(merged), [r["shard"] for r in merged.provenance["shards"]]
(4, [0, 1])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

from .samples import Samples

__all__ = ["as_shard", "merge_samples", "merge_sample_files", "shard_indices"]

#: Provenance entries that every shard of one set must share.
_SHARED = ("kind", "generator", "temperature", "training_temperature", "space", "anneal", "anneal_overrides", "seed",
           "n_shards")
#: Annealed provenance counts that add up over shards.
_COUNTS = ("n_resampling", "n_energy_evaluations", "n_energy_force_evaluations", "n_distinct_ancestors")


def _log_mean_exp(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return -math.inf
    top = finite.max()
    return float(top + np.log(np.exp(finite - top).sum()) - np.log(values.size))


def shard_indices(samples: Samples) -> list[int]:
    """The shard numbers a set holds (``[]`` for a set that is not marked as shards)."""
    return [int(r["shard"]) for r in samples.provenance.get("shards", [])]


def as_shard(samples: Samples, shard: int, n_shards: int, run_seed: int | None = None) -> Samples:
    """``samples`` marked as shard ``shard`` of ``n_shards`` of a run seeded with ``run_seed``, ready to merge.

    The shard's own seed (that of its stream, ``samples.provenance["seed"]``) is kept in its record;
    the merged provenance's ``seed`` is ``run_seed``.

    Annealed sets (with a ``log_normalizer``) get their log weights shifted by
    ``log Z-hat - log mean w`` (recorded as ``log_weight_offset``; the raw weights are the stored ones
    minus it); plain sets are unchanged.

    Raises
    ------
    ValueError
        ``shard`` not in ``[0, n_shards)``, or a set that already holds shards.
    """
    if not (isinstance(n_shards, int) and n_shards >= 1 and isinstance(shard, int) and 0 <= shard < n_shards):
        raise ValueError(f"shard must be an integer in [0, n_shards) and n_shards >= 1, got shard={shard!r}, "
                         f"n_shards={n_shards!r}")
    if "shards" in samples.provenance:
        raise ValueError(f"this set already holds shards {shard_indices(samples)}; merge it with merge_samples")
    log_w, offset = samples.log_weights, 0.0
    if samples.log_normalizer is not None:
        mean = _log_mean_exp(log_w)
        offset = samples.log_normalizer - mean if math.isfinite(mean) else 0.0
        log_w = log_w + offset
    own = dict(samples.provenance)
    record = {"shard": shard, "n": len(samples), "seed": own.get("seed"), "log_normalizer": samples.log_normalizer,
              "log_weight_offset": offset, "provenance": own}
    provenance = {k: own[k] for k in _SHARED if k in own}
    provenance.update(seed=run_seed, n_shards=n_shards, shards=[record])
    if isinstance(own.get("anneal"), dict):  # the annealer's seed is the shard's own stream (kept in the record)
        provenance["anneal"] = {**own["anneal"], "seed": None}
    if own.get("kind") == "annealed":
        provenance.update({k: own.get(k, 0) for k in _COUNTS}, n_levels=own.get("n_levels"))
    plain = own.get("kind") == "plain"
    return Samples(samples.system, samples.positions, samples.energies, samples.log_prob, samples.temperature,
                   samples.rejected, log_weights=None if plain else log_w, log_normalizer=samples.log_normalizer,
                   ancestors=samples.ancestors, provenance=provenance)


def _check_compatible(sets: Sequence[Samples]) -> None:
    first = sets[0]
    for k, s in enumerate(sets):
        if not isinstance(s, Samples) or "shards" not in s.provenance:
            raise ValueError(f"sets[{k}] is not a set of shards (mark a drawn set with as_shard, or draw it with "
                             "sample_shards / `openmm-bg sample --shards`)")
        if s.positions.shape[1:] != first.positions.shape[1:] or s.system.name != first.system.name:
            raise ValueError(f"sets[{k}] is of another system ({s.system.name!r}, {s.positions.shape[1]} atoms) "
                             f"than sets[0] ({first.system.name!r}, {first.positions.shape[1]} atoms)")
        for key in _SHARED:
            if s.provenance.get(key) != first.provenance.get(key):
                raise ValueError(f"sets[{k}] was drawn with another {key!r} ({s.provenance.get(key)!r}) than sets[0] "
                                 f"({first.provenance.get(key)!r}): only shards of one run can be merged")
    seen: dict[int, int] = {}
    for k, s in enumerate(sets):
        for shard in shard_indices(s):
            if shard in seen:
                raise ValueError(f"shard {shard} is in sets[{seen[shard]}] and sets[{k}]: each shard may be "
                                 "merged once (the same stream twice would count its samples twice)")
            seen[shard] = k


def merge_samples(sets: Sequence[Samples]) -> Samples:
    """One set from shard sets (`as_shard`, `sample_shards`, or earlier merges), in shard order.

    Parameters
    ----------
    sets : sequence of Samples
        Shards of one run: same system, generator, temperature, kind, base seed and shard count;
        no shard twice. Missing shards are allowed (the union of the rest is a valid, smaller set;
        ``provenance["shards"]`` lists those present).

    Returns
    -------
    Samples
        Rows in shard order; plain: the same log weights; annealed: the (shifted, see the module
        notes) log weights, ancestors offset to rows of the union, and the merged
        ``log_normalizer = log(sum_k n_k Z-hat_k / n)``.

    Raises
    ------
    ValueError
        No sets, a set that is not marked as shards, sets of different runs, or a shard twice.
    """
    sets = list(sets)
    if not sets:
        raise ValueError("give at least one set of samples to merge")
    _check_compatible(sets)
    sets.sort(key=lambda s: min(shard_indices(s)))
    records = sorted((r for s in sets for r in s.provenance["shards"]), key=lambda r: r["shard"])
    first = sets[0]
    plain = first.provenance.get("kind") == "plain"
    ancestors, log_normalizer = None, None
    if not plain and all(s.ancestors is not None for s in sets):
        starts = np.cumsum([0] + [len(s) for s in sets[:-1]])
        ancestors = np.concatenate([s.ancestors + start for s, start in zip(sets, starts, strict=True)])
    normalizers = [r["log_normalizer"] for r in records]
    if not plain and all(z is not None for z in normalizers):
        terms = np.array([z + math.log(r["n"]) for z, r in zip(normalizers, records, strict=True)])
        top = terms.max()
        log_normalizer = float(top + np.log(np.exp(terms - top).sum()) - math.log(sum(r["n"] for r in records)))
    provenance = {k: first.provenance[k] for k in _SHARED if k in first.provenance}
    provenance["shards"] = records
    if first.provenance.get("kind") == "annealed":
        provenance.update({k: sum(s.provenance.get(k, 0) or 0 for s in sets) for k in _COUNTS})
        levels = [s.provenance.get("n_levels") for s in sets if s.provenance.get("n_levels") is not None]
        provenance["n_levels"] = max(levels) if levels else None
    return Samples(first.system, np.concatenate([s.positions for s in sets]),
                   np.concatenate([s.energies for s in sets]), np.concatenate([s.log_prob for s in sets]),
                   first.temperature, np.concatenate([s.rejected for s in sets]),
                   log_weights=None if plain else np.concatenate([s.log_weights for s in sets]),
                   log_normalizer=log_normalizer, ancestors=ancestors, provenance=provenance)


def merge_sample_files(paths: Sequence[str | os.PathLike], system) -> Samples:
    """`merge_samples` of the sets saved in ``paths`` (`Samples.save`, one file per rank) for ``system``."""
    if isinstance(paths, str | os.PathLike) or not paths:
        raise ValueError("paths must be a non-empty list of samples files (one per rank)")
    sets = [Samples.load(p, system) for p in paths]
    try:
        return merge_samples(sets)
    except ValueError as err:
        names = ", ".join(str(p) for p in paths)
        raise ValueError(f"cannot merge {names}: {err}") from None
