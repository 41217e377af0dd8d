"""Held-out validation for training: a split by contiguous time blocks, the held-out NLL, early stopping.

Consecutive MD frames are correlated: a frame held out at random has its neighbours in the
training set, so its likelihood is nearly a training likelihood and the held-out NLL is
optimistic (it keeps falling while the flow overfits). `time_block_split` therefore cuts the
trajectory into ``n_blocks`` contiguous blocks (default 25, each 4 % of the data) and holds out
whole blocks, spread evenly over the trajectory, so that data merged from several runs, one after
another, has held-out blocks in several of them (with 10 blocks, a run holding the last 20 % of
the frames, e.g. the only one in a rare basin, got none, and early stopping then judged the flow
on the main basin alone).

`EarlyStopping` watches the held-out NLL: a check that does not improve on the best by more than
``min_delta`` counts against ``patience``; when ``patience`` checks in a row have failed, the stage
stops and the best weights are restored. Given the training NLL too, a check counts only when the
flow overfits: no improvement *and* a generalisation gap (held-out minus training NLL) wider than
at the best check by more than the tolerance. A plateau, where both NLLs stand still (the flow
has not yet found a rare state of the data: on `openmm_bg.systems.toy.rare_banana` at a 4 % data
share the held-out NLL stood still for ~500 ML steps), then does not end the stage.

Rare parts of the data need held-out frames too: evenly spread blocks miss a basin that holds 4 %
of the frames in one stretch (rare-state data merged after the main run), and early stopping then
judges the flow on the main basin alone. `validation_split` therefore holds out blocks *within*
each part of the data: within each MD start when the frames' origins are known
(`openmm_bg.md.simulate_starts` records them), otherwise within each cluster of the data
(`openmm_bg.analysis.coverage`, the clusters of the coverage table) that holds at least
`MIN_CLUSTER_SHARE` of the frames (`cluster_block_split`: short contiguous time units, each
labelled by the cluster most of its frames are in; whole units are held out, so correlated
neighbours never straddle the split inside a unit).

Examples
--------
>>> train, held_out = time_block_split(100, fraction=0.2, n_blocks=10)
>>> len(train), len(held_out), held_out[:3].tolist(), bool(set(train).isdisjoint(held_out))
(80, 20, [20, 21, 22], True)
>>> stop = EarlyStopping(patience=2, min_delta=0.0)
>>> [stop.update(v, step) for step, v in enumerate([5.0, 4.0, 4.5, 4.2])]
[False, False, False, True]
>>> stop.best, stop.best_step
(4.0, 1)
>>> origins = np.repeat([0, 1], [90, 10])  # a long run, then a short one in a rare basin
>>> train, held_out = time_block_split(100, fraction=0.2, n_blocks=10, groups=origins)
>>> len(held_out), int((held_out >= 90).sum())  # the short run has held-out frames too
(20, 2)
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .. import _validation as check

__all__ = ["time_block_split", "cluster_block_split", "validation_split", "ValidationSplit", "data_origins",
           "held_out_nll", "frame_nll", "mean_nll", "EarlyStopping", "GroupNLL", "MIN_GROUP_FRAMES",
           "DEFAULT_VALIDATION_FRACTION", "DEFAULT_VALIDATION_BLOCKS", "MIN_CLUSTER_SHARE"]

#: Fraction of the frames the adaptive recipe holds out.
DEFAULT_VALIDATION_FRACTION = 0.2
#: Contiguous blocks the trajectory is cut into for the split.
DEFAULT_VALIDATION_BLOCKS = 25
#: Clusters holding at least this share of the frames get held-out blocks of their own.
MIN_CLUSTER_SHARE = 0.01
#: Groups of held-out frames with at least this many frames are judged on their own by `EarlyStopping`.
MIN_GROUP_FRAMES = 5


def _checked_split_options(fraction, n_blocks) -> tuple[float, int]:
    n_blocks = check.positive_int("n_blocks", n_blocks)
    fraction = check.number("fraction", fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction (the held-out share) must lie in (0, 1), got {fraction!r}")
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be >= 2 (one to train on, one to hold out), got {n_blocks}")
    return fraction, n_blocks


def _checked_labels(name: str, labels, n_frames: int | None = None) -> np.ndarray:
    raw = np.asarray(labels)
    if raw.ndim != 1 or len(raw) == 0 or (n_frames is not None and len(raw) != n_frames):
        want = "one per frame" if n_frames is None else f"one per frame ({n_frames})"
        raise ValueError(f"{name} must be a 1D array of integer labels, {want}; got shape {raw.shape}")
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"{name} must hold integer labels (e.g. the start index of each frame), got {raw.dtype}")
    return raw.astype(np.int64)


def _held_units(sizes: np.ndarray, groups: np.ndarray, fraction: float, n_blocks: int) -> np.ndarray:
    """``bool [n_units]``: whole units held out, ``fraction`` of each group's frames in evenly spread blocks.

    A group of ``n_g`` frames (its units in time order) counts as ``b`` blocks: its share of the
    ``n_blocks`` blocks, at least ``ceil(1 / fraction)`` (so that a small group has a held-out
    block of about ``fraction`` of it) and at most its units. It is cut into ``h = round(fraction
    b)`` (>= 1, < b) equal segments and the middle ``fraction`` of each segment is held out: ``h``
    blocks of ``n_g / b`` frames, evenly spread. A group with one unit is trained on.
    """
    held = np.zeros(len(sizes), dtype=bool)
    n_frames = int(sizes.sum())
    at_least = math.ceil(1.0 / fraction - 1e-9)
    for g in np.unique(groups):
        units = np.flatnonzero(groups == g)
        n_g = int(sizes[units].sum())
        b = min(n_blocks, len(units), max(at_least, round(n_g * n_blocks / n_frames)))
        if b < 2:
            continue
        n_held = min(b - 1, max(1, round(fraction * b)))
        segment = n_g / n_held
        middle = np.cumsum(sizes[units]) - sizes[units] / 2  # frame position of each unit's centre
        offset = np.mod(middle, segment) - (1 - fraction) * segment / 2
        held[units] = (offset >= 0) & (offset < fraction * segment)
    return held


def time_block_split(n_frames: int, fraction: float = DEFAULT_VALIDATION_FRACTION,
                     n_blocks: int = DEFAULT_VALIDATION_BLOCKS, groups=None) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out frame indices: whole contiguous time blocks held out, spread evenly.

    Parameters
    ----------
    n_frames : int
        Frames of the trajectory, in time order (every block needs at least one frame:
        ``n_frames >= n_blocks``).
    fraction : float
        Share of the blocks held out, in (0, 1); at least one block is held out and one kept.
    n_blocks : int
        Contiguous blocks of (nearly) equal length, >= 2.
    groups : array-like of int, optional
        ``[n_frames]``: the run each frame comes from (e.g. its MD start,
        `openmm_bg.md.read_origins`). Each run's frames, in their order, are split on their own:
        cut into its share of the ``n_blocks`` blocks (at least ``ceil(1 / fraction)``, at most its
        frames) and ``fraction`` of them held out, so that a short run (one in a rare basin) has
        held-out frames too. Without ``groups`` the whole trajectory is one run.

    Returns
    -------
    train, held_out : numpy.ndarray
        Sorted int64 frame indices; disjoint, together ``0 .. n_frames - 1``.

    Raises
    ------
    ValueError
        ``fraction`` outside (0, 1), ``n_blocks < 2``, fewer frames than blocks, or ``groups``
        not one integer per frame.
    """
    n_frames = check.positive_int("n_frames", n_frames)
    fraction, n_blocks = _checked_split_options(fraction, n_blocks)
    if n_frames < n_blocks:
        raise ValueError(f"{n_frames} frames cannot be cut into n_blocks={n_blocks} time blocks; give more "
                         "frames or fewer blocks")
    groups = np.zeros(n_frames, dtype=np.int64) if groups is None else _checked_labels("groups", groups, n_frames)
    held = _held_units(np.ones(n_frames, dtype=np.int64), groups, fraction, n_blocks)
    return np.flatnonzero(~held), np.flatnonzero(held)


def cluster_block_split(labels, fraction: float = DEFAULT_VALIDATION_FRACTION,
                        n_blocks: int = DEFAULT_VALIDATION_BLOCKS,
                        min_share: float = MIN_CLUSTER_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Held-out time blocks with every cluster of ``>= min_share`` of the frames represented in proportion.

    Starts from `time_block_split` (evenly spread blocks). A cluster whose held-out share is then
    below ``fraction / 2`` or above ``2 fraction`` (it sits in a few stretches of the trajectory
    that the blocks miss or swallow) is split again on its own, smallest cluster first: the
    trajectory is cut into contiguous units of ``L`` frames (``L`` gives the cluster
    ``2 ceil(1 / fraction)`` units; at most ``n_frames / n_blocks``); the units most of whose frames
    are in the cluster are released from the first split, and ``fraction`` of them are held out in
    evenly spread blocks of whole units (`time_block_split`'s rule for one run). Clusters that the
    first split represents keep its blocks, so frames of clusters that alternate quickly are not
    cut into short pieces.

    Parameters
    ----------
    labels : array-like of int
        ``[n_frames]``: the cluster of each frame, in time order (``-1``: none).
    fraction, n_blocks : float, int
        As in `time_block_split`.
    min_share : float
        Clusters holding at least this share of the frames are checked, in [0, 1).

    Returns
    -------
    train, held_out : numpy.ndarray
        Sorted int64 frame indices; disjoint, together ``0 .. n_frames - 1``.

    Examples
    --------
    >>> labels = np.repeat([0, 1], [960, 40])  # a rare cluster in the last 4 % of the frames
    >>> train, held_out = cluster_block_split(labels)
    >>> len(held_out), int((held_out >= 960).sum())
    (208, 8)
    """
    labels = _checked_labels("labels", labels)
    fraction, n_blocks = _checked_split_options(fraction, n_blocks)
    min_share = check.number("min_share", min_share)
    if not 0.0 <= min_share < 1.0:
        raise ValueError(f"min_share must lie in [0, 1), got {min_share!r}")
    n = len(labels)
    held = np.zeros(n, dtype=bool)
    held[time_block_split(n, fraction, n_blocks)[1]] = True
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    at_least = math.ceil(1.0 / fraction - 1e-9)
    for k, n_k in sorted(zip(ids, counts), key=lambda item: item[1]):
        mine = labels == k
        if n_k < max(min_share * n, 1) or fraction / 2 <= held[mine].mean() <= 2 * fraction:
            continue
        length = max(1, min(n // n_blocks, int(n_k) // (2 * at_least)))
        starts = np.arange(0, n, length)
        sizes = np.diff(np.append(starts, n))
        own = np.flatnonzero(2 * np.add.reduceat(mine.astype(np.int64), starts) > sizes)
        if len(own) < 2:
            continue
        in_own = np.zeros(len(starts), dtype=bool)
        in_own[own] = True
        unit_of = np.repeat(np.arange(len(starts)), sizes)
        held[in_own[unit_of]] = False
        chosen = np.zeros(len(starts), dtype=bool)
        chosen[own] = _held_units(sizes[own], np.zeros(len(own), dtype=np.int64), fraction, n_blocks)
        held[chosen[unit_of]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


@dataclass(frozen=True)
class ValidationSplit:
    """The training and held-out frames of a run, and how they were chosen.

    Attributes
    ----------
    train, held_out : numpy.ndarray
        Sorted int64 frame indices.
    method : str
        ``"origins"`` (blocks within each MD start), ``"clusters"`` (`cluster_block_split`) or
        ``"time blocks"`` (one run, nothing to stratify on).
    n_groups : int
        Starts or clusters split on their own (1 for ``"time blocks"``).
    held_out_groups : numpy.ndarray or None
        ``int64 [len(held_out)]``: the start or cluster of each held-out frame (`EarlyStopping`'s
        ``groups``); None for ``"time blocks"``.
    """

    train: np.ndarray
    held_out: np.ndarray
    method: str
    n_groups: int
    held_out_groups: np.ndarray | None = None

    @property
    def digest(self) -> str:
        """Short SHA-256 of the held-out indices (a resumed run must hold out the same frames)."""
        return hashlib.sha256(np.ascontiguousarray(self.held_out, dtype=np.int64).tobytes()).hexdigest()[:16]

    def describe(self) -> str:
        """One line for the user."""
        n = len(self.train) + len(self.held_out)
        where = {"origins": f"within each of {self.n_groups} MD starts",
                 "clusters": f"stratified by {self.n_groups} clusters of the data",
                 "time blocks": "spread over the trajectory"}[self.method]
        return f"held out {len(self.held_out)} of {n} frames as contiguous time blocks {where}"


def _joint_labels(member: np.ndarray, partitions) -> np.ndarray:
    """One label per frame from ``bool [n_clusters, n]`` membership (several partitions: their combination)."""
    columns = []
    for p in dict.fromkeys(partitions):
        rows = np.flatnonzero(np.asarray(partitions) == p)
        sub = member[rows]
        columns.append(np.where(sub.any(0), sub.argmax(0), -1))
    return np.unique(np.stack(columns, 1), axis=0, return_inverse=True)[1].reshape(-1).astype(np.int64)


def validation_split(system, frames, fraction: float = DEFAULT_VALIDATION_FRACTION, origins=None,
                     reference=None, n_blocks: int = DEFAULT_VALIDATION_BLOCKS) -> ValidationSplit:
    """The held-out time blocks of a training run: within each MD start, else within each cluster of the data.

    Parameters
    ----------
    system : MolecularSystem
    frames : numpy.ndarray
        Training frames ``[n, n_atoms, 3]`` (nm), in time order.
    fraction : float
        Held-out share, in (0, 1).
    origins : array-like of int, optional
        ``[n]``: each frame's MD start (`openmm_bg.md.read_origins`); used when it names more than
        one start.
    reference : CoverageReference or dict, optional
        Clustering of the data (a generator's ``coverage_reference``); default: clustered here
        (`openmm_bg.analysis.coverage.coverage_reference`). Used without ``origins``; a system with
        nothing to cluster on falls back to plain time blocks.
    n_blocks : int
        Blocks of the whole trajectory (each start or cluster gets its share).

    Examples
    --------
    >>> from openmm_bg.systems.toy import rare_banana, rare_banana_samples
    >>> split = validation_split(rare_banana(), rare_banana_samples(1000, rare_fraction=0.04))
    >>> print(split.describe())
    held out 208 of 1000 frames as contiguous time blocks stratified by 3 clusters of the data
    """
    from ..analysis.coverage import CoverageReference, coverage_reference

    x = np.asarray(frames.xyz if hasattr(frames, "xyz") else frames, dtype=np.float64)
    if origins is not None:
        origins = _checked_labels("origins", origins, len(x))
        if len(np.unique(origins)) > 1:
            train, held = time_block_split(len(x), fraction, n_blocks, groups=origins)
            return ValidationSplit(train, held, "origins", len(np.unique(origins)), origins[held])
    try:
        if reference is None:
            reference = coverage_reference(system, x)
        elif isinstance(reference, dict):
            reference = CoverageReference.from_dict(reference)
        labels = _joint_labels(reference.membership(system, x), reference.partitions)
    except ValueError:  # nothing to cluster on (no backbone, no torsions)
        labels = np.zeros(len(x), dtype=np.int64)
    counts = np.bincount(labels)
    n_strata = int((counts >= max(MIN_CLUSTER_SHARE * len(x), 1)).sum())
    if n_strata < 2:
        train, held = time_block_split(len(x), fraction, n_blocks)
        return ValidationSplit(train, held, "time blocks", 1)
    train, held = cluster_block_split(labels, fraction, n_blocks)
    return ValidationSplit(train, held, "clusters", n_strata, labels[held])


def data_origins(data, origins=None) -> np.ndarray | None:
    """The MD start of each frame: ``origins``, else those recorded beside a data file, else None.

    ``data`` may be anything `openmm_bg.training.Trainer` takes; only a path can have an origins
    file beside it (`openmm_bg.md.multistart.origins_path`, written by ``simulate_starts``).
    """
    if origins is not None or not isinstance(data, str | os.PathLike):
        return origins
    from ..md.multistart import origins_path, read_origins

    return read_origins(data)[0] if origins_path(data).is_file() else None


@torch.no_grad()
def frame_nll(flow, v: torch.Tensor, batch_size: int = 4096) -> np.ndarray:
    """NLL of each frame ``v [n, n_dof]`` (flow space): float64 ``[n]``, nats; ``inf`` out of domain."""
    if len(v) == 0:
        return np.zeros(0)
    return torch.cat([-flow.log_prob(chunk).to(torch.float64) for chunk in v.split(batch_size)]).cpu().numpy()


def mean_nll(values: np.ndarray) -> tuple[float, float]:
    """``(mean, standard error)`` of per-frame NLLs (`frame_nll`); ``inf`` if one is out of domain (never dropped)."""
    n = len(values)
    if not np.isfinite(values).all():
        return math.inf, math.inf
    se = float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    return float(values.mean()), se


def held_out_nll(flow, v: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean negative log-likelihood of held-out frames ``v [n, n_dof]`` (flow space) and its standard error.

    Returns ``(mean, standard error)`` in nats per frame, float; ``inf`` if a frame is out of the
    flow's domain (never dropped).
    """
    return mean_nll(frame_nll(flow, v, batch_size))


class EarlyStopping:
    """Stop when the held-out NLL has not improved by more than ``min_delta`` for ``patience`` checks.

    With ``groups`` (the cluster or MD start of each held-out frame, `ValidationSplit.held_out_groups`)
    and the per-frame NLLs at each check, the best check is chosen so that no group loses what it
    gained: a check becomes the best when its excess (`GroupNLL`: how far the worst group's held-out
    NLL lies above that group's own best, beyond two paired standard errors) is smaller than the best
    check's (both judged against the groups' bests so far), or equal and its total held-out NLL lower
    by more than ``min_delta``. With one well-populated group this
    is the plain rule. It matters when one part of the data is still being learned while another
    overfits (`openmm_bg.systems.toy.rare_banana`, rare state at 4 % of the data, seed 2: the best
    check by the total held-out NLL came before the rare frames' NLL fell by 1 nat, and restoring
    it lost the rare state).

    Parameters
    ----------
    patience : int
        Checks without improvement before stopping (>= 1).
    min_delta : float
        Improvement (nats) that counts (>= 0).
    groups : array-like of int, optional
        ``[n_held_out]``: the group of each held-out frame; then `update` takes ``frames``.

    Attributes
    ----------
    best : float
        Total held-out NLL at the best check (``inf`` before the first).
    best_step : int
        Step of the best check (-1 before the first).
    bad_checks : int
        Checks since the last improvement.

    Examples
    --------
    >>> stop = EarlyStopping(patience=3, groups=[0, 0, 0, 0, 1, 1])
    >>> first = np.array([1.0, 1.1, 0.9, 1.0, 9.0, 9.2])
    >>> later = first + [0.1, 0.12, 0.09, 0.11, -2.0, -2.1]  # main group a little worse, rare group much better
    >>> stop.update(float(first.mean()), 0, frames=first), stop.update(float(later.mean()), 1, frames=later)
    (False, False)
    >>> stop.best_step  # the later check: restoring the first would undo the rare group's progress
    1
    """

    def __init__(self, patience: int, min_delta: float = 0.0, groups=None):
        self.patience = check.positive_int("patience", patience)
        self.min_delta = check.non_negative("min_delta", min_delta)
        self.best, self.best_step, self.bad_checks = math.inf, -1, 0
        self.gap_at_best = math.nan
        self._groups = None if groups is None else GroupNLL(groups)
        self._best_frames: np.ndarray | None = None

    def update(self, value: float, step: int, train: float | None = None, tolerance: float = 0.0,
               frames=None) -> bool:
        """Record a check; True when the stage should stop now.

        With ``train`` (the training NLL at this check, nats) a check without improvement counts
        against ``patience`` only when the gap ``value - train`` exceeds the gap at the best check
        by more than ``tolerance`` (nats; e.g. the held-out NLL's standard error): overfitting,
        not a plateau. With ``groups``, ``frames`` (float ``[n_held_out]``, the NLL of each
        held-out frame, nats; `frame_nll`) is required and the best check is chosen by the
        per-group rule (class docstring).

        Examples
        --------
        >>> stop = EarlyStopping(patience=1)
        >>> stop.update(3.0, 0, train=2.9), stop.update(3.0, 1, train=2.9)  # a plateau: no stop
        (False, False)
        >>> stop.update(3.1, 2, train=2.5)  # held-out worse, training better: overfitting
        True
        """
        gap = math.nan if train is None else float(value) - float(train)
        if self._groups is None:
            improved = value < self.best - self.min_delta
        else:
            frames = self._groups.add(frames, "EarlyStopping with groups")
            excess = self._groups.excess(frames)
            best_excess = math.inf if self._best_frames is None else self._groups.excess(self._best_frames)
            improved = excess < best_excess or (excess == best_excess and value < self.best - self.min_delta)
        if improved:
            self.best, self.best_step, self.bad_checks = float(value), int(step), 0
            self.gap_at_best = gap
            if self._groups is not None:
                self._best_frames = frames
            return False
        if train is not None and math.isfinite(self.gap_at_best) and not gap > self.gap_at_best + tolerance:
            return False  # a plateau (or the gap narrowed): not overfitting
        self.bad_checks += 1
        return self.bad_checks >= self.patience

    def improved_at(self, step: int) -> bool:
        """Whether the best value was recorded at ``step``."""
        return self.best_step == step

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_checks": self.bad_checks,
                "gap_at_best": self.gap_at_best, "checks": None if self._groups is None else self._groups.state_dict(),
                "best_frames": None if self._best_frames is None else self._best_frames.copy()}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad_checks = state["best"], state["best_step"], state["bad_checks"]
        self.gap_at_best = state.get("gap_at_best", math.nan)  # checkpoints of older versions: no gap
        if self._groups is not None and state.get("checks") is not None:
            self._groups.load_state_dict(state["checks"])
        self._best_frames = state.get("best_frames")


class GroupNLL:
    """The held-out NLL of each group of frames (clusters, MD starts) over a stage's checks; how far a check lags.

    A check's *excess* (nats per frame, >= 0) is the largest, over the groups of at least
    `MIN_GROUP_FRAMES` held-out frames, of its mean NLL over the group's frames minus that at the
    group's own best check so far, less two standard errors of this paired difference (frame by
    frame, so the spread between frames cancels): 0 when no group is measurably worse than it has
    been. `EarlyStopping` (the best check) and `Stage.ml_auto` (the ML weight) use it.

    Parameters
    ----------
    groups : array-like of int
        ``[n_held_out]``: the group of each held-out frame (`ValidationSplit.held_out_groups`).

    Examples
    --------
    >>> record = GroupNLL([0] * 5 + [1] * 5)
    >>> first = record.add(np.array([1.0, 1.2, 0.8, 1.1, 0.9, 8.0, 8.5, 7.5, 8.2, 7.8]))
    >>> later = record.add(first + np.repeat([0.0, 2.0], 5))  # the second group 2 nats worse
    >>> record.excess(first), round(record.excess(later), 3)
    (0.0, 2.0)
    """

    def __init__(self, groups):
        groups = _checked_labels("groups", groups)
        ids, counts = np.unique(groups, return_counts=True)
        self._members = [np.flatnonzero(groups == g) for g in ids[counts >= MIN_GROUP_FRAMES]]
        self.n_frames = len(groups)
        self._checks: list[np.ndarray] = []  # per-frame NLLs of every finite check

    def add(self, frames, who: str = "GroupNLL") -> np.ndarray:
        """Record a check's per-frame NLLs (float ``[n_held_out]``, nats; `frame_nll`); returns them as float64."""
        frames = None if frames is None else np.asarray(frames, dtype=np.float64)
        if frames is None or frames.shape != (self.n_frames,):
            raise ValueError(f"{who} needs frames, the NLL of each of the {self.n_frames} held-out frames, "
                             f"got {None if frames is None else frames.shape}")
        if np.isfinite(frames).all():
            self._checks.append(frames)
        return frames

    def excess(self, frames: np.ndarray) -> float:
        """The check's excess (class docstring); ``inf`` if a frame is out of the flow's domain."""
        if not np.isfinite(frames).all():
            return math.inf
        worst = 0.0
        for members in self._members:
            own_best = min(self._checks, key=lambda c: float(c[members].mean()))
            d = frames[members] - own_best[members]
            worst = max(worst, float(d.mean() - 2.0 * d.std(ddof=1) / math.sqrt(len(d))))
        return worst

    def state_dict(self) -> list[np.ndarray]:
        return [c.copy() for c in self._checks]

    def load_state_dict(self, checks) -> None:
        self._checks = [np.asarray(c, dtype=np.float64) for c in checks]
