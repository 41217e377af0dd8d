"""Free energies from Boltzmann-Generator samples: states, thermodynamic states, profiles.

Three kinds of free-energy differences (design notes, "Key formulas"):

- **Conformational states of one system** (`state_free_energy`):
  ``Delta A = A_B - A_A = -log(sum_{x in B} w / sum_{x in A} w)`` in kT of the samples'
  temperature, with a bootstrap error (over samples and, given several sample sets from
  independently trained generators, over generators), the effective sample size inside each state
  and the weight diagnostics. A state with fewer than ``min_ess`` effective samples is refused.
- **Thermodynamic states** (`thermodynamic_free_energy`): two `MolecularSystem` s sharing a
  topology (other temperature, solvent model or parameters). The generator density is normalised,
  so it is a tractable reference state with ``f = 0``: MBAR (pymbar) over the generator state(s),
  the two targets and any MD frames; BAR / EXP on the same data where asked. Results are reduced
  differences ``Delta f = f_B - f_A`` (``f = A/kT``, dimensionless) and, where a normalised
  reference fixes absolute ``f``, ``Delta A = kT_B f_B - kT_A f_A`` in kJ/mol. Next to it the seed's
  two-generator estimate ``<J_KL^B> - <J_KL^A>``, a difference of two upper bounds.
- **Profiles and surfaces** (`free_energy_profile`, `mbar_profile`, `free_energy_surface`):
  ``F(s) = -log p(s)`` along a reaction coordinate, from reweighted samples, or from MBAR over
  BG samples and MD trajectories at one or several thermodynamic states.

Energies are reduced (kT) throughout; kJ/mol and kcal/mol are derived with the temperature of
the state. Free energies are configurational (no kinetic part); positions are in nm.

pymbar is imported lazily and quietly (`pymbar_module`): it logs a "JAX NOT FOUND" banner on import.

Examples
--------
>>> import openmm_bg
>>> from openmm_bg.systems import load
>>> from openmm_bg.free_energy import state_free_energy
>>> dw = load("double_well")
>>> data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, progress=False)
>>> gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
>>> def deep(x):  # any boolean function of positions [n, n_atoms, 3] (nm) is a state
...     return x[:, 0, 0] < -1.8
>>> result = state_free_energy(gen.sample(2000, seed=1), "left", deep)
>>> result.state_b, result.unit_note, result.delta_a_kT > 0
('deep', 'kT at 300 K', True)
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from . import reweighting
from .reweighting import WeightDiagnostics
from .samples import Samples
from .systems import MolecularSystem, ReactionCoordinate, State
from .systems.molecular_system import kT_kJ_per_mol

__all__ = ["InsufficientSamplesError", "StateFreeEnergy", "ThermodynamicFreeEnergy", "TwoGeneratorEstimate",
           "FreeEnergyProfile", "FreeEnergySurface", "state_free_energy", "state_free_energy_mbar",
           "thermodynamic_free_energy",
           "two_generator_estimate", "free_energy_profile", "mbar_profile", "free_energy_surface",
           "pymbar_module", "KJ_PER_KCAL", "DEFAULT_MIN_ESS", "MIN_OVERLAP"]

#: kJ per kcal (thermochemical calorie).
KJ_PER_KCAL = 4.184

#: Smallest MBAR overlap (pymbar ``compute_overlap`` matrix element) between the generator and a state
#: that `state_free_energy_mbar` calls reliable (a common rule of thumb is >= 0.03).
MIN_OVERLAP = 0.03

#: Default minimum Kish ESS inside a state below which `state_free_energy` refuses to report.
#: With ESS = 30 the relative error of the state's weight is ~ 1/sqrt(30) = 0.18 (0.18 kT).
DEFAULT_MIN_ESS = 30.0


class InsufficientSamplesError(ValueError):
    """A state holds too few (effective) samples for a free energy to mean anything."""


# ---------------------------------------------------------------------- pymbar, quietly
_PYMBAR = None


def pymbar_module():
    """Import pymbar once, silencing its "JAX NOT FOUND" banner and timeseries notice.

    pymbar 4 logs both through ``logging`` on import (printed by the last-resort handler to
    stderr); this raises those loggers' levels and redirects stdout/stderr during the import only.
    """
    global _PYMBAR
    if _PYMBAR is None:
        names = ["pymbar", "pymbar.mbar_solvers", "pymbar.timeseries", "pymbar.mbar"]
        loggers = [logging.getLogger(n) for n in names]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                import pymbar
                import pymbar.other_estimators  # noqa: F401
                import pymbar.timeseries  # noqa: F401
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
        _PYMBAR = pymbar
    return _PYMBAR


def _kT(temperature: float) -> float:
    return kT_kJ_per_mol(temperature)


def _fmt_diag(d: WeightDiagnostics | None) -> str:
    if d is None:
        return "n/a"
    return f"ESS {d.ess:.1f}/{d.n}, max weight {100 * d.max_weight_share:.1f}%, k {d.pareto_k:.2f}"


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


# ---------------------------------------------------------------------- states of one system
@dataclass(frozen=True)
class StateFreeEnergy:
    """Free-energy difference ``A_B - A_A`` between two conformational states of one system.

    Attributes
    ----------
    state_a, state_b : str
        Names (or descriptions) of the states.
    delta_a_kT : float
        ``A_B - A_A`` in kT at ``temperature``.
    error_kT : float
        Bootstrap standard error (kT); over samples, and over generators when several sets were given.
    temperature : float
        K.
    ess_a, ess_b : float
        Kish effective sample size of the weights inside each state.
    n_a, n_b : int
        Samples (any weight) inside each state.
    diagnostics : WeightDiagnostics
        Diagnostics of all weights (pooled sets).
    diagnostics_a, diagnostics_b : WeightDiagnostics
        Diagnostics of the weights inside each state.
    n_generators : int
        Number of sample sets (independently trained generators).
    per_generator_kT : tuple of float
        ``Delta A`` of each set alone (kT); one entry for one set.
    error_samples_kT : float
        Bootstrap error over samples only (generators fixed).
    n_bootstrap : int
        Bootstrap replicas.
    method : str
        ``"reweighting"`` (self-normalised importance sampling, bootstrap error) or ``"mbar"``
        (generator as reference state with MD inside the states, asymptotic error).
    notes : tuple of str
        What was done.
    overlap : tuple of float
        ``"mbar"`` only: MBAR overlap-matrix elements ``O[k, gen]`` of the A- and B-restricted states
        with the generator (pymbar ``compute_overlap``; about ``N_gen / N`` for a perfect generator);
        below `MIN_OVERLAP` the asymptotic error is not trustworthy (the per-state ESS counts MD frames
        and cannot show this).
    """

    state_a: str
    state_b: str
    delta_a_kT: float
    error_kT: float
    temperature: float
    ess_a: float
    ess_b: float
    n_a: int
    n_b: int
    diagnostics: WeightDiagnostics
    diagnostics_a: WeightDiagnostics
    diagnostics_b: WeightDiagnostics
    n_generators: int = 1
    per_generator_kT: tuple[float, ...] = ()
    error_samples_kT: float = math.nan
    n_bootstrap: int = 0
    method: str = "reweighting"
    notes: tuple[str, ...] = ()
    overlap: tuple[float, ...] = ()

    @property
    def unit_note(self) -> str:
        """Which kT the reduced numbers are in."""
        return f"kT at {self.temperature:g} K"

    @property
    def delta_a_kJ_mol(self) -> float:
        """``Delta A`` in kJ/mol."""
        return self.delta_a_kT * _kT(self.temperature)

    @property
    def error_kJ_mol(self) -> float:
        """Error in kJ/mol."""
        return self.error_kT * _kT(self.temperature)

    @property
    def delta_a_kcal_mol(self) -> float:
        """``Delta A`` in kcal/mol."""
        return self.delta_a_kJ_mol / KJ_PER_KCAL

    @property
    def error_kcal_mol(self) -> float:
        """Error in kcal/mol."""
        return self.error_kJ_mol / KJ_PER_KCAL

    @property
    def generator_spread_kT(self) -> float:
        """Standard deviation of the per-generator estimates (NaN for one set)."""
        if len(self.per_generator_kT) < 2:
            return math.nan
        return float(np.std(self.per_generator_kT, ddof=1))

    @property
    def reliable(self) -> bool:
        """False when the weights (overall or inside a state) have Pareto k >= 0.7: the bootstrap error
        then understates the true error."""
        if self.method == "mbar":  # the generator's own weights need not be light-tailed for MBAR
            return (self.diagnostics_a.reliable and self.diagnostics_b.reliable
                    and all(o >= MIN_OVERLAP for o in self.overlap))
        return self.diagnostics.reliable and self.diagnostics_a.reliable and self.diagnostics_b.reliable

    def as_dict(self) -> dict:
        """Plain dictionary for JSON (derived units included)."""
        out = _jsonable(asdict(self))
        out.update(delta_a_kJ_mol=self.delta_a_kJ_mol, error_kJ_mol=self.error_kJ_mol,
                   delta_a_kcal_mol=self.delta_a_kcal_mol, error_kcal_mol=self.error_kcal_mol,
                   generator_spread_kT=_jsonable(self.generator_spread_kT), reliable=self.reliable)
        return _jsonable(out)

    def __str__(self) -> str:
        flag = "" if self.reliable else (" [UNRELIABLE: Pareto k >= 0.7]" if not self.overlap or
                                         min(self.overlap) >= MIN_OVERLAP else " [UNRELIABLE: poor overlap]")
        gens = f", {self.n_generators} generators" if self.n_generators > 1 else ""
        gens += ", MBAR with MD" if self.method == "mbar" else ""
        if self.overlap:
            gens += f" (overlap {min(self.overlap):.3f})"
        return (f"A({self.state_b}) - A({self.state_a}) = {self.delta_a_kT:.3f} +- {self.error_kT:.3f} kT "
                f"({self.delta_a_kJ_mol:.3f} +- {self.error_kJ_mol:.3f} kJ/mol, {self.delta_a_kcal_mol:.3f} "
                f"+- {self.error_kcal_mol:.3f} kcal/mol) at {self.temperature:g} K{gens}; ESS in "
                f"{self.state_a} {self.ess_a:.1f} (n={self.n_a}), in {self.state_b} {self.ess_b:.1f} "
                f"(n={self.n_b}); {'generator weights' if self.method == 'mbar' else 'all weights'}: "
                f"{self.diagnostics}{flag}")


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
    return sets


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


def _log_sum(log_w: np.ndarray) -> float:
    finite = log_w[np.isfinite(log_w)]
    if finite.size == 0:
        return -math.inf
    m = finite.max()
    return float(m + np.log(np.exp(finite - m).sum()))


def state_free_energy(samples: Samples | Sequence[Samples], state_a: StateLike, state_b: StateLike,
                      min_ess: float = DEFAULT_MIN_ESS, n_bootstrap: int = 200, seed: int | None = 0,
                      warn: bool = True) -> StateFreeEnergy:
    """Free-energy difference ``A_B - A_A`` between two conformational states from weighted samples.

    ``Delta A = -log(sum_{x in B} w(x) / sum_{x in A} w(x))`` in kT at the samples' temperature.
    Several sample sets (from independently trained generators of the same system at the same
    temperature) are pooled with equal weight per set (each set's weights estimate the same
    partition function), and the bootstrap resamples generators, then samples within each.

    Parameters
    ----------
    samples : Samples or sequence of Samples
        Weighted BG samples; a list means independently trained generators.
    state_a, state_b : str, State or callable
        A named state of the system (``samples.system.states``), a `State`, or any function of
        positions ``[n, n_atoms, 3]`` (nm, numpy float64) returning a boolean array ``[n]``; a
        function written for an ``mdtraj.Trajectory`` gets one when positions fail.
    min_ess : float
        Minimum Kish effective sample size inside each state; below it `InsufficientSamplesError`.
    n_bootstrap : int
        Bootstrap replicas for the error (0: error NaN).
    seed : int, optional
        Bootstrap seed.
    warn : bool
        Warn (RuntimeWarning) when Pareto k >= 0.7 overall or inside a state.

    Returns
    -------
    StateFreeEnergy
        ``Delta A`` in kT (kJ/mol and kcal/mol as properties), its error, ESS and diagnostics.

    Raises
    ------
    InsufficientSamplesError
        A state holds no samples, only zero-weight samples, or fewer than ``min_ess`` effective ones.
    ValueError
        Empty input, sets of different systems or temperatures, overlapping identical states.

    Examples
    --------
    >>> r = state_free_energy(samples, "C7eq", "C7ax")  # doctest: +SKIP
    >>> print(r)  # doctest: +SKIP
    A(C7ax) - A(C7eq) = 2.71 +- 0.05 kT (...)
    """
    sets = _as_sample_sets(samples)
    system, temperature = sets[0].system, float(sets[0].temperature)
    for s in sets[1:]:
        _require_same_topology(system, s.system, "sample sets")
        if not math.isclose(float(s.temperature), temperature, rel_tol=1e-9):
            raise ValueError(f"sample sets have different temperatures ({temperature:g} K and "
                             f"{s.temperature:g} K); Delta A between conformational states needs one")
    name_a, name_b = _state_name(state_a), _state_name(state_b)
    if name_a == name_b and state_a is state_b:
        raise ValueError(f"state_a and state_b are the same state ({name_a!r})")
    # per set: log weights with log(1/n_g) so that every set carries the same total prior weight
    log_w, in_a, in_b, group = [], [], [], []
    for g, s in enumerate(sets):
        log_w.append(s.log_weights - math.log(len(s)))
        in_a.append(_evaluate_state(state_a, s.system, s.positions))
        in_b.append(_evaluate_state(state_b, s.system, s.positions))
        group.append(np.full(len(s), g))
    lw, ma, mb = np.concatenate(log_w), np.concatenate(in_a), np.concatenate(in_b)
    diag = reweighting.diagnose(lw, warn=False)  # raises if every weight is zero
    diags = {}
    for name, mask in ((name_a, ma), (name_b, mb)):
        n_in = int(mask.sum())
        if n_in == 0:
            raise InsufficientSamplesError(
                f"state {name!r} holds no samples (0 of {lw.size}); check its definition, or sample more / "
                "train the generator on data that visit it")
        if not np.isfinite(lw[mask]).any():
            raise InsufficientSamplesError(
                f"state {name!r} holds {n_in} samples but all have weight zero (out of domain, inverted "
                "chirality or failed energies); no free energy can be estimated")
        d = reweighting.diagnose(lw[mask], warn=False)
        if d.ess < min_ess:
            raise InsufficientSamplesError(
                f"state {name!r} holds only {d.ess:.1f} effective samples (Kish ESS; {n_in} samples, "
                f"largest weight {100 * d.max_weight_share:.0f}% of the state), below min_ess={min_ess:g}: a "
                "free energy from so few would mean nothing. Draw more samples, train the generator longer, "
                "or lower min_ess")
        diags[name] = d
    da, db = diags[name_a], diags[name_b]

    def estimate(lw_, ma_, mb_) -> float:
        return -(_log_sum(lw_[mb_]) - _log_sum(lw_[ma_]))

    delta = estimate(lw, ma, mb)
    per_gen = tuple(estimate(a, b, c) for a, b, c in zip(log_w, in_a, in_b))
    err, err_samples = math.nan, math.nan
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        shift = np.max(lw[np.isfinite(lw)])
        w = [np.exp(x - shift) for x in log_w]
        G = len(sets)
        reps, reps_samples = [], []
        for _ in range(int(n_bootstrap)):
            for hierarchical, out in ((True, reps), (False, reps_samples)):
                if not hierarchical and G == 1:
                    continue
                chosen = rng.integers(0, G, G) if hierarchical else np.arange(G)
                sa = sb = 0.0
                for g in chosen:
                    idx = rng.integers(0, w[g].size, w[g].size)
                    wi = w[g][idx]
                    sa += wi[in_a[g][idx]].sum()
                    sb += wi[in_b[g][idx]].sum()
                out.append(-math.log(sb / sa) if sa > 0 and sb > 0 else math.nan)
        reps = np.asarray(reps)
        err = float(np.nanstd(reps, ddof=1))
        err_samples = float(np.nanstd(reps_samples, ddof=1)) if G > 1 else err
    result = StateFreeEnergy(state_a=name_a, state_b=name_b, delta_a_kT=float(delta), error_kT=err,
                             temperature=temperature, ess_a=da.ess, ess_b=db.ess, n_a=int(ma.sum()),
                             n_b=int(mb.sum()), diagnostics=diag, diagnostics_a=da, diagnostics_b=db,
                             n_generators=len(sets), per_generator_kT=per_gen, error_samples_kT=err_samples,
                             n_bootstrap=int(n_bootstrap))
    if warn and not result.reliable:
        warnings.warn(f"importance weights are heavy-tailed (Pareto k: all {diag.pareto_k:.2f}, {name_a} "
                      f"{da.pareto_k:.2f}, {name_b} {db.pareto_k:.2f}; >= 0.7 is unreliable): the bootstrap "
                      f"error of Delta A({name_b} - {name_a}) understates the true error", RuntimeWarning,
                      stacklevel=2)
    return result


def state_free_energy_mbar(samples: Samples, generator, state_a: StateLike, state_b: StateLike, md_a=None,
                           md_b=None, decorrelate: bool = True, min_ess: float = DEFAULT_MIN_ESS,
                           warn: bool = True) -> StateFreeEnergy:
    """``A_B - A_A`` between conformational states with the generator as a normalised reference (MBAR).

    Three MBAR states: the generator (reduced potential ``-log p_X``, ``f = 0``), and the Boltzmann
    distribution restricted to state A and to state B (``u`` inside, ``+inf`` outside), so that
    ``f_A = -log Z_A`` and ``Delta A = f_B - f_A``. BG samples are drawn from the first; MD frames
    that start in a metastable state and stay there are samples of the restricted distributions
    (frames outside the state are dropped and counted). This uses the generator's samples *and*
    the MD frames in both directions (BAR-like), so it stays accurate with a generator whose
    importance weights alone are too heavy-tailed; without MD it reduces to `state_free_energy`
    (with an asymptotic instead of a bootstrap error).

    Parameters
    ----------
    samples : Samples
        BG samples with their log densities (one set).
    generator : BoltzmannGenerator
        The generator that drew ``samples`` (its density is evaluated on MD frames).
    state_a, state_b : str, State or callable
        As in `state_free_energy`.
    md_a, md_b : mdtraj.Trajectory, array or sequence of them, optional
        MD frames ``[n, n_atoms, 3]`` (nm) at the samples' temperature inside state A / B (local
        equilibrium within a metastable state is assumed).
    decorrelate : bool
        Subsample MD by the statistical inefficiency of its reduced energy and generator log density.
    min_ess : float
        Minimum Kish ESS of MBAR's weights inside each state.
    warn : bool
        Warn when MBAR's weights for a state have Pareto k >= 0.7.

    Returns
    -------
    StateFreeEnergy
        ``method="mbar"``; ``error_kT`` is MBAR's asymptotic error; ESS and diagnostics are those of
        MBAR's weights for each restricted state (``diagnostics``: the generator's importance weights).

    Examples
    --------
    >>> r = state_free_energy_mbar(samples, gen, "C7eq", "C7ax", md_a=md_eq, md_b=md_ax)  # doctest: +SKIP
    """
    sets = _as_sample_sets(samples)
    if len(sets) != 1:
        raise ValueError("state_free_energy_mbar takes one sample set and its generator")
    s = sets[0]
    if generator is None or not hasattr(generator, "log_prob"):
        raise TypeError("generator must be the BoltzmannGenerator that drew the samples")
    _require_same_topology(s.system, generator.system, "the samples and the generator")
    temperature = float(s.temperature)
    target = s.system.with_temperature(temperature)
    name_a, name_b = _state_name(state_a), _state_name(state_b)
    notes = []
    energies = _Energies()
    try:
        bg = _Ensemble(positions=np.asarray(s.positions, dtype=np.float64), valid=np.isfinite(s.log_weights),
                       system=s.system, temperature=temperature, energies=s.energies, log_prob=s.log_prob,
                       kind="generator")
        columns = [(bg, energies.reduced(target, bg), np.where(np.isfinite(s.log_prob), -s.log_prob, 0.0))]
        N_k = [len(bg), 0, 0]
        for k, (state, trajs) in enumerate(((state_a, md_a), (state_b, md_b)), start=1):
            for traj in _as_list(trajs):
                ens = _md_ensemble(target, traj, f"MD data for state {_state_name(state)!r}")
                u = energies.reduced(target, ens)
                lp = _generator_log_prob(generator, ens.positions, temperature)
                inside = _evaluate_state(state, target, ens.positions)
                n_all = len(ens)
                if not inside.any():
                    raise InsufficientSamplesError(f"no MD frame lies in state {_state_name(state)!r}")
                keep = np.flatnonzero(inside)
                g = 1.0
                if decorrelate:
                    sub, g = _subsample_md(_Ensemble(positions=ens.positions[keep], valid=ens.valid[keep],
                                                     system=target, temperature=temperature),
                                           [u[keep], np.where(np.isfinite(lp[keep]), lp[keep], 0.0)])
                    step = max(1, int(round(g)))
                    keep = keep[::step]
                notes.append(f"MD in {_state_name(state)!r}: {inside.sum()} of {n_all} frames inside, "
                             f"statistical inefficiency {g:.1f}, kept {keep.size}")
                md = _Ensemble(positions=ens.positions[keep], valid=ens.valid[keep], system=target,
                               temperature=temperature)
                columns.append((md, u[keep], -lp[keep], k))
                N_k[k] += keep.size
        # rows: generator, A-restricted, B-restricted; columns grouped by sampled state
        blocks, masks_a, masks_b = [], [], []
        order = [columns[0]] + sorted(columns[1:], key=lambda c: c[3])
        for col in order:
            ens, u, u_gen = col[0], col[1], col[2]
            in_a = _evaluate_state(state_a, target, ens.positions) & ens.valid
            in_b = _evaluate_state(state_b, target, ens.positions) & ens.valid
            masks_a.append(in_a)
            masks_b.append(in_b)
            blocks.append(np.stack([u_gen, np.where(in_a, u, math.inf), np.where(in_b, u, math.inf)]))
        u_kn = np.concatenate(blocks, axis=1)
        in_a, in_b = np.concatenate(masks_a), np.concatenate(masks_b)
        for name, mask in ((name_a, in_a), (name_b, in_b)):
            if not mask.any():
                raise InsufficientSamplesError(f"state {name!r} holds no samples (BG or MD); check its "
                                               "definition, or give MD frames inside it")
        if (in_a & in_b).any():
            raise ValueError(f"states {name_a!r} and {name_b!r} overlap ({int((in_a & in_b).sum())} "
                             "configurations in both)")
        mbar = _solve_mbar(u_kn, np.asarray(N_k))
        f, cov = _mbar_covariance(mbar)
        with np.errstate(divide="ignore"):
            lwa, lwb = np.log(mbar.W_nk[:, 1]), np.log(mbar.W_nk[:, 2])
        overlap_matrix = np.asarray(mbar.compute_overlap()["matrix"])
        # row k: how much of state k's (few) samples' weight the generator state shares; the column
        # element O[0, k] would scale with N_k / N and look small even for a perfect generator
        overlap = tuple(float(overlap_matrix[k, 0]) for k in (1, 2) if N_k[k] > 0)
    finally:
        energies.close()
    da, db = _diag_from_log_w(lwa), _diag_from_log_w(lwb)
    for name, d in ((name_a, da), (name_b, db)):
        if d is None or d.ess < min_ess:
            raise InsufficientSamplesError(
                f"state {name!r} holds only {0 if d is None else d.ess:.1f} effective samples (Kish ESS of "
                f"MBAR's weights), below min_ess={min_ess:g}; give more MD frames in it or more BG samples")
    delta = float(f[2] - f[1])
    err = float(math.sqrt(max(cov[1, 1] + cov[2, 2] - 2 * cov[1, 2], 0.0)))
    notes.append(f"MBAR over generator, {name_a}-restricted and {name_b}-restricted states, N_k = {N_k}; "
                 f"overlap generator-state {', '.join(f'{o:.3f}' for o in overlap) or 'n/a (no MD)'}")
    result = StateFreeEnergy(state_a=name_a, state_b=name_b, delta_a_kT=delta, error_kT=err,
                             temperature=temperature, ess_a=da.ess, ess_b=db.ess, n_a=int(in_a.sum()),
                             n_b=int(in_b.sum()), diagnostics=reweighting.diagnose(s.log_weights, warn=False),
                             diagnostics_a=da, diagnostics_b=db, per_generator_kT=(delta,), method="mbar",
                             notes=tuple(notes), overlap=overlap)
    if warn and not result.reliable:
        warnings.warn(f"MBAR weights for a state are heavy-tailed (Pareto k {da.pareto_k:.2f}, "
                      f"{db.pareto_k:.2f}) or the generator overlaps poorly with a state (overlap "
                      f"{overlap}, < {MIN_OVERLAP}): the asymptotic error may understate the true error",
                      RuntimeWarning, stacklevel=2)
    return result


# ---------------------------------------------------------------------- thermodynamic states
@dataclass(frozen=True)
class TwoGeneratorEstimate:
    """The seed's two-generator estimate ``Delta f = <J_KL^B> - <J_KL^A>`` (reduced).

    ``J_KL^k = E_{x ~ p_k}[u_k(x) + log p_k(x)] = f_k + KL(p_k || mu_k) >= f_k``: each term is an upper
    bound on the reduced free energy ``f_k = -log Z_k`` of its state, so the difference is biased by
    ``KL_B - KL_A`` (the difference of the two generators' errors), of either sign; it is not an
    unbiased estimate and its error bar below is the sampling error only.

    Attributes
    ----------
    j_kl_a, j_kl_b : float
        Sample means of ``u + log p`` (reduced, dimensionless) of the generators for states A and B.
    delta_f : float
        ``j_kl_b - j_kl_a``.
    error : float
        Standard error of ``delta_f`` from sampling (not the bias).
    delta_a_kJ_mol : float
        ``kT_B j_kl_b - kT_A j_kl_a`` (kJ/mol).
    kl_a, kl_b : float
        ``J_KL - f`` of each generator with ``f`` from the unbiased estimate (NaN if none): estimated KL
        divergences, whose difference ``bias`` is the two-generator estimate's bias.
    n_excluded : int
        Zero-weight samples left out of the means (their ``J_KL`` term is infinite).
    """

    j_kl_a: float
    j_kl_b: float
    delta_f: float
    error: float
    delta_a_kJ_mol: float
    kl_a: float = math.nan
    kl_b: float = math.nan
    n_excluded: int = 0

    @property
    def bias(self) -> float:
        """Estimated bias ``KL_B - KL_A`` of ``delta_f`` (reduced)."""
        return self.kl_b - self.kl_a

    def as_dict(self) -> dict:
        """Plain dictionary for JSON."""
        return _jsonable({**asdict(self), "bias": self.bias})

    def __str__(self) -> str:
        return (f"two-generator <J_KL^B> - <J_KL^A> = {self.delta_f:.3f} +- {self.error:.3f} (reduced; "
                f"{self.delta_a_kJ_mol:.3f} kJ/mol), a difference of two upper bounds with bias KL_B - KL_A "
                f"= {self.kl_b:.3f} - {self.kl_a:.3f} = {self.bias:.3f}")


@dataclass(frozen=True)
class ThermodynamicFreeEnergy:
    """Free-energy difference between two thermodynamic states A and B sharing a topology.

    Attributes
    ----------
    label_a, label_b : str
        Descriptions of the states (system name and temperature).
    temperature_a, temperature_b : float
        K.
    delta_f : float
        Reduced difference ``f_B - f_A`` with ``f = A/kT`` (dimensionless; unambiguous across
        temperatures).
    error_f : float
        Its standard error (MBAR/BAR/EXP asymptotic).
    delta_a_kJ_mol : float
        ``A_B - A_A = kT_B f_B - kT_A f_A`` in kJ/mol. Needs absolute ``f`` (a normalised generator
        reference) when the temperatures differ, else NaN; across temperatures it depends on the unit
        of length of the configurational measure (nm here), as any absolute configurational A does.
    error_kJ_mol : float
        Its standard error (with the covariance of ``f_A`` and ``f_B``).
    method : str
        ``"mbar"``, ``"bar"`` or ``"exp"``.
    n_samples : dict
        Samples used per sampled state (after decorrelating MD).
    diagnostics_a, diagnostics_b : WeightDiagnostics or None
        Weights of all samples for states A and B (MBAR's mixture weights, or the importance weights).
    two_generator : TwoGeneratorEstimate or None
        The seed's estimate, when sample sets of generators for both states were given.
    generator_consistency : float
        Largest ``|f_gen_j - f_gen_0|`` MBAR finds between generator states, which are all exactly
        normalised (0 in theory; large values flag poor overlap). NaN with fewer than two.
    notes : tuple of str
        What was done (estimators, decorrelation).
    """

    label_a: str
    label_b: str
    temperature_a: float
    temperature_b: float
    delta_f: float
    error_f: float
    delta_a_kJ_mol: float
    error_kJ_mol: float
    method: str
    n_samples: dict = field(default_factory=dict)
    diagnostics_a: WeightDiagnostics | None = None
    diagnostics_b: WeightDiagnostics | None = None
    two_generator: TwoGeneratorEstimate | None = None
    generator_consistency: float = math.nan
    notes: tuple[str, ...] = ()

    @property
    def delta_a_kcal_mol(self) -> float:
        """``A_B - A_A`` in kcal/mol."""
        return self.delta_a_kJ_mol / KJ_PER_KCAL

    @property
    def error_kcal_mol(self) -> float:
        """Error in kcal/mol."""
        return self.error_kJ_mol / KJ_PER_KCAL

    @property
    def reliable(self) -> bool:
        """False when the weights for either state have Pareto k >= 0.7, or the estimator could not
        give a finite error (no overlap)."""
        return math.isfinite(self.error_f) and all(d is None or d.reliable
                                                   for d in (self.diagnostics_a, self.diagnostics_b))

    def as_dict(self) -> dict:
        """Plain dictionary for JSON."""
        out = asdict(self)
        out["two_generator"] = self.two_generator.as_dict() if self.two_generator is not None else None
        out.update(delta_a_kcal_mol=self.delta_a_kcal_mol, error_kcal_mol=self.error_kcal_mol,
                   reliable=self.reliable)
        return _jsonable(out)

    def __str__(self) -> str:
        kj = (f"{self.delta_a_kJ_mol:.3f} +- {self.error_kJ_mol:.3f} kJ/mol"
              if math.isfinite(self.delta_a_kJ_mol)
              else "kJ/mol undetermined (different temperatures without a normalised reference)")
        flag = "" if self.reliable else (" [UNRELIABLE: Pareto k >= 0.7]" if math.isfinite(self.error_f)
                                         else " [UNRELIABLE: no finite error, no overlap]")
        text = (f"f({self.label_b}) - f({self.label_a}) = {self.delta_f:.3f} +- {self.error_f:.3f} (reduced, "
                f"{self.method.upper()}); A_B - A_A = {kj}; weights A: {_fmt_diag(self.diagnostics_a)}; "
                f"B: {_fmt_diag(self.diagnostics_b)}{flag}")
        if self.two_generator is not None:
            text += f"; {self.two_generator}"
        return text


def _label(system: MolecularSystem) -> str:
    return f"{system.name} at {system.temperature:g} K"


@dataclass
class _Ensemble:
    """Configurations drawn from one sampled state: a generator (at a temperature) or MD at a target."""

    positions: np.ndarray
    valid: np.ndarray  # may carry weight for a target (finite, in domain, right chirality)
    system: MolecularSystem  # the sampled state's system (for energies it already carries)
    temperature: float
    energies: np.ndarray | None = None  # reduced at (system, temperature)
    log_prob: np.ndarray | None = None  # generator sets: own log density
    generator: Any = None
    kind: str = "md"
    own_state: int = -1  # row index of the state this ensemble samples

    def __len__(self) -> int:
        return self.positions.shape[0]


class _Energies:
    """Reduced energies of targets on ensembles, reusing stored energies for the same openmm.System."""

    def __init__(self):
        self._evaluators: dict[int, Any] = {}

    def reduced(self, target: MolecularSystem, ens: _Ensemble) -> np.ndarray:
        out = np.full(len(ens), math.inf)
        if ens.energies is not None and ens.system.system is target.system:
            with np.errstate(invalid="ignore"):
                out = ens.energies * (ens.temperature / target.temperature)
        else:
            ok = ens.valid
            if ok.any():
                from .energy import OpenMMEnergy

                key = id(target.system)
                if key not in self._evaluators:
                    self._evaluators[key] = OpenMMEnergy(target.system, temperature=300.0,
                                                         reference_positions=target.positions)
                energy = self._evaluators[key]
                with torch.no_grad():
                    u300 = energy(torch.as_tensor(ens.positions[ok], dtype=torch.float64)).numpy()
                out[ok] = u300 * (300.0 / target.temperature)
        out = np.where(ens.valid, out, math.inf)
        return np.where(np.isnan(out), math.inf, out)

    def close(self):
        for e in self._evaluators.values():
            e.close()


def _generator_log_prob(gen, positions: np.ndarray, temperature: float, batch: int = 4096) -> np.ndarray:
    out = np.full(positions.shape[0], -math.inf)
    finite = np.isfinite(positions).all(axis=(1, 2))
    idx = np.where(finite)[0]
    with torch.no_grad():
        for start in range(0, idx.size, batch):
            sel = idx[start:start + batch]
            out[sel] = gen.log_prob(positions[sel], temperature=temperature).cpu().numpy()
    return np.where(np.isnan(out), -math.inf, out)


def _md_ensemble(system: MolecularSystem, traj, what: str) -> _Ensemble:
    from .simulation import check_trajectory

    t = check_trajectory(system, traj)
    xyz = np.asarray(t.xyz, dtype=np.float64)
    if xyz.shape[0] == 0:
        raise ValueError(f"{what}: the trajectory has no frames")
    if system.free_dims is not None and not system.free_dims.all():
        # a generator lives on the free coordinates only (e.g. the toy systems' plane z = 0): put MD
        # frames there too, so that every state's density is on the same space (exact where the frozen
        # coordinates decouple, as the toy systems' confinement does)
        frozen = ~system.free_dims
        xyz[:, frozen] = system.positions[frozen]
    return _Ensemble(positions=xyz, valid=np.ones(xyz.shape[0], dtype=bool), system=system,
                     temperature=system.temperature, kind="md")


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [value]


class _MBARProblem:
    """Rows: generator states (one per sample set), then target/MD states. Columns: all configurations."""

    def __init__(self, sets: list[Samples], generators: list, targets: list[MolecularSystem],
                 md: list[tuple[int, Any]]):
        self.targets = targets
        self.ensembles: list[_Ensemble] = []
        self.n_gen = len(sets)
        for g, s in enumerate(sets):
            valid = np.isfinite(s.log_weights)
            self.ensembles.append(_Ensemble(positions=np.asarray(s.positions, dtype=np.float64), valid=valid,
                                            system=s.system, temperature=float(s.temperature),
                                            energies=s.energies, log_prob=s.log_prob,
                                            generator=generators[g] if generators else None,
                                            kind="generator", own_state=g))
        for k, traj in md:
            ens = _md_ensemble(targets[k], traj, f"MD data for {_label(targets[k])}")
            ens.own_state = self.n_gen + k
            self.ensembles.append(ens)
        self.n_states = self.n_gen + len(targets)

    def counts(self, N_k: np.ndarray) -> dict[str, int]:
        """Samples per sampled state, labelled."""
        labels = [f"generator {g + 1} at {self.ensembles[g].temperature:g} K" for g in range(self.n_gen)]
        labels += [f"MD {_label(t)}" for t in self.targets]
        return {lab: int(n) for lab, n in zip(labels, N_k) if n > 0}

    def u_kn(self, energies: _Energies) -> tuple[np.ndarray, np.ndarray]:
        """``u_kn [K, N]`` and ``N_k [K]`` with columns grouped by sampled state (row order)."""
        order = sorted(range(len(self.ensembles)), key=lambda i: self.ensembles[i].own_state)
        self.order = order
        blocks = []
        N_k = np.zeros(self.n_states, dtype=int)
        for i in order:
            ens = self.ensembles[i]
            N_k[ens.own_state] += len(ens)
            rows = np.empty((self.n_states, len(ens)))
            for g in range(self.n_gen):
                gen_ens = self.ensembles[g]
                if ens is gen_ens:
                    lp = ens.log_prob
                else:
                    if gen_ens.generator is None:
                        raise ValueError("several sample sets or MD data need the generators themselves "
                                         "(generators=[...], one per sample set) to evaluate each "
                                         "generator's density on the other configurations")
                    lp = _generator_log_prob(gen_ens.generator, ens.positions, gen_ens.temperature)
                u = -lp
                if ens is gen_ens:
                    # out-of-domain draws count towards the generator's normalisation but no target's
                    u = np.where(np.isfinite(u), u, 0.0)
                rows[g] = u
            for k, target in enumerate(self.targets):
                rows[self.n_gen + k] = energies.reduced(target, ens)
            blocks.append(rows)
        u = np.concatenate(blocks, axis=1)
        keep = np.isfinite(u).any(axis=0)
        if not keep.all():  # a configuration impossible in every state (e.g. NaN MD frame): cannot occur
            raise ValueError(f"{int((~keep).sum())} configurations have infinite energy in every state")
        return u, N_k


def _initial_f(u_kn: np.ndarray, N_k: np.ndarray) -> np.ndarray:
    """Starting free energies for MBAR: EXP from the most sampled state (columns grouped by state).

    Reduced free energies of molecular states relative to a generator differ by hundreds; from zeros
    pymbar's solver may stop unconverged."""
    from scipy.special import logsumexp

    N_k = np.asarray(N_k)
    j = int(np.argmax(N_k))
    start = int(N_k[:j].sum())
    cols = u_kn[:, start:start + int(N_k[j])]
    with np.errstate(invalid="ignore"):
        du = cols - cols[j][None, :]
    du = np.where(np.isfinite(du), du, np.inf)
    f = np.array([-(logsumexp(-row) - math.log(row.size)) if np.isfinite(row).any() else np.nan
                  for row in du])
    finite = f[np.isfinite(f)]
    f = np.where(np.isfinite(f), f, finite.max() if finite.size else 0.0)
    return f - f[0]


def _solve_mbar(u_kn: np.ndarray, N_k: np.ndarray):
    pymbar = pymbar_module()
    # pymbar's default protocol; quiet its informational logging
    logger = logging.getLogger("pymbar")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # pymbar needs finite entries: "impossible" is a reduced energy far above any finite one
            finite = u_kn[np.isfinite(u_kn)]
            big = float(np.max(np.abs(finite))) + 1e6 if finite.size else 1e6
            u_safe = np.where(np.isfinite(u_kn), u_kn, big)
            mbar = pymbar.MBAR(u_safe, N_k, initial_f_k=_initial_f(u_kn, N_k))
    finally:
        logger.setLevel(level)
    return mbar


def _mbar_covariance(mbar) -> tuple[np.ndarray, np.ndarray]:
    """``f_k`` relative to state 0 and the covariance of those differences ``[K, K]``."""
    res = mbar.compute_free_energy_differences(return_theta=True)
    f = np.asarray(res["Delta_f"])[0]
    theta = np.asarray(res["Theta"])
    cov = theta - theta[0][None, :] - theta[:, 0][:, None] + theta[0, 0]
    return f, cov


def _subsample_md(ens: _Ensemble, observables: list[np.ndarray]) -> tuple[_Ensemble, float]:
    """Keep every g-th frame, g the largest statistical inefficiency of the observables."""
    pymbar = pymbar_module()
    g = 1.0
    for a in observables:
        a = np.asarray(a, dtype=np.float64)
        if a.size < 10 or not np.all(np.isfinite(a)) or np.ptp(a) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = max(g, float(pymbar.timeseries.statistical_inefficiency(a)))
    idx = np.unique(np.round(np.arange(0, len(ens), g)).astype(int))
    idx = idx[idx < len(ens)]
    return _Ensemble(positions=ens.positions[idx], valid=ens.valid[idx], system=ens.system,
                     temperature=ens.temperature, kind=ens.kind, own_state=ens.own_state), g


def _resolve_states(state_a, state_b, sets: list[Samples]) -> tuple[MolecularSystem, MolecularSystem]:
    base = next((s for s in (state_a, state_b) if isinstance(s, MolecularSystem)), None)
    if base is None:
        base = sets[0].system if sets else None
    if base is None:
        raise ValueError("give at least one state as a MolecularSystem (or samples) so that temperatures "
                         "can be resolved to a system")
    out = []
    for s in (state_a, state_b):
        if isinstance(s, MolecularSystem):
            out.append(s)
        elif isinstance(s, int | float):
            out.append(base.with_temperature(float(s)))
        else:
            raise TypeError(f"a thermodynamic state must be a MolecularSystem or a temperature in K, got "
                            f"{type(s).__name__}")
    a, b = out
    _require_same_topology(a, b, "the two thermodynamic states")
    for s in sets:
        _require_same_topology(a, s.system, "the samples and the thermodynamic states")
    for state in (a, b):
        state.require_nonperiodic("thermodynamic_free_energy")
    return a, b


def _j_kl(s: Samples, target: MolecularSystem, energies: _Energies) -> tuple[float, float, int]:
    ens = _Ensemble(positions=np.asarray(s.positions, dtype=np.float64), valid=np.isfinite(s.log_weights),
                    system=s.system, temperature=float(s.temperature), energies=s.energies, kind="generator")
    u = energies.reduced(target, ens)
    values = u + s.log_prob
    ok = np.isfinite(values)
    if ok.sum() < 2:
        raise ValueError("fewer than two finite samples for the two-generator estimate")
    v = values[ok]
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)), int((~ok).sum())


def _matches(s: Samples, target: MolecularSystem) -> bool:
    return s.system.system is target.system and math.isclose(float(s.temperature), target.temperature,
                                                             rel_tol=1e-9)


def two_generator_estimate(samples_a: Samples, samples_b: Samples, state_a: MolecularSystem | None = None,
                           state_b: MolecularSystem | None = None, f_a: float = math.nan,
                           f_b: float = math.nan) -> TwoGeneratorEstimate:
    """The seed's two-generator estimate ``Delta f_AB = <J_KL^B> - <J_KL^A>``.

    ``J_KL^k`` is the sample mean of ``u_k(x) + log p_k(x)`` over samples of the generator for state
    ``k`` (normalised density, so ``E[J_KL^k] = f_k + KL(p_k || mu_k) >= f_k``). The difference is
    biased by ``KL_B - KL_A`` and is no substitute for BAR/MBAR; report it next to them.

    Parameters
    ----------
    samples_a, samples_b : Samples
        Samples of the generators trained for states A and B (with their own log densities).
    state_a, state_b : MolecularSystem, optional
        The states (default: each set's system at its temperature).
    f_a, f_b : float
        Unbiased reduced free energies of the states relative to a normalised reference (e.g. from
        `thermodynamic_free_energy`), used only to report the KL terms (the bias).

    Returns
    -------
    TwoGeneratorEstimate
    """
    state_a = state_a or samples_a.system.with_temperature(samples_a.temperature)
    state_b = state_b or samples_b.system.with_temperature(samples_b.temperature)
    _require_same_topology(state_a, state_b, "the two thermodynamic states")
    energies = _Energies()
    try:
        ja, ea, xa = _j_kl(samples_a, state_a, energies)
        jb, eb, xb = _j_kl(samples_b, state_b, energies)
    finally:
        energies.close()
    return TwoGeneratorEstimate(j_kl_a=ja, j_kl_b=jb, delta_f=jb - ja, error=math.hypot(ea, eb),
                                delta_a_kJ_mol=_kT(state_b.temperature) * jb - _kT(state_a.temperature) * ja,
                                kl_a=ja - f_a, kl_b=jb - f_b, n_excluded=xa + xb)


def thermodynamic_free_energy(state_a: MolecularSystem | float, state_b: MolecularSystem | float,
                              samples: Samples | Sequence[Samples] | None = None, generators=None,
                              md_a=None, md_b=None, method: str = "auto", decorrelate: bool = True,
                              warn: bool = True) -> ThermodynamicFreeEnergy:
    """Free-energy difference between two thermodynamic states sharing a topology.

    Each sample set comes from a generator whose density (normalised, so ``f_gen = 0``) is a
    tractable reference state. With ``method="mbar"`` (default where there are samples) one MBAR
    (pymbar 4) solves the generator states, the two targets and any MD frames together; absolute
    reduced free energies ``f_A``, ``f_B`` then follow relative to the generator, which gives the
    kJ/mol difference across temperatures too. ``"bar"``: BAR between the generator and each target
    (pymbar ``bar``) where MD of that target exists, EXP (pymbar ``exp``) from the generator where it
    does not; without samples, BAR between the two MD ensembles. ``"exp"``: one direction only (from
    the generator, or from MD of A when that is all there is).

    Parameters
    ----------
    state_a, state_b : MolecularSystem or float
        The states; a float is a temperature (K) of the other state's system (or of the samples').
    samples : Samples or sequence of Samples, optional
        BG samples with their log densities, each set at its own temperature (K).
    generators : BoltzmannGenerator or sequence, optional
        The generator of each sample set; needed with several sets or with MD data (the density must
        be evaluated on configurations it did not draw).
    md_a, md_b : mdtraj.Trajectory, array or sequence of them, optional
        Equilibrium MD frames ``[n, n_atoms, 3]`` (nm) at state A / B. Correlated frames are
        subsampled by their statistical inefficiency when ``decorrelate``.
    method : {"auto", "mbar", "bar", "exp"}
    decorrelate : bool
        Subsample MD frames by the statistical inefficiency of their energy differences.
    warn : bool
        Warn when the weights for a state have Pareto k >= 0.7.

    Returns
    -------
    ThermodynamicFreeEnergy
        ``delta_f`` (reduced) and ``delta_a_kJ_mol`` with errors; the two-generator estimate when
        sample sets for both states are present (a set "is for" a state when it shares its
        ``openmm.System`` object and temperature).

    Examples
    --------
    >>> hot = system.with_temperature(350.0)  # doctest: +SKIP
    >>> r = thermodynamic_free_energy(system, hot, samples=[gen.sample(10000), gen.sample(10000, 350.0)],
    ...                               generators=[gen, gen])  # doctest: +SKIP
    """
    sets = _as_sample_sets(samples) if samples is not None else []
    gens = _as_list(generators)
    if gens and len(gens) != len(sets):
        raise ValueError(f"give one generator per sample set ({len(sets)} sets, {len(gens)} generators)")
    md_a, md_b = _as_list(md_a), _as_list(md_b)
    a, b = _resolve_states(state_a, state_b, sets)
    if not sets and not md_a and not md_b:
        raise ValueError("no data: give BG samples and/or MD frames of the states")
    if method == "auto":
        method = "mbar" if sets else ("bar" if md_a and md_b else "exp")
    if method not in ("mbar", "bar", "exp"):
        raise ValueError(f"method must be 'auto', 'mbar', 'bar' or 'exp', got {method!r}")
    if method in ("mbar", "bar") and sets and (len(sets) > 1 or md_a or md_b) and not gens:
        raise ValueError("with several sample sets or MD data, pass generators=[...] (one per sample set): "
                         "the generator density must be evaluated on configurations it did not draw")
    notes = []
    energies = _Energies()
    try:
        problem = _MBARProblem(sets, gens, [a, b], [(0, t) for t in md_a] + [(1, t) for t in md_b])
        # decorrelate MD ensembles on the energy difference between the two targets
        if decorrelate:
            for i, ens in enumerate(problem.ensembles):
                if ens.kind != "md":
                    continue
                du = energies.reduced(b, ens) - energies.reduced(a, ens)
                sub, g = _subsample_md(ens, [du])
                problem.ensembles[i] = sub
                notes.append(f"MD at {_label(problem.targets[ens.own_state - problem.n_gen])}: statistical "
                             f"inefficiency {g:.1f}, kept {len(sub)} of {len(ens)} frames")
        if method == "mbar":
            result = _thermo_mbar(problem, energies, a, b, notes)
        elif method == "bar":
            result = _thermo_bar(problem, energies, a, b, notes)
        else:
            result = _thermo_exp(problem, energies, a, b, notes)
        two = None
        set_a = next((s for s in sets if _matches(s, a)), None)
        set_b = next((s for s in sets if _matches(s, b)), None)
        if set_a is not None and set_b is not None and set_a is not set_b:
            fa, fb = result.pop("f_abs", (math.nan, math.nan))
            ja, ea, xa = _j_kl(set_a, a, energies)
            jb, eb, xb = _j_kl(set_b, b, energies)
            two = TwoGeneratorEstimate(j_kl_a=ja, j_kl_b=jb, delta_f=jb - ja, error=math.hypot(ea, eb),
                                       delta_a_kJ_mol=_kT(b.temperature) * jb - _kT(a.temperature) * ja,
                                       kl_a=ja - fa, kl_b=jb - fb, n_excluded=xa + xb)
        result.pop("f_abs", None)
    finally:
        energies.close()
    label_a, label_b = _label(a), _label(b)
    if label_a == label_b:  # e.g. vacuum vs implicit solvent of one molecule: say which is which
        label_a, label_b = (f"{s.name} ({s.description or 'state ' + k}) at {s.temperature:g} K"
                            for s, k in ((a, "A"), (b, "B")))
    out = ThermodynamicFreeEnergy(label_a=label_a, label_b=label_b, temperature_a=a.temperature,
                                  temperature_b=b.temperature, two_generator=two, notes=tuple(notes),
                                  **result)
    if warn and not out.reliable:
        warnings.warn("importance weights for a thermodynamic state are heavy-tailed (Pareto k >= 0.7): "
                      f"{out}", RuntimeWarning, stacklevel=2)
    return out


def _diag_from_log_w(log_w: np.ndarray) -> WeightDiagnostics | None:
    log_w = np.asarray(log_w, dtype=np.float64)
    if log_w.size == 0 or not np.isfinite(log_w).any():
        return None
    with np.errstate(invalid="ignore", divide="ignore"):
        return reweighting.diagnose(log_w, warn=False)


def _kj(a: MolecularSystem, b: MolecularSystem, f_a: float, f_b: float, cov: np.ndarray | None,
        absolute: bool, delta_f: float, err_f: float) -> tuple[float, float]:
    kta, ktb = _kT(a.temperature), _kT(b.temperature)
    if absolute:
        c = np.array([-kta, ktb])
        return ktb * f_b - kta * f_a, float(math.sqrt(max(c @ cov @ c, 0.0)))
    if math.isclose(a.temperature, b.temperature, rel_tol=1e-12):
        return kta * delta_f, kta * err_f
    return math.nan, math.nan


def _thermo_mbar(problem: _MBARProblem, energies: _Energies, a, b, notes: list) -> dict:
    u, N_k = problem.u_kn(energies)
    ka, kb = problem.n_gen, problem.n_gen + 1
    if N_k.sum() == 0:
        raise ValueError("no samples")
    mbar = _solve_mbar(u, N_k)
    f, cov = _mbar_covariance(mbar)
    delta_f = float(f[kb] - f[ka])
    err_f = float(math.sqrt(max(cov[ka, ka] + cov[kb, kb] - 2 * cov[ka, kb], 0.0)))
    with np.errstate(divide="ignore"):
        W = mbar.W_nk
        lwa, lwb = np.log(W[:, ka]), np.log(W[:, kb])
    absolute = problem.n_gen > 0
    if absolute:
        # f relative to generator 0 (normalised: f_gen = 0 exactly)
        dkj, ekj = _kj(a, b, f[ka], f[kb], cov[np.ix_([ka, kb], [ka, kb])], True, delta_f, err_f)
    else:
        dkj, ekj = _kj(a, b, math.nan, math.nan, None, False, delta_f, err_f)
    consistency = float(np.max(np.abs(f[:problem.n_gen]))) if problem.n_gen > 1 else math.nan
    notes.append(f"MBAR over {problem.n_states} states ({problem.n_gen} generator, 2 target), "
                 f"N_k = {N_k.tolist()}")
    return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="mbar",
                n_samples=problem.counts(N_k), diagnostics_a=_diag_from_log_w(lwa),
                diagnostics_b=_diag_from_log_w(lwb), generator_consistency=consistency,
                f_abs=(float(f[ka]), float(f[kb])) if absolute else (math.nan, math.nan))


def _thermo_exp(problem: _MBARProblem, energies: _Energies, a, b, notes: list) -> dict:
    pymbar = pymbar_module()
    gens = [e for e in problem.ensembles if e.kind == "generator"]
    if len(gens) > 1:
        raise ValueError("method='exp' uses one sample set; use 'mbar' for several")
    if gens:
        ens = gens[0]
        works, log_ws = [], []
        for target in (a, b):
            w = energies.reduced(target, ens) + ens.log_prob  # u_k - u_gen with u_gen = -log p
            w = np.where(np.isfinite(ens.log_prob), w, math.inf)  # out of domain: weight 0
            works.append(w)
            log_ws.append(-w)
        fs, cov = [], np.zeros((2, 2))
        for k, w in enumerate(works):
            r = _exp(pymbar, w)
            fs.append(r[0])
            cov[k, k] = r[1] ** 2
        # covariance of the two EXP estimates from the same samples (delta method)
        wa, wb = (np.exp(-(w - np.min(w[np.isfinite(w)]))) for w in works)
        n = wa.size
        cov[0, 1] = cov[1, 0] = float(np.cov(wa, wb)[0, 1] / (n * wa.mean() * wb.mean()))
        delta_f = fs[1] - fs[0]
        err_f = float(math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
        dkj, ekj = _kj(a, b, fs[0], fs[1], cov, True, delta_f, err_f)
        notes.append(f"EXP (importance sampling) from the generator to each state, {n} samples")
        return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="exp",
                    n_samples={"generator": n}, diagnostics_a=_diag_from_log_w(log_ws[0]),
                    diagnostics_b=_diag_from_log_w(log_ws[1]), f_abs=(fs[0], fs[1]))
    md = [e for e in problem.ensembles if e.kind == "md"]
    src = [e for e in md if e.own_state == problem.n_gen]
    reverse = False
    if not src:
        src, reverse = [e for e in md if e.own_state == problem.n_gen + 1], True
    ens = _concat(src)
    w = energies.reduced(b, ens) - energies.reduced(a, ens)
    w = -w if reverse else w
    df, ddf = _exp(pymbar, w)
    delta_f = -df if reverse else df
    notes.append(f"EXP from MD of state {'B' if reverse else 'A'} only ({len(ens)} frames)")
    dkj, ekj = _kj(a, b, math.nan, math.nan, None, False, delta_f, ddf)
    diag = _diag_from_log_w(-w)
    return dict(delta_f=delta_f, error_f=ddf, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="exp",
                n_samples={"md": len(ens)}, diagnostics_a=diag if reverse else None,
                diagnostics_b=None if reverse else diag)


def _concat(ensembles: list[_Ensemble]) -> _Ensemble:
    e0 = ensembles[0]
    return _Ensemble(positions=np.concatenate([e.positions for e in ensembles]),
                     valid=np.concatenate([e.valid for e in ensembles]), system=e0.system,
                     temperature=e0.temperature, kind=e0.kind, own_state=e0.own_state)


def _exp(pymbar, w: np.ndarray) -> tuple[float, float]:
    """pymbar EXP on works ``w`` (reduced); +inf works are samples of weight zero."""
    finite = np.isfinite(w)
    if not finite.any():
        raise InsufficientSamplesError("no sample has a finite weight for the target state")
    r = pymbar.other_estimators.exp(np.where(finite, w, 1e300))
    return float(r["Delta_f"]), float(r["dDelta_f"])


def _bar(pymbar, w_f: np.ndarray, w_r: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = pymbar.other_estimators.bar(np.where(np.isfinite(w_f), w_f, 1e300),
                                        np.where(np.isfinite(w_r), w_r, 1e300))
    return float(r["Delta_f"]), float(r["dDelta_f"])


def _thermo_bar(problem: _MBARProblem, energies: _Energies, a, b, notes: list) -> dict:
    pymbar = pymbar_module()
    gens = [e for e in problem.ensembles if e.kind == "generator"]
    md_a = [e for e in problem.ensembles if e.kind == "md" and e.own_state == problem.n_gen]
    md_b = [e for e in problem.ensembles if e.kind == "md" and e.own_state == problem.n_gen + 1]
    if not gens:
        if not (md_a and md_b):
            raise ValueError("BAR needs MD frames of both states (or BG samples); use method='exp' for "
                             "one side")
        ea, eb = _concat(md_a), _concat(md_b)
        w_f = energies.reduced(b, ea) - energies.reduced(a, ea)
        w_r = energies.reduced(a, eb) - energies.reduced(b, eb)
        delta_f, err_f = _bar(pymbar, w_f, w_r)
        notes.append(f"BAR between MD of A ({len(ea)} frames) and MD of B ({len(eb)} frames)")
        dkj, ekj = _kj(a, b, math.nan, math.nan, None, False, delta_f, err_f)
        return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="bar",
                    n_samples={"md_a": len(ea), "md_b": len(eb)}, diagnostics_a=_diag_from_log_w(-w_r),
                    diagnostics_b=_diag_from_log_w(-w_f))
    if len(gens) > 1:
        raise ValueError("method='bar' uses one sample set; use 'mbar' for several")
    gen_ens = gens[0]
    gen = gen_ens.generator
    fs, vs, diags = [], [], []
    for target, md in ((a, md_a), (b, md_b)):
        w_f = energies.reduced(target, gen_ens) + gen_ens.log_prob
        w_f = np.where(np.isfinite(gen_ens.log_prob), w_f, math.inf)
        if md:
            ens = _concat(md)
            log_p = _generator_log_prob(gen, ens.positions, gen_ens.temperature)
            w_r = -log_p - energies.reduced(target, ens)
            f, df = _bar(pymbar, w_f, w_r)
            notes.append(f"BAR generator -> {_label(target)} ({len(w_f)} BG samples, {len(w_r)} MD frames)")
        else:
            f, df = _exp(pymbar, w_f)
            notes.append(f"EXP generator -> {_label(target)} ({len(w_f)} BG samples; no MD of this state)")
        fs.append(f)
        vs.append(df**2)
        diags.append(_diag_from_log_w(-w_f))
    delta_f = fs[1] - fs[0]
    # the two estimates share the generator samples; their errors are positively correlated, so
    # sqrt(var_a + var_b) is conservative
    err_f = math.sqrt(vs[0] + vs[1])
    cov = np.diag(vs)
    dkj, ekj = _kj(a, b, fs[0], fs[1], cov, True, delta_f, err_f)
    notes.append("error combines the two estimates as independent (conservative: they share BG samples)")
    return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="bar",
                n_samples={"generator": len(gen_ens), "md_a": sum(len(e) for e in md_a),
                           "md_b": sum(len(e) for e in md_b)},
                diagnostics_a=diags[0], diagnostics_b=diags[1], f_abs=(fs[0], fs[1]))


# ---------------------------------------------------------------------- profiles and surfaces
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
        err = np.nanmax(self.error_kT) if np.isfinite(self.error_kT).any() else math.nan
        return (f"free-energy profile along {self.coordinate} ({self.unit}) at {self.temperature:g} K, "
                f"{self.method}: {finite.sum()} of {finite.size} bins filled, range 0 to {top:.2f} kT, "
                f"largest error {err:.2f} kT; weights: {_fmt_diag(self.diagnostics)}")


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


def _edges(values: np.ndarray, bins, range_, bounds) -> np.ndarray:
    if isinstance(bins, int | np.integer):
        if range_ is None:
            if bounds is not None and all(np.isfinite(bounds)):
                range_ = bounds
            else:
                finite = values[np.isfinite(values)]
                range_ = (float(finite.min()), float(finite.max()))
        return np.linspace(range_[0], range_[1], int(bins) + 1)
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("bins must be a count or increasing edges")
    return edges


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
        Number of bins or edges.
    range : (float, float), optional
        Default the coordinate's ``bounds`` (or the data range for functions).
    n_bootstrap : int
        Bootstrap replicas for the errors.
    seed : int, optional

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
    sets = _as_sample_sets(samples)
    system = sets[0].system
    for s in sets[1:]:
        _require_same_topology(system, s.system, "sample sets")
    name, function, unit, periodic, bounds = _coordinate(system, coordinate)
    values = np.concatenate([_values(function, s.positions) for s in sets])
    log_w = _pooled_log_weights(sets)
    log_w = np.where(np.isfinite(values), log_w, -math.inf)
    edges = _edges(values, bins, range, bounds)
    v = np.where(np.isfinite(values), values, edges[0] - 1.0)  # weight zero anyway, out of range
    density, err, edges = reweighting.reweighted_histogram(v, log_w, bins=edges, n_bootstrap=n_bootstrap,
                                                           seed=seed)
    F, dF = _profile_from_density(density, err)
    idx = np.digitize(v, edges) - 1
    ess = np.full(edges.size - 1, 0.0)
    k_bins = np.full(edges.size - 1, np.nan)
    w = reweighting.normalized_weights(log_w)
    for b in np.unique(idx[(idx >= 0) & (idx < ess.size)]):
        wb = w[idx == b]
        if wb.sum() > 0:
            ess[b] = wb.sum() ** 2 / np.sum(wb**2)
            with np.errstate(invalid="ignore", divide="ignore"):
                k_bins[b] = reweighting.pareto_k(log_w[idx == b])
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
    bins : int or (int, int)
    range : ((float, float), (float, float)), optional
        Default the coordinates' bounds.

    Returns
    -------
    FreeEnergySurface

    Examples
    --------
    >>> surface = free_energy_surface(samples)  # doctest: +SKIP
    >>> surface.free_energy_kT.shape  # doctest: +SKIP
    (60, 60)
    """
    sets = _as_sample_sets(samples)
    system = sets[0].system
    nx, fx, ux, _, bx = _coordinate(system, coordinate_x)
    ny, fy, uy, _, by = _coordinate(system, coordinate_y)
    vx = np.concatenate([_values(fx, s.positions) for s in sets])
    vy = np.concatenate([_values(fy, s.positions) for s in sets])
    log_w = _pooled_log_weights(sets)
    ok = np.isfinite(vx) & np.isfinite(vy) & np.isfinite(log_w)
    log_w = np.where(ok, log_w, -math.inf)
    w = reweighting.normalized_weights(log_w)
    bins_xy = (bins, bins) if isinstance(bins, int | np.integer) else bins
    ex = _edges(vx[ok], bins_xy[0], None if range is None else range[0], bx)
    ey = _edges(vy[ok], bins_xy[1], None if range is None else range[1], by)
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
    sets = _as_sample_sets(samples) if samples is not None else []
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
    energies = _Energies()
    try:
        problem = _MBARProblem(sets, gens, targets, md)
        if decorrelate:
            for i, ens in enumerate(problem.ensembles):
                if ens.kind == "md":
                    problem.ensembles[i], _ = _subsample_md(ens, [energies.reduced(target, ens)])
        u, N_k = problem.u_kn(energies)
        mbar = _solve_mbar(u, N_k)
        positions = np.concatenate([problem.ensembles[i].positions for i in problem.order])
        values = _values(function, positions)
        edges = _edges(values[np.isfinite(values)], bins, range, bounds)
        idx = np.digitize(np.where(np.isfinite(values), values, edges[0] - 1.0), edges) - 1
        n_bins = edges.size - 1
        A = np.zeros((n_bins, values.size))
        inside = (idx >= 0) & (idx < n_bins)
        A[idx[inside], np.where(inside)[0]] = 1.0
        u_target = u[problem.n_gen]
        # pymbar cannot take an observable that is zero everywhere (empty bin): those stay at p = 0
        filled = (A * np.isfinite(u_target)[None, :]).sum(axis=1) > 0
        p, dp = np.zeros(n_bins), np.full(n_bins, np.nan)
        if filled.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = mbar.compute_multiple_expectations(A[filled], np.where(np.isfinite(u_target), u_target,
                                                                             1e300))
            p[filled], dp[filled] = np.asarray(res["mu"]), np.asarray(res["sigma"])
        widths = np.diff(edges)
        density, derr = p / widths, dp / widths
        F, dF = _profile_from_density(np.where(p > 0, density, 0.0), derr)
        with np.errstate(divide="ignore"):
            lw = np.log(mbar.W_nk[:, problem.n_gen])
    finally:
        energies.close()
    return FreeEnergyProfile(coordinate=name, unit=unit, edges=edges, free_energy_kT=F, error_kT=dF,
                             temperature=target.temperature, ess=np.full(n_bins, np.nan), method="mbar",
                             diagnostics=_diag_from_log_w(lw), periodic=periodic)
