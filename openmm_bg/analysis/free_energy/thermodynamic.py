"""Free-energy differences between thermodynamic states sharing a topology (MBAR, BAR, EXP)."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from ..._validation import temperature_kelvin
from ...systems import MolecularSystem
from .. import reweighting
from ..reweighting import WeightDiagnostics
from ..samples import Samples
from ._common import (
    _as_list,
    _as_sample_sets,
    _check_temperature,
    _diag_from_log_w,
    _fmt_diag,
    _jsonable,
    _KcalUnits,
    _kT,
    _label,
    _pm,
    _require_proposal_density,
    _require_same_topology,
    pymbar_module,
)
from .mbar import MBARProblem, _bar, _exp


@dataclass(frozen=True)
class TwoGeneratorEstimate:
    """The paper's two-generator estimate ``Delta f = <J_KL^B> - <J_KL^A>`` (reduced).

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
        bias = (f"bias KL_B - KL_A = {self.kl_b:.3f} - {self.kl_a:.3f} = {self.bias:.3f}" if math.isfinite(self.bias)
                else "bias KL_B - KL_A unknown (no unbiased estimate given)")
        return (f"two-generator <J_KL^B> - <J_KL^A> = {_pm(self.delta_f, self.error)} (reduced; "
                f"{self.delta_a_kJ_mol:.3f} kJ/mol), a difference of two upper bounds with {bias}")


@dataclass(frozen=True)
class ThermodynamicFreeEnergy(_KcalUnits):
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
        The paper's estimate, when sample sets of generators for both states were given.
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
        kj = (_pm(self.delta_a_kJ_mol, self.error_kJ_mol, "kJ/mol") if math.isfinite(self.delta_a_kJ_mol)
              else "kJ/mol undetermined (different temperatures without a normalised reference)")
        flag = "" if self.reliable else (" [UNRELIABLE: Pareto k >= 0.7]" if math.isfinite(self.error_f)
                                         else " [UNRELIABLE: no finite error, no overlap]")
        text = (f"f({self.label_b}) - f({self.label_a}) = {_pm(self.delta_f, self.error_f)} (reduced, "
                f"{self.method.upper()}); A_B - A_A = {kj}; weights A: {_fmt_diag(self.diagnostics_a)}; "
                f"B: {_fmt_diag(self.diagnostics_b)}{flag}")
        if self.two_generator is not None:
            text += f"; {self.two_generator}"
        return text


def _resolve_states(state_a, state_b, sets: list[Samples]) -> tuple[MolecularSystem, MolecularSystem]:
    base = next((s for s in (state_a, state_b) if isinstance(s, MolecularSystem)), None)
    if base is None:
        base = sets[0].system if sets else None
    if base is None:
        raise ValueError("give at least one state as a MolecularSystem (or samples) so that temperatures "
                         "can be resolved to a system")
    out = []
    for name, s in (("state_a", state_a), ("state_b", state_b)):
        if isinstance(s, MolecularSystem):
            _check_temperature(s, name)
            out.append(s)
        elif isinstance(s, numbers.Real) and not isinstance(s, bool):
            out.append(base.with_temperature(temperature_kelvin(name, s)))
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


def _j_kl(problem: MBARProblem, g: int, k: int, s: Samples) -> tuple[float, float, int]:
    """Mean and standard error of ``u_k + log p_g`` over sample set ``g`` (``s``), and how many are infinite."""
    values = problem.reduced_potential(k, sampled_from=g) + s.log_prob
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
    """The paper's two-generator estimate ``Delta f_AB = <J_KL^B> - <J_KL^A>``.

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
    _require_proposal_density([samples_a, samples_b], "two_generator_estimate")
    state_a = state_a or samples_a.system.with_temperature(samples_a.temperature)
    state_b = state_b or samples_b.system.with_temperature(samples_b.temperature)
    _check_temperature(state_a, "state_a")
    _check_temperature(state_b, "state_b")
    _require_same_topology(state_a, state_b, "the two thermodynamic states")
    problem = MBARProblem([samples_a, samples_b], targets=[state_a, state_b])  # only two blocks are evaluated
    ja, ea, xa = _j_kl(problem, 0, 2, samples_a)
    jb, eb, xb = _j_kl(problem, 1, 3, samples_b)
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
    if method not in ("auto", "mbar", "bar", "exp"):
        raise ValueError(f"method must be 'auto', 'mbar', 'bar' or 'exp', got {method!r}")
    sets = _as_sample_sets(samples) if samples is not None else []
    _require_proposal_density(sets, "thermodynamic_free_energy")
    gens = _as_list(generators)
    if gens and len(gens) != len(sets):
        raise ValueError(f"give one generator per sample set ({len(sets)} sets, {len(gens)} generators)")
    md_a, md_b = _as_list(md_a), _as_list(md_b)
    a, b = _resolve_states(state_a, state_b, sets)
    if not sets and not md_a and not md_b:
        raise ValueError("no data: give BG samples and/or MD frames of the states")
    if method == "auto":
        method = "mbar" if sets else ("bar" if md_a and md_b else "exp")
    if method in ("mbar", "bar") and sets and (len(sets) > 1 or md_a or md_b) and not gens:
        raise ValueError("with several sample sets or MD data, pass generators=[...] (one per sample set): "
                         "the generator density must be evaluated on configurations it did not draw")
    n_gen = len(sets)
    ka, kb = n_gen, n_gen + 1
    # MD decorrelated on the energy difference between the two targets
    problem = MBARProblem(sets, gens, [a, b], [(0, t) for t in md_a] + [(1, t) for t in md_b],
                          decorrelate=[(ka, kb)] if decorrelate else False)
    notes = [f"MD at {_label(problem.targets[r.state - n_gen])}: statistical inefficiency "
             f"{r.statistical_inefficiency:.1f}, kept {r.n_kept} of {r.n_frames} frames"
             for r in problem.subsampling] if decorrelate else []
    if method == "mbar":
        result = _thermo_mbar(problem, a, b, notes)
    elif method == "bar":
        result = _thermo_bar(problem, a, b, notes)
    else:
        result = _thermo_exp(problem, a, b, notes)
    two = None
    g_a = next((g for g, s in enumerate(sets) if _matches(s, a)), None)
    g_b = next((g for g, s in enumerate(sets) if _matches(s, b)), None)
    if g_a is not None and g_b is not None and sets[g_a] is not sets[g_b]:
        fa, fb = result.pop("f_abs", (math.nan, math.nan))
        ja, ea, xa = _j_kl(problem, g_a, ka, sets[g_a])
        jb, eb, xb = _j_kl(problem, g_b, kb, sets[g_b])
        two = TwoGeneratorEstimate(j_kl_a=ja, j_kl_b=jb, delta_f=jb - ja, error=math.hypot(ea, eb),
                                   delta_a_kJ_mol=_kT(b.temperature) * jb - _kT(a.temperature) * ja,
                                   kl_a=ja - fa, kl_b=jb - fb, n_excluded=xa + xb)
    result.pop("f_abs", None)
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


def _kj(a: MolecularSystem, b: MolecularSystem, f_a: float, f_b: float, cov: np.ndarray | None,
        absolute: bool, delta_f: float, err_f: float) -> tuple[float, float]:
    kta, ktb = _kT(a.temperature), _kT(b.temperature)
    if absolute:
        c = np.array([-kta, ktb])
        return ktb * f_b - kta * f_a, float(math.sqrt(max(c @ cov @ c, 0.0)))
    if math.isclose(a.temperature, b.temperature, rel_tol=1e-12):
        return kta * delta_f, kta * err_f
    return math.nan, math.nan


def _thermo_mbar(problem: MBARProblem, a, b, notes: list) -> dict:
    ka, kb = problem.n_generators, problem.n_generators + 1
    N_k = problem.N_k
    f, cov = problem.free_energies()
    delta_f, err_f = problem.delta_f(ka, kb)
    absolute = problem.n_generators > 0
    if absolute:
        # f relative to generator 0 (normalised: f_gen = 0 exactly)
        dkj, ekj = _kj(a, b, f[ka], f[kb], cov[np.ix_([ka, kb], [ka, kb])], True, delta_f, err_f)
    else:
        dkj, ekj = _kj(a, b, math.nan, math.nan, None, False, delta_f, err_f)
    consistency = float(np.max(np.abs(f[:problem.n_generators]))) if problem.n_generators > 1 else math.nan
    notes.append(f"MBAR over {problem.n_states} states ({problem.n_generators} generator, 2 target), "
                 f"N_k = {N_k.tolist()}")
    return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="mbar",
                n_samples=problem.counts(), diagnostics_a=problem.weight_diagnostics(ka),
                diagnostics_b=problem.weight_diagnostics(kb), generator_consistency=consistency,
                f_abs=(float(f[ka]), float(f[kb])) if absolute else (math.nan, math.nan))


def _works_from_generator(problem: MBARProblem, k: int) -> np.ndarray:
    """``u_k - u_gen`` on the (single) generator's samples; +inf (weight 0) for its out-of-domain draws."""
    u_gen = problem.reduced_potential(0, sampled_from=0)  # -log p
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(u_gen), problem.reduced_potential(k, sampled_from=0) - u_gen, math.inf)


def _thermo_exp(problem: MBARProblem, a, b, notes: list) -> dict:
    pymbar = pymbar_module()
    ka, kb = problem.n_generators, problem.n_generators + 1
    if problem.n_generators > 1:
        raise ValueError("method='exp' uses one sample set; use 'mbar' for several")
    if problem.n_generators:
        works = [_works_from_generator(problem, k) for k in (ka, kb)]
        fs, cov = [], np.zeros((2, 2))
        for k, w in enumerate(works):
            r = _exp(pymbar, w, _label((a, b)[k]))
            fs.append(r[0])
            cov[k, k] = r[1] ** 2
        # covariance of the two EXP estimates from the same samples (delta method)
        wa, wb = (reweighting.normalized_weights(-w) for w in works)
        n = wa.size
        cov[0, 1] = cov[1, 0] = float(np.cov(wa, wb)[0, 1] / (n * wa.mean() * wb.mean()))
        delta_f = fs[1] - fs[0]
        err_f = float(math.sqrt(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)))
        dkj, ekj = _kj(a, b, fs[0], fs[1], cov, True, delta_f, err_f)
        notes.append(f"EXP (importance sampling) from the generator to each state, {n} samples")
        return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="exp",
                    n_samples={"generator": n}, diagnostics_a=_diag_from_log_w(-works[0]),
                    diagnostics_b=_diag_from_log_w(-works[1]), f_abs=(fs[0], fs[1]))
    reverse = problem.N_k[ka] == 0
    src = kb if reverse else ka
    w = problem.reduced_potential(kb, sampled_from=src) - problem.reduced_potential(ka, sampled_from=src)
    w = -w if reverse else w
    df, ddf = _exp(pymbar, w, _label(a if reverse else b))
    delta_f = -df if reverse else df
    notes.append(f"EXP from MD of state {'B' if reverse else 'A'} only ({w.size} frames)")
    dkj, ekj = _kj(a, b, math.nan, math.nan, None, False, delta_f, ddf)
    diag = _diag_from_log_w(-w)
    return dict(delta_f=delta_f, error_f=ddf, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="exp",
                n_samples={"md": w.size}, diagnostics_a=diag if reverse else None,
                diagnostics_b=None if reverse else diag)


def _thermo_bar(problem: MBARProblem, a, b, notes: list) -> dict:
    pymbar = pymbar_module()
    ka, kb = problem.n_generators, problem.n_generators + 1
    n_a, n_b = int(problem.N_k[ka]), int(problem.N_k[kb])
    if not problem.n_generators:
        if not (n_a and n_b):
            raise ValueError("BAR needs MD frames of both states (or BG samples); use method='exp' for "
                             "one side")
        w_f = problem.reduced_potential(kb, sampled_from=ka) - problem.reduced_potential(ka, sampled_from=ka)
        w_r = problem.reduced_potential(ka, sampled_from=kb) - problem.reduced_potential(kb, sampled_from=kb)
        delta_f, err_f = _bar(pymbar, w_f, w_r)
        notes.append(f"BAR between MD of A ({n_a} frames) and MD of B ({n_b} frames)")
        dkj, ekj = _kj(a, b, math.nan, math.nan, None, False, delta_f, err_f)
        return dict(delta_f=delta_f, error_f=err_f, delta_a_kJ_mol=dkj, error_kJ_mol=ekj, method="bar",
                    n_samples={"md_a": n_a, "md_b": n_b}, diagnostics_a=_diag_from_log_w(-w_r),
                    diagnostics_b=_diag_from_log_w(-w_f))
    if problem.n_generators > 1:
        raise ValueError("method='bar' uses one sample set; use 'mbar' for several")
    fs, vs, diags = [], [], []
    for target, k in ((a, ka), (b, kb)):
        w_f = _works_from_generator(problem, k)
        if problem.N_k[k]:
            w_r = problem.reduced_potential(0, sampled_from=k) - problem.reduced_potential(k, sampled_from=k)
            f, df = _bar(pymbar, w_f, w_r)
            notes.append(f"BAR generator -> {_label(target)} ({len(w_f)} BG samples, {len(w_r)} MD frames)")
        else:
            f, df = _exp(pymbar, w_f, _label(target))
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
                n_samples={"generator": int(problem.N_k[0]), "md_a": n_a, "md_b": n_b},
                diagnostics_a=diags[0], diagnostics_b=diags[1], f_abs=(fs[0], fs[1]))
