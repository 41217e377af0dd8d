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
stops and the best weights are restored.

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
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _validation as check

__all__ = ["time_block_split", "held_out_nll", "EarlyStopping", "DEFAULT_VALIDATION_FRACTION",
           "DEFAULT_VALIDATION_BLOCKS"]

#: Fraction of the frames the adaptive recipe holds out.
DEFAULT_VALIDATION_FRACTION = 0.2
#: Contiguous blocks the trajectory is cut into for the split.
DEFAULT_VALIDATION_BLOCKS = 25


def time_block_split(n_frames: int, fraction: float = DEFAULT_VALIDATION_FRACTION,
                     n_blocks: int = DEFAULT_VALIDATION_BLOCKS) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out frame indices: whole contiguous time blocks held out, spread evenly.

    Parameters
    ----------
    n_frames : int
        Frames of the trajectory, in time order (>= 2 x ``n_blocks`` is not required, but every
        block needs at least one frame: ``n_frames >= n_blocks``).
    fraction : float
        Share of the blocks held out, in (0, 1); at least one block is held out and one kept.
    n_blocks : int
        Contiguous blocks of (nearly) equal length, >= 2.

    Returns
    -------
    train, held_out : numpy.ndarray
        Sorted int64 frame indices; disjoint, together ``0 .. n_frames - 1``.

    Raises
    ------
    ValueError
        ``fraction`` outside (0, 1), ``n_blocks < 2`` or fewer frames than blocks.
    """
    n_frames = check.positive_int("n_frames", n_frames)
    n_blocks = check.positive_int("n_blocks", n_blocks)
    fraction = check.number("fraction", fraction)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction (the held-out share) must lie in (0, 1), got {fraction!r}")
    if n_blocks < 2:
        raise ValueError(f"n_blocks must be >= 2 (one to train on, one to hold out), got {n_blocks}")
    if n_frames < n_blocks:
        raise ValueError(f"{n_frames} frames cannot be cut into n_blocks={n_blocks} time blocks; give more "
                         "frames or fewer blocks")
    n_held = min(n_blocks - 1, max(1, round(fraction * n_blocks)))
    # evenly spread, distinct (spacing n_blocks / n_held >= 1): blocks 2 and 7 of 10, block 5 alone
    chosen = np.floor((np.arange(n_held) + 0.5) * n_blocks / n_held).astype(int)
    blocks = np.array_split(np.arange(n_frames, dtype=np.int64), n_blocks)
    held = np.zeros(n_frames, dtype=bool)
    for b in chosen:
        held[blocks[b]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


@torch.no_grad()
def held_out_nll(flow, v: torch.Tensor, batch_size: int = 4096) -> tuple[float, float]:
    """Mean negative log-likelihood of held-out frames ``v [n, n_dof]`` (flow space) and its standard error.

    Returns ``(mean, standard error)`` in nats per frame, float; ``inf`` if a frame is out of the
    flow's domain (never dropped).
    """
    values = torch.cat([-flow.log_prob(chunk).to(torch.float64) for chunk in v.split(batch_size)])
    if not bool(torch.isfinite(values).all()):
        return math.inf, math.inf
    n = values.numel()
    se = float(values.std() / math.sqrt(n)) if n > 1 else math.inf
    return float(values.mean()), se


class EarlyStopping:
    """Stop when the held-out NLL has not improved by more than ``min_delta`` for ``patience`` checks.

    Parameters
    ----------
    patience : int
        Checks without improvement before stopping (>= 1).
    min_delta : float
        Improvement (nats) that counts (>= 0).

    Attributes
    ----------
    best : float
        Best value seen (``inf`` before the first).
    best_step : int
        Step of the best value (-1 before the first).
    bad_checks : int
        Checks since the last improvement.
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        self.patience = check.positive_int("patience", patience)
        self.min_delta = check.non_negative("min_delta", min_delta)
        self.best, self.best_step, self.bad_checks = math.inf, -1, 0

    def update(self, value: float, step: int) -> bool:
        """Record a check; True when the stage should stop now."""
        if value < self.best - self.min_delta:
            self.best, self.best_step, self.bad_checks = float(value), int(step), 0
            return False
        self.bad_checks += 1
        return self.bad_checks >= self.patience

    def improved_at(self, step: int) -> bool:
        """Whether the best value was recorded at ``step``."""
        return self.best_step == step

    def state_dict(self) -> dict:
        return {"best": self.best, "best_step": self.best_step, "bad_checks": self.bad_checks}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_step, self.bad_checks = state["best"], state["best_step"], state["bad_checks"]
