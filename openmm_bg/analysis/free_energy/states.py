"""Free-energy differences between conformational states of one system."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.special import logsumexp

from ..._validation import positive
from .. import reweighting
from ..reweighting import WeightDiagnostics, format_k
from ..samples import Samples
from ._common import (
    DEFAULT_MIN_ESS,
    MIN_OVERLAP,
    InsufficientSamplesError,
    StateLike,
    _as_list,
    _as_sample_sets,
    _evaluate_state,
    _jsonable,
    _KcalUnits,
    _kT,
    _pm,
    _require_proposal_density,
    _require_same_topology,
    _state_name,
)
from .mbar import MBARProblem


@dataclass(frozen=True)
class StateFreeEnergy(_KcalUnits):
    """Free-energy difference ``A_B - A_A`` between two conformational states of one system.

    Attributes
    ----------
    state_a, state_b : str
        Names (or descriptions) of the states.
    delta_a_kT : float
        ``A_B - A_A`` in kT at ``temperature``.
    error_kT : float
        Bootstrap standard error (kT); over samples, and over generators when several sets were given.
        NaN where there is no error bar (``n_bootstrap=0``); printed as "no error bar".
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
        if math.isfinite(self.error_kT):
            kj = _pm(self.delta_a_kJ_mol, self.error_kJ_mol, "kJ/mol")
            kcal = _pm(self.delta_a_kcal_mol, self.error_kcal_mol, "kcal/mol")
            values = f"{_pm(self.delta_a_kT, self.error_kT, 'kT')} ({kj}, {kcal})"
        else:  # n_bootstrap=0 (or no finite bootstrap replica): say so, never "+- nan"
            values = (f"{self.delta_a_kT:.3f} kT ({self.delta_a_kJ_mol:.3f} kJ/mol, {self.delta_a_kcal_mol:.3f} "
                      "kcal/mol; no error bar)")
        return (f"A({self.state_b}) - A({self.state_a}) = {values} at {self.temperature:g} K{gens}; "
                f"ESS in {self.state_a} {self.ess_a:.1f} (n={self.n_a}, largest weight "
                f"{100 * self.diagnostics_a.max_weight_share:.1f}%, Pareto k {format_k(self.diagnostics_a.pareto_k)}), "
                f"in {self.state_b} {self.ess_b:.1f} (n={self.n_b}, largest weight "
                f"{100 * self.diagnostics_b.max_weight_share:.1f}%, Pareto k {format_k(self.diagnostics_b.pareto_k)}); "
                f"{'generator weights' if self.method == 'mbar' else 'all weights'}: "
                f"{self.diagnostics}{flag}")


def _lineage_weights(s: Samples, w: np.ndarray, in_a: np.ndarray, in_b: np.ndarray) -> np.ndarray | None:
    """``[G, 2]`` weight in A and in B of each ancestral lineage of a set with ancestors, else None."""
    if s.ancestors is None:
        return None
    labels, size = reweighting.group_labels(s.ancestors, len(s))
    sums = np.zeros((size, 2))
    np.add.at(sums, labels, np.stack([np.where(in_a, w, 0.0), np.where(in_b, w, 0.0)], 1))
    return sums


def state_free_energy(samples: Samples | Sequence[Samples], state_a: StateLike, state_b: StateLike,
                      min_ess: float = DEFAULT_MIN_ESS, n_bootstrap: int = 200, seed: int | None = 0,
                      warn: bool = True) -> StateFreeEnergy:
    """Free-energy difference ``A_B - A_A`` between two conformational states from weighted samples.

    ``Delta A = -log(sum_{x in B} w(x) / sum_{x in A} w(x))`` in kT at the samples' temperature.
    Several sample sets (from independently trained generators of the same system at the same
    temperature) are pooled with equal weight per set (each set's weights estimate the same
    partition function), and the bootstrap resamples generators, then samples within each. For a
    set with ``ancestors`` (annealed samples: SMC particles after resampling) it resamples whole
    ancestral lineages instead of particles (`openmm_bg.analysis.reweighting.bootstrap_sums`).

    Parameters
    ----------
    samples : Samples or sequence of Samples
        Weighted BG samples; a list means independently trained generators.
    state_a, state_b : str, State or callable
        A named state of the system (``samples.system.states``), a `State`, or any function of
        positions ``[n, n_atoms, 3]`` (nm, numpy float64) returning a boolean array ``[n]``; a
        function written for an ``mdtraj.Trajectory`` gets one when positions fail.
    min_ess : float
        Minimum Kish effective sample size inside each state (> 0); below it `InsufficientSamplesError`.
    n_bootstrap : int
        Bootstrap replicas for the error: 0 (no error bar: ``error_kT`` NaN, printed as "no error bar")
        or >= 2.
    seed : int, optional
        Bootstrap seed (>= 0).
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
    min_ess = positive("min_ess", min_ess)
    n_bootstrap, seed = reweighting.check_n_bootstrap(n_bootstrap), reweighting.check_seed(seed)
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
        with np.errstate(divide="ignore"):  # a state without weight: log 0 = -inf
            return -float(logsumexp(lw_[mb_]) - logsumexp(lw_[ma_]))

    delta = estimate(lw, ma, mb)
    per_gen = tuple(estimate(a, b, c) for a, b, c in zip(log_w, in_a, in_b))
    err, err_samples = math.nan, math.nan
    if n_bootstrap > 0:
        rng = np.random.default_rng(seed)
        w = np.split(reweighting.normalized_weights(lw), np.cumsum([x.size for x in log_w])[:-1])
        lineages = [_lineage_weights(s, w[g], in_a[g], in_b[g]) for g, s in enumerate(sets)]
        G = len(sets)
        reps, reps_samples = [], []
        for _ in range(int(n_bootstrap)):
            for hierarchical, out in ((True, reps), (False, reps_samples)):
                if not hierarchical and G == 1:
                    continue
                chosen = rng.integers(0, G, G) if hierarchical else np.arange(G)
                sa = sb = 0.0
                for g in chosen:
                    if lineages[g] is not None:  # annealed / resampled: whole lineages
                        a, b = reweighting.bootstrap_sums(lineages[g], 1, rng)[0]
                        sa, sb = sa + a, sb + b
                        continue
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
        Minimum Kish ESS of MBAR's weights inside each state (> 0).
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
    min_ess = positive("min_ess", min_ess)
    sets = _as_sample_sets(samples)
    _require_proposal_density(sets, "state_free_energy_mbar")
    if len(sets) != 1:
        raise ValueError("state_free_energy_mbar takes one sample set and its generator")
    s = sets[0]
    if generator is None or not hasattr(generator, "log_prob"):
        raise TypeError("generator must be the BoltzmannGenerator that drew the samples")
    _require_same_topology(s.system, generator.system, "the samples and the generator")
    temperature = float(s.temperature)
    target = s.system.with_temperature(temperature)
    name_a, name_b = _state_name(state_a), _state_name(state_b)
    # rows: generator, A-restricted, B-restricted; MD frames of each restricted state (outside ones dropped)
    problem = MBARProblem(s, generator, targets=[(target, state_a), (target, state_b)],
                          md=[(0, t) for t in _as_list(md_a)] + [(1, t) for t in _as_list(md_b)],
                          decorrelate=["own", 0] if decorrelate else False)
    notes = [f"MD in {_state_name(state_a if r.state == 1 else state_b)!r}: {r.n_inside} of {r.n_frames} frames "
             f"inside, statistical inefficiency {r.statistical_inefficiency:.1f}, kept {r.n_kept}"
             for r in problem.subsampling]
    in_a, in_b = problem.support(1), problem.support(2)
    for name, mask in ((name_a, in_a), (name_b, in_b)):
        if not mask.any():
            raise InsufficientSamplesError(f"state {name!r} holds no samples (BG or MD); check its "
                                           "definition, or give MD frames inside it")
    if (in_a & in_b).any():
        raise ValueError(f"states {name_a!r} and {name_b!r} overlap ({int((in_a & in_b).sum())} "
                         "configurations in both)")
    N_k = problem.N_k
    delta, err = problem.delta_f(1, 2)
    # row k: how much of state k's (few) samples' weight the generator state shares; the column
    # element O[0, k] would scale with N_k / N and look small even for a perfect generator
    overlap = tuple(float(problem.overlap()[k, 0]) for k in (1, 2) if N_k[k] > 0)
    da, db = problem.weight_diagnostics(1), problem.weight_diagnostics(2)
    for name, d in ((name_a, da), (name_b, db)):
        if d is None or d.ess < min_ess:
            raise InsufficientSamplesError(
                f"state {name!r} holds only {0 if d is None else d.ess:.1f} effective samples (Kish ESS of "
                f"MBAR's weights), below min_ess={min_ess:g}; give more MD frames in it or more BG samples")
    notes.append(f"MBAR over generator, {name_a}-restricted and {name_b}-restricted states, N_k = {N_k.tolist()}; "
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

