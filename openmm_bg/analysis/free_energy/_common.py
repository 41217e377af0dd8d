"""Shared pieces of the free-energy estimators: constants, pymbar import, unit and sample helpers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..._quiet_imports import pymbar_module  # noqa: F401 (re-exported: the one home is openmm_bg._quiet_imports)
from ..._validation import temperature_kelvin
from ...constants import KJ_PER_KCAL, kT_kJ_per_mol
from ...systems import MolecularSystem, State
from .. import reweighting
from ..reweighting import InsufficientSamplesError, WeightDiagnostics, format_k
from ..samples import Samples


class _KcalUnits:
    """``delta_a_kcal_mol`` / ``error_kcal_mol`` for a result that has ``delta_a_kJ_mol`` / ``error_kJ_mol``."""

    @property
    def delta_a_kcal_mol(self) -> float:
        """``Delta A`` in kcal/mol."""
        return self.delta_a_kJ_mol / KJ_PER_KCAL

    @property
    def error_kcal_mol(self) -> float:
        """Error in kcal/mol."""
        return self.error_kJ_mol / KJ_PER_KCAL


#: Smallest MBAR overlap (pymbar ``compute_overlap`` matrix element) between the generator and a state
#: that `state_free_energy_mbar` calls reliable (a common rule of thumb is >= 0.03).
MIN_OVERLAP = 0.03


#: Default minimum Kish ESS inside a state below which `state_free_energy` refuses to report.
#: With ESS = 30 the relative error of the state's weight is ~ 1/sqrt(30) = 0.18 (0.18 kT).
DEFAULT_MIN_ESS = 30.0


def _kT(temperature: float) -> float:
    return kT_kJ_per_mol(temperature)


def _fmt_diag(d: WeightDiagnostics | None) -> str:
    if d is None:
        return "n/a"
    return f"ESS {d.ess:.1f}/{d.n}, max weight {100 * d.max_weight_share:.1f}%, k {format_k(d.pareto_k)}"


def _pm(value: float, error: float, unit: str = "") -> str:
    """``"1.234 +- 0.056 kT"``; ``"1.234 kT (no error bar)"`` where the error is undetermined (NaN, e.g.
    ``n_bootstrap=0``); ``"undetermined"`` for a non-finite value. Never prints NaN as a number."""
    unit = f" {unit}" if unit else ""
    if not math.isfinite(value):
        return f"undetermined{unit}"
    if not math.isfinite(error):
        return f"{value:.3f}{unit} (no error bar)"
    return f"{value:.3f} +- {error:.3f}{unit}"


def _check_temperature(system: MolecularSystem, what: str) -> None:
    """Refuse a state whose temperature is not a positive, finite number of K (one line naming it)."""
    temperature_kelvin(f"the temperature of {what} ({system.name!r})", system.temperature)


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, float | np.floating):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, WeightDiagnostics):
        return _jsonable(value.as_dict())
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


StateLike = str | State | Callable[..., Any]


def _as_sample_sets(samples) -> list[Samples]:
    sets = [samples] if isinstance(samples, Samples) else list(samples)
    if not sets:
        raise ValueError("no samples given: pass a Samples object or a list of them")
    for s in sets:
        if not isinstance(s, Samples):
            raise TypeError(f"expected openmm_bg.Samples, got {type(s).__name__}")
        if len(s) == 0:
            raise ValueError("a Samples set is empty (0 samples)")
    for g, s in enumerate(sets):  # a set whose every weight is zero: refused, never 0 +- 0
        try:
            s.require_weight("a free energy")
        except InsufficientSamplesError as err:
            if len(sets) == 1:
                raise
            raise InsufficientSamplesError(f"sample set {g + 1} of {len(sets)}: {err}") from None
    return sets


def _require_proposal_density(sets: list[Samples], what: str) -> None:
    """Refuse sets whose ``log_prob`` is not the density they were drawn from (`Samples.has_proposal_density`)."""
    for s in sets:
        if not s.has_proposal_density:
            raise ValueError(f"{what} uses the generator's density of each sample (log_prob) as a normalised "
                             f"reference, but these samples are {s.provenance.get('kind')!r}, not plain draws of a "
                             "generator; use their log weights (state_free_energy, free_energy_profile) or pass "
                             "plain samples from BoltzmannGenerator.sample")


def _same_topology(a: MolecularSystem, b: MolecularSystem) -> str | None:
    """None if ``a`` and ``b`` share atoms (names, elements, order) and constraints; else why not."""
    if a.n_atoms != b.n_atoms:
        return f"{a.name!r} has {a.n_atoms} atoms, {b.name!r} has {b.n_atoms}"
    for x, y in zip(a.topology.atoms(), b.topology.atoms()):
        ex = x.element.symbol if x.element is not None else ""
        ey = y.element.symbol if y.element is not None else ""
        if x.name != y.name or ex != ey:
            return (f"atom {x.index} is {x.residue.name}:{x.name} in {a.name!r} but "
                    f"{y.residue.name}:{y.name} in {b.name!r}")
    ca = [(i, j, round(d, 6)) for i, j, d in a.constraints]
    cb = [(i, j, round(d, 6)) for i, j, d in b.constraints]
    if ca != cb:
        return f"constraints differ ({len(ca)} in {a.name!r}, {len(cb)} in {b.name!r})"
    return None


def _require_same_topology(a: MolecularSystem, b: MolecularSystem, what: str) -> None:
    why = _same_topology(a, b)
    if why is not None:
        raise ValueError(f"{what} must share a topology (same atoms in the same order, same constraints): "
                         f"{why}")


def _state_name(state: StateLike) -> str:
    if isinstance(state, str):
        return state
    if isinstance(state, State):
        return state.name
    return getattr(state, "__name__", "custom state")


def _evaluate_state(state: StateLike, system: MolecularSystem, positions: np.ndarray) -> np.ndarray:
    """Boolean mask ``[n]`` of ``positions`` inside ``state`` (name, `State` or function)."""
    if isinstance(state, str):
        if state not in system.states:
            raise KeyError(f"system {system.name!r} has no state {state!r}; it has {sorted(system.states)} "
                           "(or pass a State or a boolean function of positions)")
        state = system.states[state]
    if not callable(state):
        raise TypeError("a state must be a name, a State or a function of positions, got "
                        f"{type(state).__name__}")
    finite = np.isfinite(positions).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], positions, 0.0)
    if isinstance(state, State):
        mask = state(safe)
    else:
        try:
            mask = state(safe)
        except (AttributeError, TypeError):  # written for an mdtraj.Trajectory: give it one
            mask = state(system.to_mdtraj(safe))
        mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    mask = np.asarray(mask)
    if mask.shape != (positions.shape[0],):
        raise ValueError(f"state {_state_name(state)!r} returned shape {mask.shape}; a state function must "
                         f"return one boolean per configuration, shape ({positions.shape[0]},)")
    if mask.dtype != bool:
        if not np.isin(mask, [0, 1]).all():
            raise ValueError(f"state {_state_name(state)!r} must return booleans, got values like {mask[:3]}")
        mask = mask.astype(bool)
    return mask & finite


def _label(system: MolecularSystem) -> str:
    return f"{system.name} at {system.temperature:g} K"


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


def _diag_from_log_w(log_w: np.ndarray) -> WeightDiagnostics | None:
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.size == 0 or not np.isfinite(log_w).any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return reweighting.diagnose(log_w, warn=False)

