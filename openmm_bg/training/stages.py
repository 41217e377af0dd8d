"""Training schedules: `Stage` (one stage of losses, steps, learning rate) and the default schedule.

Examples
--------
>>> from openmm_bg.training import default_stages
>>> [(s.name, s.steps) for s in default_stages(scale=0.1)]
[('ml', 150), ('kl', 300)]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

__all__ = ["Stage", "default_stages", "load_stages"]


@dataclass
class Stage:
    """One stage of a training schedule.

    Parameters
    ----------
    name : str
        Label in metrics and progress bars.
    steps : int
        Optimiser steps.
    ml, kl, rc : float
        Loss weights. ``kl_end`` makes the KL weight rise linearly from ``kl`` to ``kl_end``.
    kl_end : float, optional
        Final KL weight of a linear ramp.
    lr : float
        Adam learning rate.
    lr_end : float, optional
        Final learning rate of a cosine decay from ``lr`` over the stage (default: constant ``lr``).
    batch_size : int
        Data frames per ML batch.
    kl_batch_size : int, optional
        Prior samples per KL/RC batch (default ``batch_size``).
    temperature : float, optional
        K at which the KL term is taken (default the generator's training temperature).
    energy_high, energy_max : float
        Lin-log cut of the KL energies, in kT above the reference energy (see
        `openmm_bg.energy.linlogcut`).
    chirality_weight : float
        Weight of the penalty on inverted stereocentres in the KL term.
    clip_grad : float
        Maximal gradient norm.
    """

    name: str
    steps: int
    ml: float = 1.0
    kl: float = 0.0
    rc: float = 0.0
    kl_end: float | None = None
    lr: float = 1e-3
    lr_end: float | None = None
    batch_size: int = 256
    kl_batch_size: int | None = None
    temperature: float | None = None
    energy_high: float = 1e3
    energy_max: float = 1e9
    chirality_weight: float = 10.0
    clip_grad: float = 100.0

    def kl_weight(self, step_in_stage: int) -> float:
        """KL weight at a step of this stage (linear ramp if ``kl_end`` is set)."""
        if self.kl_end is None or self.steps <= 1:
            return self.kl
        return self.kl + (self.kl_end - self.kl) * step_in_stage / (self.steps - 1)

    def learning_rate(self, step_in_stage: int) -> float:
        """Learning rate at a step of this stage (cosine decay to ``lr_end`` if it is set)."""
        if self.lr_end is None or self.steps <= 1:
            return self.lr
        progress = step_in_stage / (self.steps - 1)
        return self.lr_end + 0.5 * (self.lr - self.lr_end) * (1.0 + math.cos(math.pi * progress))


def default_stages(scale: float = 1.0, kl_scale: float | None = None) -> list[Stage]:
    """The standard schedule: ML pre-training, then KL-dominated training with a small ML term.

    ML: 1500 steps, learning rate 5e-4 decaying (cosine) to 5e-5 -- longer or faster ML training
    overfits a few thousand correlated MD frames and makes the generator too cold. KL: 3000 steps of
    ``KL + 0.1 ML`` (the ML term keeps rare states of the data in the proposal), learning rate
    3e-4 decaying to 1e-5. Measured on alanine dipeptide (``benchmarks/README.md``).

    Parameters
    ----------
    scale : float
        Multiplies the step counts of both stages.
    kl_scale : float, optional
        Multiplies the KL stage's step count instead (default ``scale``). Longer is not always
        better: KL seeks modes, and on alanine dipeptide 6000 KL steps drained the rare C7ax basin
        that 3000 kept.
    """
    kl_scale = scale if kl_scale is None else kl_scale
    return [Stage("ml", steps=max(1, int(1500 * scale)), lr=5e-4, lr_end=5e-5),
            Stage("kl", steps=max(1, int(3000 * kl_scale)), ml=0.1, kl=1.0, lr=3e-4, lr_end=1e-5,
                  kl_batch_size=256)]


def load_stages(path: str | os.PathLike) -> list[Stage]:
    """Read stages from a TOML file with ``[[stage]]`` tables (keys as `Stage`'s fields)."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"stage config not found: {str(path)!r}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    stages = config.get("stage")
    if not stages:
        raise ValueError(f"{path}: no [[stage]] tables found")
    fields = set(Stage.__dataclass_fields__)
    out = []
    for k, table in enumerate(stages):
        unknown = set(table) - fields
        if unknown:
            raise ValueError(f"{path}: stage {k + 1} has unknown keys {sorted(unknown)}; allowed: {sorted(fields)}")
        out.append(Stage(**{"name": f"stage{k + 1}", **table}))
    return out
