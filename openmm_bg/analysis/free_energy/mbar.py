"""`MBARProblem`: one MBAR problem over generator samples, MD frames and target states, built once.

MBAR (pymbar 4) needs the reduced potential of every configuration in every thermodynamic state,
``u_kn [K, N]``, and the number of configurations drawn from each, ``N_k [K]``. Here the states are

- one **generator state** per BG sample set (reduced potential ``-log p_X(x)`` of that generator
  at the set's temperature; normalised, so its ``f = 0`` is known), then
- the **target states**: a `MolecularSystem` at its temperature (``u = U/kT``), or that Boltzmann
  distribution restricted to a conformational state (``u`` inside, ``+inf`` outside), each with
  any MD frames sampled from it.

`MBARProblem` evaluates ``u_kn`` once (lazily, block by block, so a query needing only some blocks
evaluates only those), solves MBAR once on first need, and answers queries without side effects:
free energies with their covariance, MBAR's per-state weights (and their diagnostics),
expectations and histograms at any state, the overlap matrix, and the individual blocks (for BAR
and EXP on the same data). Energies come from `openmm_bg.energy.energy_for` (shared contexts),
reusing a sample set's stored energies where the target is the set's own System.

Columns of ``u_kn`` are grouped by sampled state in row order (generator sets, then the MD of each
target in the order given); `MBARProblem.positions` are the configurations in that order. A
generator's own out-of-domain draws (``log p = -inf``, weight zero for every target) count towards
its ``N_k`` with ``u = 0`` in its own row, as its normalisation requires.

Examples
--------
MD at 600 K reweighted to 300 K (the toy double well, whose energy scales as 1/T):

>>> import openmm_bg
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> hot = dw.with_temperature(600.0)
>>> md = openmm_bg.simulate(hot, n_frames=400, stride=20, seed=0, platform="Reference", progress=False)
>>> problem = MBARProblem(targets=[dw, hot], md=[(1, md)], decorrelate=True)
>>> problem.u_kn.shape[0], problem.N_k.tolist() == [0, problem.u_kn.shape[1]]
(2, True)
>>> delta_f, error = problem.delta_f(0, 1)   # f(600 K) - f(300 K); 4.511 by quadrature
>>> bool(abs(delta_f - 4.511) < 3 * error)
True
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from scipy.special import logsumexp

from ...energy import energy_for
from ...systems import MolecularSystem
from ..samples import Samples
from ._common import (
    InsufficientSamplesError,
    StateLike,
    _as_list,
    _as_sample_sets,
    _check_temperature,
    _diag_from_log_w,
    _evaluate_state,
    _label,
    _require_same_topology,
    _state_name,
    pymbar_module,
)

__all__ = ["MBARProblem"]


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

    def subset(self, idx: np.ndarray) -> _Ensemble:
        return _Ensemble(positions=self.positions[idx], valid=self.valid[idx], system=self.system,
                         temperature=self.temperature,
                         energies=None if self.energies is None else self.energies[idx],
                         log_prob=None if self.log_prob is None else self.log_prob[idx],
                         generator=self.generator, kind=self.kind, own_state=self.own_state)


@dataclass(frozen=True)
class MDSubsampling:
    """What happened to one MD trajectory before it entered the problem.

    Attributes
    ----------
    state : int
        Row of the target state it samples.
    n_frames : int
        Frames given.
    n_inside : int
        Frames inside the state's restriction (all frames for an unrestricted target).
    statistical_inefficiency : float
        ``g`` used to subsample (1 without decorrelation).
    n_kept : int
        Frames used.
    """

    state: int
    n_frames: int
    n_inside: int
    statistical_inefficiency: float
    n_kept: int


def _target_energies(target: MolecularSystem, ens: _Ensemble) -> np.ndarray:
    """Reduced energies ``[n]`` of ``target`` on ``ens``: +inf where not valid or failed; stored energies
    reused (rescaled by temperature) where ``ens`` already carries them for the same System."""
    if ens.energies is not None and ens.system.system is target.system:
        with np.errstate(invalid="ignore"):
            out = ens.energies * (ens.temperature / target.temperature)
    else:
        out = np.full(len(ens), math.inf)
        ok = ens.valid
        if ok.any():
            with torch.no_grad():
                out[ok] = energy_for(target)(torch.as_tensor(ens.positions[ok], dtype=torch.float64)).numpy()
    out = np.where(ens.valid, out, math.inf)
    return np.where(np.isnan(out), math.inf, out)


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
    from ...systems.trajectory import check_trajectory

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


def _statistical_inefficiency(observables: list[np.ndarray]) -> float:
    """Largest statistical inefficiency (pymbar) of the observables; constant, short or non-finite ones
    are skipped."""
    pymbar = pymbar_module()
    g = 1.0
    for a in observables:
        a = np.asarray(a, dtype=np.float64)
        if a.size < 10 or not np.all(np.isfinite(a)) or np.ptp(a) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            g = max(g, float(pymbar.timeseries.statistical_inefficiency(a)))
    return g


def _subsample_indices(n: int, g: float) -> np.ndarray:
    """Every g-th of ``n`` frames (rounded), as pymbar's ``subsample_correlated_data``."""
    idx = np.unique(np.round(np.arange(0, n, g)).astype(int))
    return idx[idx < n]


def _initial_f(u_kn: np.ndarray, N_k: np.ndarray) -> np.ndarray:
    """Starting free energies for MBAR: EXP from the most sampled state (columns grouped by state).

    Reduced free energies of molecular states relative to a generator differ by hundreds; from zeros
    pymbar's solver may stop unconverged."""
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


def _exp(pymbar, w: np.ndarray, what: str = "the target state") -> tuple[float, float]:
    """pymbar EXP on works ``w`` (reduced); +inf works are samples of weight zero."""
    finite = np.isfinite(w)
    if not finite.any():
        raise InsufficientSamplesError(f"no sample has a finite weight for {what} (all {w.size} works are "
                                       "infinite: failed energies or configurations impossible there)")
    r = pymbar.other_estimators.exp(np.where(finite, w, 1e300))
    return float(r["Delta_f"]), float(r["dDelta_f"])


def _bar(pymbar, w_f: np.ndarray, w_r: np.ndarray) -> tuple[float, float]:
    """pymbar BAR on forward and reverse works (reduced); +inf works are samples of weight zero."""
    for w, which in ((w_f, "forward"), (w_r, "reverse")):
        if not np.isfinite(w).any():
            raise InsufficientSamplesError(f"BAR: no {which} sample has a finite weight in the other state (all "
                                           f"{w.size} works are infinite: failed energies or no overlap)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = pymbar.other_estimators.bar(np.where(np.isfinite(w_f), w_f, 1e300),
                                        np.where(np.isfinite(w_r), w_r, 1e300))
    return float(r["Delta_f"]), float(r["dDelta_f"])


def _read_only(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


class MBARProblem:
    """An MBAR problem over generator sample sets, MD frames and target states; built once, then queried.

    Rows (states): one generator state per sample set, then the targets in the order given.
    Columns: every configuration, grouped by the state that sampled it.

    Parameters
    ----------
    samples : Samples or sequence of Samples, optional
        BG samples with their log densities; each set is a generator state at the set's temperature.
    generators : BoltzmannGenerator or sequence, optional
        The generator of each sample set (one per set), needed wherever a generator's density must be
        evaluated on configurations it did not draw (several sets, or MD).
    targets : sequence of MolecularSystem or (MolecularSystem, state)
        Target thermodynamic states (system at its temperature); with a state (name, `State` or
        boolean function of positions), the Boltzmann distribution restricted to it.
    md : sequence of (int, trajectory)
        MD frames (``mdtraj.Trajectory`` or array ``[n, n_atoms, 3]`` nm) and the index *into targets*
        of the state they sample. For a restricted target, frames outside the state are dropped.
    decorrelate : bool or sequence, optional
        Subsample each MD trajectory by the largest statistical inefficiency of some observables:
        ``True`` = the reduced potential of its own state; or a sequence of observables, each a row
        index ``k`` (``u_k``), a pair ``(j, k)`` (``u_k - u_j``), or ``"own"``.

    Attributes
    ----------
    n_generators : int
        Generator states (rows ``0 .. n_generators - 1``).
    n_states : int
        ``K``.
    targets : list of MolecularSystem
        The target systems (rows ``n_generators ..``).
    subsampling : list of MDSubsampling
        One record per MD trajectory, in the order given.

    Raises
    ------
    ValueError
        No data, mismatched topologies or generator count, a bad ``md`` index or ``decorrelate`` entry.
    InsufficientSamplesError
        No MD frame of a restricted target lies inside its state.

    Examples
    --------
    >>> problem = MBARProblem(samples, gen, targets=[system], md=[(0, traj)])  # doctest: +SKIP
    >>> f, cov = problem.free_energies()        # f relative to the generator (f = 0)  # doctest: +SKIP
    >>> p, dp = problem.histogram(phi, edges, state=1)  # bin probabilities at the target  # doctest: +SKIP
    """

    def __init__(self, samples: Samples | Sequence[Samples] | None = None, generators=None,
                 targets: Sequence[MolecularSystem | tuple[MolecularSystem, StateLike]] = (),
                 md: Sequence[tuple[int, Any]] = (), decorrelate: bool | Sequence = False):
        empty = samples is None or (isinstance(samples, list | tuple) and len(samples) == 0)
        sets = [] if empty else _as_sample_sets(samples)
        gens = _as_list(generators)
        if gens and len(gens) != len(sets):
            raise ValueError(f"give one generator per sample set ({len(sets)} sets, {len(gens)} generators)")
        self.targets: list[MolecularSystem] = []
        self._restrictions: list[StateLike | None] = []
        for t in targets:
            system, state = (t if isinstance(t, tuple | list) else (t, None))
            if not isinstance(system, MolecularSystem):
                raise TypeError("a target must be a MolecularSystem or a (MolecularSystem, state) pair, got "
                                f"{type(system).__name__}")
            _check_temperature(system, f"target {len(self.targets) + 1}")
            self.targets.append(system)
            self._restrictions.append(state)
        md = list(md)
        if not sets and not md:
            raise ValueError("no data: give BG samples and/or MD frames of the target states")
        if not self.targets and not sets:
            raise ValueError("no states: give sample sets and/or target states")
        reference = sets[0].system if sets else self.targets[0]
        for s in sets[1:]:
            _require_same_topology(reference, s.system, "sample sets")
        for system in self.targets:
            _require_same_topology(reference, system, "the sample sets and target states")
        self.n_generators = len(sets)
        self.n_states = self.n_generators + len(self.targets)
        self._ensembles: list[_Ensemble] = []
        for g, s in enumerate(sets):
            self._ensembles.append(_Ensemble(positions=np.asarray(s.positions, dtype=np.float64),
                                             valid=np.isfinite(s.log_weights), system=s.system,
                                             temperature=float(s.temperature), energies=s.energies,
                                             log_prob=s.log_prob, generator=gens[g] if gens else None,
                                             kind="generator", own_state=g))
        self._rows: dict[tuple[int, int], np.ndarray] = {}  # (state, ensemble) -> u, evaluated once
        self.subsampling: list[MDSubsampling] = []
        observables = self._observables(decorrelate)
        for k, traj in md:
            if not (isinstance(k, int | np.integer) and not isinstance(k, bool) and 0 <= k < len(self.targets)):
                raise ValueError(f"md entries are (target index, trajectory) with 0 <= index < {len(self.targets)}, "
                                 f"got index {k!r}")
            state = self._restrictions[k]
            where = f"state {_state_name(state)!r}" if state is not None else _label(self.targets[k])
            ens = _md_ensemble(self.targets[k], traj, f"MD data for {where}")
            ens.own_state = self.n_generators + int(k)
            n_frames = len(ens)
            if state is not None:
                inside = _evaluate_state(state, self.targets[k], ens.positions)
                if not inside.any():
                    raise InsufficientSamplesError(f"no MD frame lies in state {_state_name(state)!r}")
                ens = ens.subset(np.flatnonzero(inside))
            i = len(self._ensembles)
            self._ensembles.append(ens)
            g = 1.0
            if observables:
                g = _statistical_inefficiency([self._observable(obs, i) for obs in observables])
                self._subset(i, _subsample_indices(len(ens), g))
            self.subsampling.append(MDSubsampling(state=ens.own_state, n_frames=n_frames, n_inside=len(ens),
                                                  statistical_inefficiency=g, n_kept=len(self._ensembles[i])))
        # columns grouped by sampled state, in row order (a stable sort keeps the given order within a state)
        self._order = sorted(range(len(self._ensembles)), key=lambda i: self._ensembles[i].own_state)
        N_k = np.zeros(self.n_states, dtype=int)
        for ens in self._ensembles:
            N_k[ens.own_state] += len(ens)
        self._N_k = _read_only(N_k)

    # ------------------------------------------------------------------ construction helpers
    def _observables(self, decorrelate) -> list:
        if decorrelate is True:
            return ["own"]
        if decorrelate is False or decorrelate is None:
            return []
        out = list(decorrelate)
        for obs in out:
            ok = (obs == "own" or (isinstance(obs, int | np.integer) and 0 <= obs < self.n_states)
                  or (isinstance(obs, tuple) and len(obs) == 2
                      and all(isinstance(k, int | np.integer) and 0 <= k < self.n_states for k in obs)))
            if not ok:
                raise ValueError(f"decorrelate entries are 'own', a state index k or a pair (j, k) with indices "
                                 f"below {self.n_states}, got {obs!r}")
        return out

    def _observable(self, obs, i: int) -> np.ndarray:
        if obs == "own":
            return self._row(self._ensembles[i].own_state, i)
        if isinstance(obs, tuple):
            with np.errstate(invalid="ignore"):
                return self._row(obs[1], i) - self._row(obs[0], i)
        return self._row(int(obs), i)

    def _subset(self, i: int, idx: np.ndarray) -> None:
        self._ensembles[i] = self._ensembles[i].subset(idx)
        for key in [key for key in self._rows if key[1] == i]:
            self._rows[key] = self._rows[key][idx]

    def _row(self, k: int, i: int) -> np.ndarray:
        """Reduced potential ``[n_i]`` of state ``k`` on ensemble ``i`` (a generator's own draws: ``-log p``,
        +inf out of domain), evaluated once."""
        key = (k, i)
        if key not in self._rows:
            ens = self._ensembles[i]
            if k < self.n_generators:
                gen_ens = self._ensembles[k]
                if ens is gen_ens:
                    lp = ens.log_prob
                else:
                    if gen_ens.generator is None:
                        raise ValueError("several sample sets or MD data need the generators themselves "
                                         "(generators=[...], one per sample set) to evaluate each "
                                         "generator's density on the other configurations")
                    lp = _generator_log_prob(gen_ens.generator, ens.positions, gen_ens.temperature)
                u = -np.asarray(lp, dtype=np.float64)
            else:
                t = k - self.n_generators
                u = _target_energies(self.targets[t], ens)
                state = self._restrictions[t]
                if state is not None:
                    u = np.where(_evaluate_state(state, self.targets[t], ens.positions) & ens.valid, u, math.inf)
            self._rows[key] = _read_only(u)
        return self._rows[key]

    def _ensembles_of(self, state: int) -> list[int]:
        return [i for i in self._order if self._ensembles[i].own_state == state]

    # ------------------------------------------------------------------ the problem
    @property
    def N_k(self) -> np.ndarray:
        """``[K]`` int: configurations sampled from each state (read-only)."""
        return self._N_k

    @cached_property
    def u_kn(self) -> np.ndarray:
        """``[K, N]`` float64 reduced potentials (read-only; +inf where a configuration is impossible)."""
        blocks = []
        for i in self._order:
            rows = np.empty((self.n_states, len(self._ensembles[i])))
            for k in range(self.n_states):
                u = self._row(k, i)
                if k == self._ensembles[i].own_state and k < self.n_generators:
                    # out-of-domain draws count towards the generator's normalisation but no target's
                    u = np.where(np.isfinite(u), u, 0.0)
                rows[k] = u
            blocks.append(rows)
        u = np.concatenate(blocks, axis=1) if blocks else np.empty((self.n_states, 0))
        keep = np.isfinite(u).any(axis=0)
        if not keep.all():  # a configuration impossible in every state (e.g. NaN MD frame): cannot occur
            raise ValueError(f"{int((~keep).sum())} configurations have infinite energy in every state")
        return _read_only(u)

    @cached_property
    def positions(self) -> np.ndarray:
        """``[N, n_atoms, 3]`` nm: the configurations, in the column order of `u_kn` (read-only)."""
        return _read_only(np.concatenate([self._ensembles[i].positions for i in self._order]))

    @property
    def labels(self) -> list[str]:
        """A description of each state (row)."""
        out = [f"generator {g + 1} at {self._ensembles[g].temperature:g} K" for g in range(self.n_generators)]
        for t, state in zip(self.targets, self._restrictions):
            out.append(_label(t) if state is None else f"{_label(t)} in {_state_name(state)!r}")
        return out

    def counts(self) -> dict[str, int]:
        """Configurations per sampled state, labelled (``"MD ..."`` for targets), states with none left out."""
        labels = self.labels[:self.n_generators] + [f"MD {lab}" for lab in self.labels[self.n_generators:]]
        return {lab: int(n) for lab, n in zip(labels, self.N_k) if n > 0}

    def reduced_potential(self, state: int, sampled_from: int) -> np.ndarray:
        """Reduced potential of ``state`` on the configurations sampled from ``sampled_from`` (a block of
        `u_kn` before the generator's own out-of-domain draws are set to 0: those are +inf here).

        Evaluates only that block (e.g. for BAR or EXP between two states on the same data).

        Returns
        -------
        numpy.ndarray
            ``[N_k[sampled_from]]`` float64 (read-only).
        """
        for k in (state, sampled_from):
            if not 0 <= k < self.n_states:
                raise ValueError(f"state indices are 0 .. {self.n_states - 1}, got {k}")
        parts = [self._row(state, i) for i in self._ensembles_of(sampled_from)]
        return _read_only(np.concatenate(parts)) if parts else _read_only(np.empty(0))

    def support(self, state: int) -> np.ndarray:
        """``[N]`` bool: configurations possible in ``state`` (finite ``u``; inside a restricted state)."""
        return np.isfinite(self.u_kn[state])

    # ------------------------------------------------------------------ MBAR
    @cached_property
    def mbar(self):
        """The solved ``pymbar.MBAR`` (solved on first access)."""
        if self.N_k.sum() == 0:
            raise ValueError("no samples")
        u_kn = self.u_kn
        for k in range(self.n_generators, self.n_states):
            if not np.isfinite(u_kn[k]).any():  # MBAR would give it a meaningless f from the placeholder energy
                raise InsufficientSamplesError(
                    f"no configuration has weight > 0 in the state {self.labels[k]} (its reduced energy is "
                    f"infinite on all {u_kn.shape[1]}: failed energies, configurations out of domain or outside "
                    "the state); check that the samples and MD belong to this system, or give MD frames of it")
        return _solve_mbar(u_kn, self.N_k)

    @cached_property
    def _free_energies(self) -> tuple[np.ndarray, np.ndarray]:
        res = self.mbar.compute_free_energy_differences(return_theta=True)
        f = np.asarray(res["Delta_f"])[0]
        theta = np.asarray(res["Theta"])
        cov = theta - theta[0][None, :] - theta[:, 0][:, None] + theta[0, 0]
        return _read_only(f), _read_only(cov)

    def free_energies(self) -> tuple[np.ndarray, np.ndarray]:
        """Reduced free energies ``f [K]`` relative to state 0 and the covariance ``[K, K]`` of those
        differences (pymbar's asymptotic estimate). With a generator as state 0, ``f`` is absolute."""
        return self._free_energies

    def delta_f(self, a: int, b: int) -> tuple[float, float]:
        """``f_b - f_a`` (reduced) and its standard error."""
        f, cov = self._free_energies
        return float(f[b] - f[a]), float(math.sqrt(max(cov[a, a] + cov[b, b] - 2 * cov[a, b], 0.0)))

    def log_weights(self, state: int) -> np.ndarray:
        """``[N]`` float64: log of MBAR's normalised weights of every configuration for ``state``
        (``-inf`` for weight zero), e.g. for `openmm_bg.analysis.reweighting.diagnose`."""
        with np.errstate(divide="ignore"):
            return np.log(self.mbar.W_nk[:, state])

    def weight_diagnostics(self, state: int):
        """`WeightDiagnostics` of `log_weights` for ``state`` (``None`` when every weight is zero)."""
        return _diag_from_log_w(self.log_weights(state))

    def expectations(self, observables, state: int) -> tuple[np.ndarray, np.ndarray]:
        """MBAR estimates of ``<A_m>`` at ``state`` with asymptotic errors (pymbar
        ``compute_multiple_expectations``).

        Parameters
        ----------
        observables : array-like
            ``[M, N]`` (or ``[N]``) values on every configuration, in column order.
        state : int
            Row of the state.

        Returns
        -------
        mu, sigma : numpy.ndarray
            ``[M]``; an observable that is zero wherever ``state`` is possible (an empty histogram bin)
            gets ``mu = 0`` and ``sigma = NaN``.
        """
        A = np.atleast_2d(np.asarray(observables, dtype=np.float64))
        if A.shape[1] != self.u_kn.shape[1]:
            raise ValueError(f"observables must have shape [M, {self.u_kn.shape[1]}] (one value per configuration), "
                             f"got {A.shape}")
        u = self.u_kn[state]
        filled = (A * np.isfinite(u)[None, :] != 0).any(axis=1)
        mu, sigma = np.zeros(A.shape[0]), np.full(A.shape[0], np.nan)
        if filled.any():  # pymbar cannot take an observable that is zero everywhere
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = self.mbar.compute_multiple_expectations(A[filled], np.where(np.isfinite(u), u, 1e300))
            mu[filled], sigma[filled] = np.asarray(res["mu"]), np.asarray(res["sigma"])
        return mu, sigma

    def histogram(self, values, edges, state: int) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities of the bins ``edges`` of ``values`` at ``state`` and their errors.

        Parameters
        ----------
        values : array-like
            ``[N]`` coordinate of every configuration in column order (NaN: in no bin).
        edges : array-like
            ``[n_bins + 1]`` increasing bin edges.
        state : int

        Returns
        -------
        p, error : numpy.ndarray
            ``[n_bins]`` (``p = 0``, error NaN for bins no configuration of the state falls in).
        """
        values = np.asarray(values, dtype=np.float64)
        edges = np.asarray(edges, dtype=np.float64)
        n_bins = edges.size - 1
        idx = np.digitize(np.where(np.isfinite(values), values, edges[0] - 1.0), edges) - 1
        inside = (idx >= 0) & (idx < n_bins)
        A = np.zeros((n_bins, values.size))
        A[idx[inside], np.where(inside)[0]] = 1.0
        return self.expectations(A, state)

    @cached_property
    def _overlap(self) -> np.ndarray:
        return _read_only(np.asarray(self.mbar.compute_overlap()["matrix"]))

    def overlap(self) -> np.ndarray:
        """``[K, K]`` MBAR overlap matrix (pymbar ``compute_overlap``)."""
        return self._overlap
