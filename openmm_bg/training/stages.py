"""Training schedules: `Stage` (one stage of losses, steps, learning rate) and the default schedule.

Examples
--------
>>> from openmm_bg.training import default_stages
>>> [(s.name, s.steps) for s in default_stages(scale=0.1)]
[('ml', 150), ('kl', 300)]
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, fields

from .. import _validation as check

__all__ = ["Stage", "default_stages", "adaptive_stages", "load_stages", "RECIPES"]

#: Training recipes: ``"classic"`` (`default_stages`) and ``"adaptive"`` (`adaptive_stages`).
RECIPES = ("classic", "adaptive")


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
        Maximal gradient norm (``math.inf``: no clipping).
    fab : float
        Weight of the FAB loss (alpha = 2 divergence estimated by annealing towards ``p^2 / q``
        with a replay buffer, `openmm_bg.training.fab`); ``kl_batch_size`` particles per annealing
        run, one run every `FAB_REFRESH` steps.
    fab_levels : int
        Most annealing levels of a FAB run (>= 1).
    patience : int, optional
        Early stopping: end the stage after this many checks at which the flow overfits (the
        held-out NLL has not improved on its best and its gap to the training NLL has widened
        since the best check by more than the held-out NLL's standard error; a plateau does not
        count; never in the first fifth of the stage), and restore the weights of the best check,
        also at the stage's natural end (default: no early stopping).
    validate_every : int
        Steps between held-out NLL checks (when ``patience`` or ``ml_auto`` needs them), >= 1.
    ml_auto : bool
        Set the ML weight from held-out data: starting at ``ml``, doubled (up to 10) whenever the
        held-out NLL exceeds its best value of the run by more than its tolerance, halved (down to
        0.01) when it is back within half of it (see `Trainer`).

    Raises
    ------
    ValueError
        A field out of its range, named with the range: ``steps``, ``batch_size`` and
        ``kl_batch_size`` integers >= 1; ``ml``, ``kl``, ``kl_end``, ``rc``, ``lr_end`` and
        ``chirality_weight`` >= 0 and finite; ``lr`` > 0; ``temperature`` positive and finite (K);
        ``energy_high`` finite and ``energy_max >= energy_high``; ``clip_grad`` > 0; ``fab`` >= 0;
        ``fab_levels``, ``patience`` and ``validate_every`` integers >= 1; and a stage whose loss
        weights are all 0 (it would train nothing).

    Examples
    --------
    >>> Stage("ml", steps=0)
    Traceback (most recent call last):
    ...
    ValueError: Stage 'ml': steps must be an integer >= 1, got 0
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
    fab: float = 0.0
    fab_levels: int = 8
    patience: int | None = None
    validate_every: int = 50
    ml_auto: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Stage name must be a non-empty string, got {self.name!r}")
        try:
            self._check_fields()
        except ValueError as err:
            raise ValueError(f"Stage {self.name!r}: {err}") from None

    def _check_fields(self) -> None:
        """Check and convert every field (ints stay ints: ``steps=1e3`` becomes 1000)."""
        self.steps = check.positive_int("steps", self.steps)
        self.batch_size = check.positive_int("batch_size", self.batch_size)
        if self.kl_batch_size is not None:
            self.kl_batch_size = check.positive_int("kl_batch_size", self.kl_batch_size)
        for name in ("ml", "kl", "rc", "chirality_weight", "fab"):
            setattr(self, name, check.non_negative(name, getattr(self, name)))
        if self.kl_end is not None:
            self.kl_end = check.non_negative("kl_end", self.kl_end)
        self.lr = check.positive("lr", self.lr)
        if self.lr_end is not None:
            self.lr_end = check.non_negative("lr_end", self.lr_end)
        if self.temperature is not None:
            self.temperature = check.temperature_kelvin("temperature", self.temperature)
        self.energy_high = check.number("energy_high", self.energy_high, "kT")
        if not (_real(self.energy_max) and self.energy_max >= self.energy_high):
            raise ValueError(f"energy_max must be a number >= energy_high ({self.energy_high:g}) or math.inf "
                             f"(kT), got {self.energy_max!r}")
        self.energy_max = float(self.energy_max)
        if not (_real(self.clip_grad) and self.clip_grad > 0):
            raise ValueError(f"clip_grad must be positive (math.inf: no clipping), got {self.clip_grad!r}")
        self.clip_grad = float(self.clip_grad)
        self.fab_levels = check.positive_int("fab_levels", self.fab_levels)
        self.validate_every = check.positive_int("validate_every", self.validate_every)
        if self.patience is not None:
            self.patience = check.positive_int("patience", self.patience)
        if not isinstance(self.ml_auto, bool):
            raise ValueError(f"ml_auto must be True or False, got {self.ml_auto!r}")
        if self.ml_auto and self.ml == 0:
            raise ValueError("ml_auto=True needs a starting ML weight ml > 0")
        if self.ml == 0 and self.kl == 0 and not self.kl_end and self.rc == 0 and self.fab == 0:
            raise ValueError("all loss weights (ml, kl, kl_end, rc) are 0: the stage would train nothing; give one of "
                             "them (or fab) a positive value")

    @property
    def needs_validation(self) -> bool:
        """Whether the stage checks held-out data (early stopping or the ML weight from it)."""
        return self.patience is not None or self.ml_auto

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


def _real(value) -> bool:
    """A real number, not a bool, not NaN (infinity allowed)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)


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

    Raises
    ------
    ValueError
        ``scale`` or ``kl_scale`` not positive and finite.
    """
    scale = check.positive("scale", scale)
    kl_scale = scale if kl_scale is None else check.positive("kl_scale", kl_scale)
    return [Stage("ml", steps=max(1, int(1500 * scale)), lr=5e-4, lr_end=5e-5),
            Stage("kl", steps=max(1, int(3000 * kl_scale)), ml=0.1, kl=1.0, lr=3e-4, lr_end=1e-5,
                  kl_batch_size=256)]


def _clip(value: float, low: int, high: int) -> int:
    return int(min(max(round(value), low), high))


def adaptive_stages(n_dof: int, n_frames: int, scale: float = 1.0) -> list[Stage]:
    """The adaptive recipe: ML with early stopping on held-out time blocks, then FAB fine-tuning.

    Sizes scale with the flow's degrees of freedom ``n_dof``:

    - ``ml``: at most ``clip(50 n_dof, 1000, 20000)`` steps, batches of ``clip(8 n_dof, 128, 1024)``
      frames (at most the training frames), constant learning rate 5e-4; the held-out NLL is
      checked ``40`` times over the stage and the stage stops after 8 checks at which the flow
      overfits (no improvement and a wider gap to the training NLL,
      `openmm_bg.training.validation.EarlyStopping`), keeping the
      best weights (`Stage.patience`). Early stopping, not a decaying learning rate, guards
      against overfitting here: on `openmm_bg.systems.toy.rare_banana` with the rare state at 4 %
      of the data the held-out NLL stands still for ~500 steps before the flow finds the rare
      well, and a cosine decay to 5e-5 had slowed it too much by then (rare population 0.030, 25
      effective samples after the whole recipe; constant: 0.044, 99; ``benchmarks/README.md``).
    - ``fab``: ``clip(20 n_dof, 500, 4000)`` steps of the FAB alpha = 2 loss (mass covering:
      rare states of the target are kept, `openmm_bg.training.fab`) with an annealing run of
      ``clip(4 n_dof, 128, 512)`` particles and at most 8 levels every `FAB_REFRESH` steps, plus an
      ML term whose weight starts at 0.1 and follows the held-out NLL (`Stage.ml_auto`); learning
      rate 3e-4 to 1e-5, gradients clipped at norm 10. The FAB loss has no energy in it (energies
      only weight the annealed samples), so a first step cannot be thrown by clashes the way
      the first KL step of the classic recipe can.

    Parameters
    ----------
    n_dof : int
        Flow dimensions (``BoltzmannGenerator.n_dof``), >= 1.
    n_frames : int
        Training frames after the held-out blocks are removed, >= 1.
    scale : float
        Multiplies both stages' step counts (> 0).

    Examples
    --------
    >>> [(s.name, s.steps, s.batch_size, s.kl_batch_size) for s in adaptive_stages(60, 8000)]
    [('ml', 3000, 480, None), ('fab', 1200, 480, 240)]
    """
    n_dof = check.positive_int("n_dof", n_dof)
    n_frames = check.positive_int("n_frames", n_frames)
    scale = check.positive("scale", scale)
    ml_steps = max(1, int(_clip(50 * n_dof, 1000, 20000) * scale))
    fab_steps = max(1, int(_clip(20 * n_dof, 500, 4000) * scale))
    batch = min(_clip(8 * n_dof, 128, 1024), n_frames)
    particles = _clip(4 * n_dof, 128, 512)
    return [Stage("ml", steps=ml_steps, lr=5e-4, batch_size=batch, patience=8,
                  validate_every=max(1, ml_steps // 40)),
            Stage("fab", steps=fab_steps, ml=0.1, fab=1.0, lr=3e-4, lr_end=1e-5, batch_size=batch,
                  kl_batch_size=particles, clip_grad=10.0, ml_auto=True, validate_every=max(1, fab_steps // 40))]


def load_stages(path: str | os.PathLike) -> list[Stage]:
    """Read stages from a TOML file with ``[[stage]]`` tables (keys as `Stage`'s fields).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not TOML, no ``[[stage]]`` table, an unknown key, or a field of the wrong type or out of
        its range (the message names the file, the stage number and the field).
    """
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
    if not isinstance(stages, list):
        raise ValueError(f"{path}: 'stage' must be an array of tables ([[stage]], two brackets)")
    allowed = {f.name for f in fields(Stage)}
    out = []
    for k, table in enumerate(stages):
        unknown = set(table) - allowed
        if unknown:
            raise ValueError(f"{path}: stage {k + 1} has unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        if "steps" not in table:
            raise ValueError(f"{path}: stage {k + 1} has no 'steps' (an integer >= 1)")
        table = {"name": f"stage{k + 1}", **table}
        try:
            out.append(Stage(**table))
        except ValueError as err:
            message = str(err).removeprefix(f"Stage {table['name']!r}: ")
            raise ValueError(f"{path}: stage {k + 1} ({table['name']!r}): {message}") from None
    return out
