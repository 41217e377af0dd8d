"""Free-energy profiles and surfaces along reaction coordinates."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...systems import MolecularSystem, ReactionCoordinate
from .. import reweighting
from ..reweighting import WeightDiagnostics
from ..samples import Samples
from ._common import (
    InsufficientSamplesError,
    _as_list,
    _as_sample_sets,
    _fmt_diag,
    _jsonable,
    _kT,
    _require_proposal_density,
    _require_same_topology,
)
from .mbar import MBARProblem


@dataclass(frozen=True, eq=False)
class FreeEnergyProfile:
    """Free energy ``F(s) = -log p(s)`` along a reaction coordinate (kT), shifted to min 0.

    Attributes
    ----------
    coordinate : str
        Name of the coordinate.
    unit : str
        Its unit (``"rad"``, ``"nm"``).
    edges : numpy.ndarray
        ``[n_bins + 1]`` bin edges.
    free_energy_kT : numpy.ndarray
        ``[n_bins]`` free energy in kT of ``temperature``; NaN where a bin holds no weight.
    error_kT : numpy.ndarray
        ``[n_bins]`` standard error (bootstrap or MBAR asymptotic); NaN where undetermined.
    temperature : float
        K.
    ess : numpy.ndarray
        ``[n_bins]`` Kish ESS of the weights in each bin (reweighting) or NaN (MBAR).
    pareto_k : numpy.ndarray or None
        ``[n_bins]`` Pareto k of the weights in each bin (NaN with fewer than ~25 samples). Bins far up
        a barrier that the generator rarely visits can be biased high by more than their bootstrap
        error even at moderate k: trust bins with a large ESS.
    method : str
        ``"reweighting"`` or ``"mbar"``.
    diagnostics : WeightDiagnostics or None
        Diagnostics of all weights.
    periodic : bool
        Whether the coordinate is an angle.
    """

    coordinate: str
    unit: str
    edges: np.ndarray
    free_energy_kT: np.ndarray
    error_kT: np.ndarray
    temperature: float
    ess: np.ndarray
    pareto_k: np.ndarray | None = None
    method: str = "reweighting"
    diagnostics: WeightDiagnostics | None = None
    periodic: bool = False

    @property
    def centers(self) -> np.ndarray:
        """``[n_bins]`` bin centres."""
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    @property
    def free_energy_kJ_mol(self) -> np.ndarray:
        """``[n_bins]`` free energy in kJ/mol."""
        return self.free_energy_kT * _kT(self.temperature)

    @property
    def error_kJ_mol(self) -> np.ndarray:
        """``[n_bins]`` error in kJ/mol."""
        return self.error_kT * _kT(self.temperature)

    def as_dict(self) -> dict:
        """Plain dictionary for JSON (NaN as null)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["centers"] = self.centers
        return _jsonable(out)

    def __str__(self) -> str:
        finite = np.isfinite(self.free_energy_kT)
        top = np.nanmax(self.free_energy_kT) if finite.any() else math.nan
        err = (f"largest error {np.nanmax(self.error_kT):.2f} kT" if np.isfinite(self.error_kT).any()
               else "no error bars")
        return (f"free-energy profile along {self.coordinate} ({self.unit}) at {self.temperature:g} K, "
                f"{self.method}: {finite.sum()} of {finite.size} bins filled, range 0 to {top:.2f} kT, "
                f"{err}; weights: {_fmt_diag(self.diagnostics)}")


@dataclass(frozen=True, eq=False)
class FreeEnergySurface:
    """Free energy ``F(s1, s2) = -log p(s1, s2)`` on a 2D grid (kT), shifted to min 0.

    Attributes
    ----------
    coordinates : tuple of str
        Names of the two coordinates.
    units : tuple of str
    edges_x, edges_y : numpy.ndarray
        ``[nx + 1]``, ``[ny + 1]`` bin edges.
    free_energy_kT : numpy.ndarray
        ``[nx, ny]`` free energy in kT; NaN where a bin holds no weight.
    temperature : float
        K.
    diagnostics : WeightDiagnostics or None
    """

    coordinates: tuple[str, str]
    units: tuple[str, str]
    edges_x: np.ndarray
    edges_y: np.ndarray
    free_energy_kT: np.ndarray
    temperature: float
    diagnostics: WeightDiagnostics | None = None

    def as_dict(self) -> dict:
        """Plain dictionary for JSON (NaN as null)."""
        return _jsonable({k: getattr(self, k) for k in self.__dataclass_fields__})

    def __str__(self) -> str:
        filled = np.isfinite(self.free_energy_kT)
        top = np.nanmax(self.free_energy_kT) if filled.any() else math.nan
        return (f"free-energy surface over ({self.coordinates[0]}, {self.coordinates[1]}) at "
                f"{self.temperature:g} K: {filled.sum()} of {filled.size} bins filled, 0 to {top:.2f} kT; "
                f"weights: {_fmt_diag(self.diagnostics)}")


def _coordinate(system: MolecularSystem, coordinate) -> tuple[str, Callable, str, bool, tuple | None]:
    """(name, function of positions -> values, unit, periodic, bounds)."""
    if isinstance(coordinate, str):
        if coordinate not in system.reaction_coordinates:
            raise KeyError(f"system {system.name!r} has no reaction coordinate {coordinate!r}; it has "
                           f"{sorted(system.reaction_coordinates)} (or pass a function of positions)")
        coordinate = system.reaction_coordinates[coordinate]
    if isinstance(coordinate, ReactionCoordinate):
        return coordinate.name, coordinate, coordinate.unit, coordinate.periodic, tuple(coordinate.bounds)
    if callable(coordinate):
        return getattr(coordinate, "__name__", "coordinate"), coordinate, "", False, None
    raise TypeError("a coordinate must be a name, a ReactionCoordinate or a function, got "
                    f"{type(coordinate).__name__}")


def _values(function, positions: np.ndarray) -> np.ndarray:
    finite = np.isfinite(positions).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], positions, 0.0)
    v = function(safe)
    v = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    if v.shape != (positions.shape[0],):
        raise ValueError(f"the coordinate returned shape {v.shape}, expected ({positions.shape[0]},)")
    return np.where(finite, v, np.nan)


def _pooled_log_weights(sets: list[Samples]) -> np.ndarray:
    return np.concatenate([s.log_weights - math.log(len(s)) for s in sets])


def _pooled_groups(sets: list[Samples]) -> np.ndarray | None:
    """Bootstrap groups of pooled sets: ancestral lineages where a set has ancestors (each plain
    sample its own group); None when no set has any (the plain bootstrap)."""
    if all(s.ancestors is None for s in sets):
        return None
    groups, offset = [], 0
    for s in sets:
        labels = np.arange(len(s)) if s.ancestors is None else reweighting.group_labels(s.ancestors, len(s))[0]
        groups.append(labels + offset)
        offset += len(s)
    return np.concatenate(groups)


def _edges(values: np.ndarray, bins, range_, bounds, name: str) -> np.ndarray:
    """Bin edges from checked ``bins`` / ``range_`` (see `_check_bins`); a count without a range spans the
    coordinate's bounds or else the finite ``values`` (those of samples with weight > 0)."""
    if isinstance(bins, int):
        if range_ is None:
            if bounds is not None and all(np.isfinite(bounds)):
                range_ = bounds
            else:
                finite = values[np.isfinite(values)]
                if finite.size == 0:
                    raise InsufficientSamplesError(f"no sample with weight > 0 has a finite value of {name!r}; "
                                                   "check the coordinate (or give range=(low, high))")
                range_ = (float(finite.min()), float(finite.max()))
                if not range_[1] > range_[0]:  # all at one value: a bin around it
                    range_ = (range_[0] - 0.5, range_[1] + 0.5)
        return np.linspace(range_[0], range_[1], bins + 1)
    return bins


def _check_bins(bins, range_, name: str = "bins") -> tuple[int | np.ndarray, tuple[float, float] | None]:
    """Profiles need at least 2 bins: a count >= 2 or >= 3 strictly increasing edges; range finite, low < high."""
    return reweighting.check_bins(bins, min_bins=2, name=name), reweighting.check_range(range_)


def _pair(value, name: str) -> tuple:
    """``(x, y)`` of a two-coordinate argument of a surface (bins, range)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 2:
        allowed = ("a number of bins >= 2 or a pair (bins_x, bins_y) of counts or strictly increasing edges"
                   if name == "bins" else "a pair ((low_x, high_x), (low_y, high_y))")
        raise ValueError(f"{name} of a surface must be {allowed}, got {value!r}")
    return tuple(value)


def _require_filled(F: np.ndarray, name: str, edges_text: str) -> None:
    if not np.isfinite(F).any():
        raise InsufficientSamplesError(f"no sample with weight > 0 falls inside the bins of {name!r} ({edges_text}): "
                                       "widen the range or the bins")


def _profile_from_density(density, error_density) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        F = -np.log(density)
        err = error_density / density
    F = np.where(density > 0, F, np.nan)
    err = np.where(density > 0, err, np.nan)
    if np.isfinite(F).any():
        F = F - np.nanmin(F)
    return F, err


def free_energy_profile(samples: Samples | Sequence[Samples], coordinate, bins: int | np.ndarray = 50,
                        range: tuple[float, float] | None = None, n_bootstrap: int = 200,
                        seed: int | None = 0) -> FreeEnergyProfile:
    """Free-energy profile ``F(s) = -log p(s)`` (kT, min 0) from reweighted BG samples.

    Parameters
    ----------
    samples : Samples or sequence of Samples
        Weighted samples (several sets are pooled with equal weight per set).
    coordinate : str, ReactionCoordinate or callable
        A named coordinate of the system, or a function of positions ``[n, n_atoms, 3]`` (nm) -> ``[n]``.
    bins : int or array
        Number of bins (>= 2) or strictly increasing edges.
    range : (float, float), optional
        ``(low, high)``, ``low < high``; default the coordinate's ``bounds`` (or the range of the
        weighted samples' values for functions).
    n_bootstrap : int
        Bootstrap replicas for the errors: 0 (no error bars, NaN) or >= 2; over samples, or over whole
        ancestral lineages for sets with ``ancestors`` (e.g. annealed samples).
    seed : int, optional
        Bootstrap seed (>= 0).

    Returns
    -------
    FreeEnergyProfile
        ``free_energy_kT [n_bins]`` (NaN in empty bins), bootstrap ``error_kT``, per-bin ESS.

    Examples
    --------
    >>> p = free_energy_profile(samples, "phi", bins=36)  # doctest: +SKIP
    >>> p.centers.shape, p.free_energy_kT.shape  # doctest: +SKIP
    ((36,), (36,))
    """
    bins, range = _check_bins(bins, range)
    n_bootstrap, seed = reweighting.check_n_bootstrap(n_bootstrap), reweighting.check_seed(seed)
    sets = _as_sample_sets(samples)
    system = sets[0].system
    for s in sets[1:]:
        _require_same_topology(system, s.system, "sample sets")
    name, function, unit, periodic, bounds = _coordinate(system, coordinate)
    values = np.concatenate([_values(function, s.positions) for s in sets])
    log_w = _pooled_log_weights(sets)
    log_w = np.where(np.isfinite(values), log_w, -math.inf)
    edges = _edges(values[np.isfinite(log_w)], bins, range, bounds, name)
    v = np.where(np.isfinite(values), values, edges[0] - 1.0)  # weight zero anyway, out of range
    if not np.isfinite(log_w).any():
        raise InsufficientSamplesError(f"no sample with weight > 0 has a finite value of {name!r}")
    density, err, edges = reweighting.reweighted_histogram(v, log_w, bins=edges, n_bootstrap=n_bootstrap,
                                                           seed=seed, groups=_pooled_groups(sets))
    F, dF = _profile_from_density(density, err)
    idx = np.digitize(v, edges) - 1
    ess = np.full(edges.size - 1, 0.0)
    k_bins = np.full(edges.size - 1, np.nan)
    for b in np.unique(idx[(idx >= 0) & (idx < ess.size)]):
        lw_b = log_w[idx == b]
        if np.isfinite(lw_b).any():  # per bin, from log weights: no underflow next to the global maximum
            ess[b] = reweighting.kish_ess(lw_b)
            with np.errstate(invalid="ignore", divide="ignore"):
                k_bins[b] = reweighting.pareto_k(lw_b)
    return FreeEnergyProfile(coordinate=name, unit=unit, edges=edges, free_energy_kT=F, error_kT=dF,
                             temperature=float(sets[0].temperature), ess=ess, pareto_k=k_bins,
                             method="reweighting",
                             diagnostics=reweighting.diagnose(log_w, warn=False), periodic=periodic)


def free_energy_surface(samples: Samples | Sequence[Samples], coordinate_x="phi", coordinate_y="psi",
                        bins: int | tuple[int, int] = 60, range=None) -> FreeEnergySurface:
    """2D free-energy surface ``F(s1, s2) = -log p(s1, s2)`` (kT, min 0) from reweighted samples,
    e.g. the phi/psi Ramachandran free energy of alanine dipeptide.

    Parameters
    ----------
    samples : Samples or sequence of Samples
    coordinate_x, coordinate_y : str, ReactionCoordinate or callable
        Coordinates (default ``"phi"``, ``"psi"``).
    bins : int or (bins_x, bins_y)
        Bins per coordinate (>= 2), or a pair, each a count or strictly increasing edges.
    range : ((float, float), (float, float)), optional
        ``((low_x, high_x), (low_y, high_y))``; default the coordinates' bounds.

    Returns
    -------
    FreeEnergySurface

    Examples
    --------
    >>> surface = free_energy_surface(samples)  # doctest: +SKIP
    >>> surface.free_energy_kT.shape  # doctest: +SKIP
    (60, 60)
    """
    single = isinstance(bins, numbers.Integral) and not isinstance(bins, bool)
    bins_x, bins_y = (reweighting.check_bins(b, min_bins=2, name=f"bins[{i}]")
                      for i, b in enumerate((bins, bins) if single else _pair(bins, "bins")))
    range_x, range_y = ((None, None) if range is None else
                        (reweighting.check_range(r, f"range[{i}]") for i, r in enumerate(_pair(range, "range"))))
    sets = _as_sample_sets(samples)
    system = sets[0].system
    for s in sets[1:]:
        _require_same_topology(system, s.system, "sample sets")
    nx, fx, ux, _, bx = _coordinate(system, coordinate_x)
    ny, fy, uy, _, by = _coordinate(system, coordinate_y)
    vx = np.concatenate([_values(fx, s.positions) for s in sets])
    vy = np.concatenate([_values(fy, s.positions) for s in sets])
    log_w = _pooled_log_weights(sets)
    ok = np.isfinite(vx) & np.isfinite(vy) & np.isfinite(log_w)
    if not ok.any():
        raise InsufficientSamplesError(f"no sample with weight > 0 has finite values of {nx!r} and {ny!r}")
    log_w = np.where(ok, log_w, -math.inf)
    w = reweighting.normalized_weights(log_w)
    ex = _edges(vx[ok], bins_x, range_x, bx, nx)
    ey = _edges(vy[ok], bins_y, range_y, by, ny)
    inside = ok & (vx >= ex[0]) & (vx <= ex[-1]) & (vy >= ey[0]) & (vy <= ey[-1])
    if not (w[inside] > 0).any():
        _require_filled(np.full(1, np.nan), f"{nx}, {ny}", f"{ex[0]:g} to {ex[-1]:g} by {ey[0]:g} to {ey[-1]:g}")
    hist, ex, ey = np.histogram2d(vx[ok], vy[ok], bins=[ex, ey], weights=w[ok], density=True)
    F, _ = _profile_from_density(hist, np.zeros_like(hist))
    return FreeEnergySurface(coordinates=(nx, ny), units=(ux, uy), edges_x=ex, edges_y=ey, free_energy_kT=F,
                             temperature=float(sets[0].temperature),
                             diagnostics=reweighting.diagnose(log_w, warn=False))


def mbar_profile(coordinate, target: MolecularSystem, samples: Samples | Sequence[Samples] | None = None,
                 generators=None, trajectories: Sequence[tuple[MolecularSystem, Any]] | Mapping = (),
                 bins: int | np.ndarray = 50, range: tuple[float, float] | None = None,
                 decorrelate: bool = True) -> FreeEnergyProfile:
    """Free-energy profile at ``target`` from BG samples and MD at several thermodynamic states (MBAR).

    Builds the MBAR ``u_kn`` matrix with one state per generator sample set (reduced potential
    ``-log p_X(x)`` of that generator at its temperature), one per MD thermodynamic state and the
    target; the profile is ``-log`` of MBAR's bin probabilities at the target, with pymbar's
    asymptotic errors (``compute_multiple_expectations``).

    Parameters
    ----------
    coordinate : str, ReactionCoordinate or callable
        As in `free_energy_profile`.
    target : MolecularSystem
        The thermodynamic state (system and temperature) of the profile.
    samples : Samples or sequence of Samples, optional
        BG samples with their log densities.
    generators : BoltzmannGenerator or sequence, optional
        One per sample set; required with several sets or any MD (to evaluate densities on frames it
        did not draw).
    trajectories : sequence of (MolecularSystem, trajectory) or mapping
        MD frames at thermodynamic states sharing the target's topology, e.g.
        ``[(system.with_temperature(600), traj)]``; a state may be the target itself.
    bins, range
        As in `free_energy_profile`.
    decorrelate : bool
        Subsample each MD trajectory by the statistical inefficiency of its reduced energy at the
        target (as pymbar's examples do; slow transitions along the coordinate itself are not
        accounted for, so errors of a trajectory that crosses rarely are optimistic).

    Returns
    -------
    FreeEnergyProfile
        ``method="mbar"``; ``ess`` NaN.

    Examples
    --------
    >>> hot = system.with_temperature(600.0)  # doctest: +SKIP
    >>> p = mbar_profile("x1", system, samples, generators=gen,
    ...                  trajectories=[(hot, md_hot)])  # doctest: +SKIP
    """
    bins, range = _check_bins(bins, range)
    sets = _as_sample_sets(samples) if samples is not None else []
    _require_proposal_density(sets, "mbar_profile")
    gens = _as_list(generators)
    if gens and len(gens) != len(sets):
        raise ValueError(f"give one generator per sample set ({len(sets)} sets, {len(gens)} generators)")
    pairs = list(trajectories.items()) if isinstance(trajectories, Mapping) else list(trajectories)
    for p in pairs:
        if not (isinstance(p, tuple | list) and len(p) == 2 and isinstance(p[0], MolecularSystem)):
            raise TypeError("trajectories must be (MolecularSystem, trajectory) pairs")
    if not sets and not pairs:
        raise ValueError("no data: give BG samples and/or MD trajectories")

    if (len(sets) > 1 or pairs) and sets and not gens:
        raise ValueError("with several sample sets or MD data, pass generators=[...] (one per sample set)")
    for s in sets:
        _require_same_topology(target, s.system, "the samples and the target state")
    # distinct thermodynamic states: target first
    targets: list[MolecularSystem] = [target]
    md: list[tuple[int, Any]] = []
    for system, traj in pairs:
        _require_same_topology(target, system, "MD states and the target state")
        k = next((i for i, t in enumerate(targets)
                  if t.system is system.system and math.isclose(t.temperature, system.temperature)), None)
        if k is None:
            targets.append(system)
            k = len(targets) - 1
        md.append((k, traj))
    name, function, unit, periodic, bounds = _coordinate(target, coordinate)
    n_gen = len(sets)
    problem = MBARProblem(sets, gens, targets, md, decorrelate=[n_gen] if decorrelate else False)
    values = _values(function, problem.positions)
    edges = _edges(values[np.isfinite(values) & problem.support(n_gen)], bins, range, bounds, name)
    n_bins = edges.size - 1
    p, dp = problem.histogram(values, edges, state=n_gen)
    widths = np.diff(edges)
    density, derr = p / widths, dp / widths
    F, dF = _profile_from_density(np.where(p > 0, density, 0.0), derr)
    _require_filled(F, name, f"{edges[0]:g} to {edges[-1]:g}")
    return FreeEnergyProfile(coordinate=name, unit=unit, edges=edges, free_energy_kT=F, error_kT=dF,
                             temperature=target.temperature, ess=np.full(n_bins, np.nan), method="mbar",
                             diagnostics=problem.weight_diagnostics(n_gen), periodic=periodic)

