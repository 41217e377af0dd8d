"""MBAR machinery: sampled ensembles, reduced energies, the u_kn problem, pymbar MBAR / BAR / EXP."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ...systems import MolecularSystem
from ..samples import Samples
from ._common import InsufficientSamplesError, _label, pymbar_module


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

    def reduced(self, target: MolecularSystem, ens: _Ensemble) -> np.ndarray:
        out = np.full(len(ens), math.inf)
        if ens.energies is not None and ens.system.system is target.system:
            with np.errstate(invalid="ignore"):
                out = ens.energies * (ens.temperature / target.temperature)
        else:
            ok = ens.valid
            if ok.any():
                from ...energy import energy_for

                with torch.no_grad():
                    out[ok] = energy_for(target)(torch.as_tensor(ens.positions[ok], dtype=torch.float64)).numpy()
        out = np.where(ens.valid, out, math.inf)
        return np.where(np.isnan(out), math.inf, out)

    def close(self):
        pass  # the energies are energy_for's shared ones, owned by its cache


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

