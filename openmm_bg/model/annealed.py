"""Annealed samples of a generator: SMC from the flow to the Boltzmann distribution in latent space.

`sample_annealed` (what ``BoltzmannGenerator.sample(n, anneal=...)`` calls) runs the generic
annealer `openmm_bg.sampling.anneal` on the flow's latent points ``z``, along the path

    pi_b(z) ∝ N_T(z) exp(b log w(z)),   0 = b_0 < ... < b_K = 1,

with ``N_T`` the (temperature-scaled) prior and ``log w(z) = -u(F(z)) + u_Z(z) + log|det J_zx(z)|``
the log importance weight of ``x = F(z)`` (`BoltzmannGenerator.log_weight_latent`: raw ``u``, no
lin-log cut). So ``log_q = log N_T`` and ``log_target = log N_T + log w = -u(F(z)) + log|det J|``:
at ``b = 1`` the particles are distributed as ``exp(-u(x))`` pushed back through the flow, the
measure plain weights target (constrained bonds fixed, no Fixman factor; rigid-body motion
uniform). Working in latent space leaves no frame, rigid-body or constraint question: every ``z``
is a valid configuration of the generator's coordinates.

Domains: latent dimensions with a bounded prior (torsions on a circle, angles on an interval) are
given to the annealer as its `Support` (`LatentPath.support`): proposals are wrapped onto the
circles and reflected into the intervals, with the folded proposal densities in the Metropolis
test (exact; never clamped). A proposal whose configuration is out of the transform's domain, has
an inverted stereocentre or a failed energy (``log w = -inf``) is rejected (counted in the
annealer's ``n_invalid``).

Random streams: the initial particles are exactly the latent points plain sampling draws,
``sample(n, seed=seed)`` (one ``torch.Generator`` seeded with ``seed``, ``batch_size`` at a time);
the annealer's kernels and resampling draw from a separate stream, seeded with
``SeedSequence([seed, 1])`` (which the annealer hashes once more). ``seed=None`` draws both fresh.

Cost: every kernel step evaluates ``log_target`` and its gradient at all particles: one flow
forward and backward pass and one energy *with forces* per particle (the gradient of ``u`` goes
through `OpenMMEnergy`'s force-based backward), in batches of ``batch_size`` on worker threads.
Graphs are freed batch by batch; nothing is ``[n, n]``. The final configurations get one more
energy evaluation without forces (for ``Samples.energies``). Both are counted in the provenance.

Examples
--------
>>> from openmm_bg.sampling import AnnealConfig
>>> s = dw_gen.sample(200, seed=0, anneal=AnnealConfig(n_levels=8))
>>> s.provenance["kind"], s.has_proposal_density, len(s.ancestors)
('annealed', False, 200)
>>> s.provenance["n_energy_evaluations"] > 200
True
"""

from __future__ import annotations

import dataclasses
import math
import threading
import warnings

import numpy as np
import torch

from .._validation import positive_int
from ..analysis.samples import Samples
from ..flows.domain import CIRCULAR
from ..sampling import AnnealConfig, AnnealResult, Support, ValueAndGrad, anneal
from .batches import ordered_map, torch_threads

__all__ = ["sample_annealed", "latent_path", "LatentPath", "ANNEAL_STREAM", "GENERATOR_DEFAULT",
           "generator_anneal_config", "anneal_overrides"]

#: The one default of annealed generator samples: what ``gen.sample(n, anneal=True)`` and the
#: CLI's ``sample --anneal`` / ``free-energy --anneal`` use (CLI flags override single fields, see
#: `generator_anneal_config`). Many small levels, one MALA step each (conditional ESS 0.999 per
#: level, at most 200 levels; resampling below ESS/N = 0.5). On the shipped alanine-dipeptide
#: generator it costs ~35 energy+force evaluations per particle and lifts ESS/N from ~0.2 to ~0.85
#: (``benchmarks/annealed_sampling.py``); `AnnealConfig`'s own generic defaults (conditional ESS
#: 0.8) chose 3 levels there and barely improved on plain weights.
GENERATOR_DEFAULT = AnnealConfig(target_cess=0.999, n_levels=200)


def generator_anneal_config(**fields) -> AnnealConfig:
    """`GENERATOR_DEFAULT` with single fields replaced; fields given as None keep the default.

    Parameters
    ----------
    **fields
        `AnnealConfig` fields, e.g. ``n_levels=10, adaptive=False, kernel="hmc"`` (validated by
        `AnnealConfig`).

    Returns
    -------
    AnnealConfig

    Raises
    ------
    ValueError
        An unknown field name, or a value `AnnealConfig` refuses.

    Examples
    --------
    >>> c = generator_anneal_config(n_levels=10, adaptive=False, kernel=None)
    >>> c.n_levels, c.adaptive, c.kernel, c.target_cess == GENERATOR_DEFAULT.target_cess
    (10, False, 'mala', True)
    """
    known = {f.name for f in dataclasses.fields(AnnealConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown AnnealConfig field(s) {unknown}; known: {sorted(known)}")
    return dataclasses.replace(GENERATOR_DEFAULT, **{k: v for k, v in fields.items() if v is not None})


def anneal_overrides(config: AnnealConfig) -> dict:
    """The fields of ``config`` that differ from `GENERATOR_DEFAULT` (``seed`` and ``progress``
    left out), JSON-ready: what a run changed from the default (recorded in its provenance).

    Examples
    --------
    >>> anneal_overrides(generator_anneal_config(n_levels=10, adaptive=False))
    {'n_levels': 10, 'adaptive': False}
    >>> anneal_overrides(GENERATOR_DEFAULT)
    {}
    """
    given, default = dataclasses.asdict(config), dataclasses.asdict(GENERATOR_DEFAULT)
    return {k: v for k, v in given.items() if k not in ("seed", "progress") and v != default[k]}

#: Second entry of the ``SeedSequence([seed, ANNEAL_STREAM])`` that seeds the annealer's stream.
ANNEAL_STREAM = 1


class LatentPath:
    """The two log densities of the latent path of a generator, batched, with evaluation counts.

    Parameters
    ----------
    generator : BoltzmannGenerator
    temperature : float
        K of the target (and of the prior's scaling ``T / T_train``).
    batch_size : int
        Rows per flow + energy batch.
    threads : int
        Worker threads over the batches.

    Attributes
    ----------
    log_q : callable
        ``z [n, d] -> [n]`` float64 ``log N_T(z)`` (``-inf`` outside the prior's domain).
    log_target : ValueAndGrad
        ``z -> (log N_T(z) + log w(z), its gradient)``, float64; ``-inf`` with gradient 0 where
        the weight is zero.
    n_energy_evaluations : int
        Configurations evaluated with energy and forces so far.
    support : Support
        The prior's domain: circular latent dimensions periodic, interval ones reflecting.
    """

    def __init__(self, generator, temperature: float, batch_size: int, threads: int):
        self.generator, self.temperature = generator, float(temperature)
        self.batch_size, self.threads = int(batch_size), int(threads)
        self.scale = generator._temperature_scale(temperature)
        self.n_energy_evaluations = 0
        self._lock = threading.Lock()
        self.log_target = ValueAndGrad(self._target_value_and_grad)
        domain = generator.flow.prior.domain
        self.support = Support(domain.low, domain.high, [k == CIRCULAR for k in domain.kinds])

    def log_q(self, z: torch.Tensor) -> torch.Tensor:
        """``[n]`` float64 log density of the temperature-scaled prior (normalised)."""
        return -self.generator.flow.prior.energy(z, self.scale).to(torch.float64)

    def sample_q(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``[n, d]`` float64 draws from the temperature-scaled prior (the proposals of `Independence`)."""
        return self.generator.flow.prior.sample(n, generator=generator, temperature_scale=self.scale,
                                                dtype=torch.float64, device=generator.device)

    def _chunk(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():  # grad mode is per thread
            z = z.detach().requires_grad_(True)
            log_w, p = self.generator.log_weight_latent(z, self.temperature)
            good = torch.isfinite(log_w)
            # log N_T + log w = -u + log|det J|: the prior energy of propose cancels exactly
            value = torch.where(good, log_w - torch.where(good, p.prior_energy, 0.0), -math.inf)
            if bool(good.any()):
                grad = torch.autograd.grad(value[good].sum(), z)[0]
            else:
                grad = torch.zeros_like(z)
        with self._lock:
            self.n_energy_evaluations += int(p.ok.sum())
        grad = torch.where(good[:, None], grad.to(torch.float64), 0.0)
        return value.detach().to(torch.float64), grad.detach()

    def _target_value_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        parts = list(ordered_map(self._chunk, z.split(self.batch_size), self.threads))
        return torch.cat([v for v, _ in parts]), torch.cat([g for _, g in parts])


def latent_path(generator, temperature: float, batch_size: int = 4096, threads: int = 1) -> LatentPath:
    """`LatentPath` of ``generator`` at ``temperature`` (K): ``log_q`` and ``log_target`` for `anneal`."""
    return LatentPath(generator, temperature, batch_size, threads)


def _config(anneal_option, progress: bool) -> AnnealConfig:
    config = GENERATOR_DEFAULT if anneal_option is True else anneal_option
    if not isinstance(config, AnnealConfig):
        raise ValueError(f"anneal must be an openmm_bg.sampling.AnnealConfig, True (its defaults) or None, got "
                         f"{type(anneal_option).__name__}")
    if config.seed is not None:
        raise ValueError(f"AnnealConfig(seed={config.seed}) given to sample(): the seed of sample(seed=...) seeds "
                         "the annealed run (initial particles and kernels); leave AnnealConfig.seed as None")
    return dataclasses.replace(config, progress=bool(progress or config.progress))


def _stream_seed(seed: int | None) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), ANNEAL_STREAM]).generate_state(1, np.uint64)[0] >> 1)


def _json_floats(values: torch.Tensor) -> list:
    return [v if math.isfinite(v) else None for v in values.tolist()]


def _provenance(generator, result: AnnealResult, config: AnnealConfig, seed, temperature: float,
                n_energy: int, n_final: int) -> dict:
    settings = dataclasses.asdict(config)
    settings.pop("progress")
    return {"kind": "annealed", "space": "latent", "generator": generator.identity(), "seed": seed,
            "temperature": temperature, "training_temperature": generator.training_temperature,
            "anneal": settings, "anneal_overrides": anneal_overrides(config), "n_levels": result.n_levels,
            "betas": result.betas.tolist(),
            "step_sizes": result.step_sizes.tolist(), "acceptance": _json_floats(result.acceptance),
            "n_invalid": result.n_invalid.tolist(), "resampled": result.resampled.tolist(),
            "independence_acceptance": None if result.independence_acceptance is None
            else _json_floats(result.independence_acceptance),
            "n_resampling": int(result.resampled.sum()), "n_distinct_ancestors": result.n_distinct_ancestors,
            "n_energy_force_evaluations": n_energy, "n_energy_evaluations": n_energy + n_final}


def sample_annealed(generator, n: int, anneal_option: AnnealConfig | bool = True, temperature: float | None = None,
                    seed: int | None = 0, batch_size: int = 4096, progress: bool = False,
                    threads: int = 1) -> Samples:
    """``n`` particles annealed from the generator to ``exp(-u)`` at ``temperature``, with exact weights.

    Parameters
    ----------
    generator : BoltzmannGenerator
    n : int
        Particles (>= 1).
    anneal_option : AnnealConfig or True
        The annealer's settings (True: `GENERATOR_DEFAULT`); its ``seed`` must be None.
    temperature : float, optional
        K of the target (default: the generator's); the prior is scaled by ``T / T_train``.
    seed : int, optional
        Seeds the initial particles (those of plain ``sample(n, seed=seed)``) and, through
        ``SeedSequence([seed, 1])``, the annealer. None: fresh.
    batch_size, threads : int
        Rows per flow + energy batch; worker threads over the batches.
    progress : bool
        Progress bar over the levels.

    Returns
    -------
    Samples
        ``kind="annealed"``: positions ``x = F(z)`` of the final particles (nm, generator's frame;
        NaN rows out of domain), energies ``u`` (kT at ``temperature``), ``log_weights`` the
        annealer's final unnormalised log weights (no resampling after the last level),
        ``log_normalizer`` its ``log Z-hat`` (of ``int exp(-u) dx`` in the generator's
        coordinates: the same constant the log mean of plain weights estimates), ``ancestors``
        the index of each particle's initial particle (lineage), and ``log_prob`` the
        generator's log density at the final point, *for information only*: it is not the density
        the particles were drawn from (`Samples.has_proposal_density` is False, so estimators that
        need one refuse the set). The provenance holds the settings, betas, step sizes,
        acceptance and invalid proposals per level, resampling events, distinct ancestors and the
        evaluation counts.

    Raises
    ------
    ValueError
        Bad ``n`` or ``anneal_option``, or an ``AnnealConfig`` with its own seed.
    """
    t = generator._temperature(temperature)
    config = _config(anneal_option, progress)
    n = positive_int("n", n)
    path = latent_path(generator, t, batch_size, threads)
    config = dataclasses.replace(config, seed=_stream_seed(seed))
    latent = generator._seeded_generator(seed)
    sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
    with torch_threads(1):
        z0 = torch.cat([generator.sample_latent(m, latent, t) for m in sizes]).to(torch.float64)
        result = anneal(path.log_q, path.log_target, z0, config, support=path.support, sample_q=path.sample_q)
        z = result.positions.to(generator.flow_dtype)
        batches = list(ordered_map(lambda zc: generator._evaluate_batch(zc, t), z.split(batch_size), threads))
    positions = np.concatenate([b.positions for b in batches])
    energies = np.concatenate([b.energies for b in batches])
    log_prob = np.concatenate([b.log_prob for b in batches])
    rejected = np.concatenate([b.rejected for b in batches])
    log_w = result.log_weights.detach().cpu().numpy().astype(np.float64)
    zero = ~np.isfinite(energies) | ~np.isfinite(log_prob) | rejected
    if np.isfinite(log_w[zero]).any():  # the same z evaluated again disagreed (rounding at a domain edge)
        warnings.warn(f"{int(np.isfinite(log_w[zero]).sum())} annealed particles failed their final evaluation; "
                      "they get weight zero", RuntimeWarning, stacklevel=3)
        log_w = np.where(zero, -np.inf, log_w)
    provenance = _provenance(generator, result, config, seed, t, path.n_energy_evaluations,
                             int(np.isfinite(log_prob).sum()))
    return Samples(generator.system, positions, energies, log_prob, temperature=t, rejected=rejected,
                   log_weights=log_w, log_normalizer=result.log_normalizer,
                   ancestors=result.lineage.detach().cpu().numpy(), provenance=provenance)
