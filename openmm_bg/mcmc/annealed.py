"""Annealed proposals for `BoltzmannGeneratorMove` (``anneal=``): an exact annealed independence sampler.

A plain flow sample is a poor proposal where the flow's density is off; annealing it towards the
target with MCMC (`openmm_bg.sampling.anneal` on the generator's latent path, as
``gen.sample(n, anneal=...)`` does) makes it a better one. A forward path alone has no valid
acceptance once MD has moved the current state: the current state has no path. The move draws one
for it, backwards, and accepts on the path space.

Derivation
----------
Latent space ``z`` (the flow's, with the rigid-body motion uniform and apart), the generator's
path ``pi_k(z) ∝ N_T(z)^(1-b_k) gamma(z)^(b_k)`` with ``gamma(z) = exp(-u_g(F(z))) |det J_zx(z)|``
(`openmm_bg.model.annealed.LatentPath`: ``u_g`` the generator's reduced energy at the state's
temperature ``T``, ``N_T`` the prior scaled by ``T / T_train``), a frozen schedule
``0 = b_0 < ... < b_K = 1`` and kernels ``T_k`` (``mcmc_steps_per_level`` MALA or HMC steps at
``b_k``) that are reversible with respect to ``pi_k``. The chain's target, written in ``z``, is

    gamma*(z) = exp(-u(x(z)) + f(x(z))) |det J_zx(z)|,

``u`` the thermodynamic state's reduced potential, ``f`` the Fixman factor, ``x(z)`` the
configuration placed in the chain's frame (random orientation at the current centre of mass;
toy systems keep their confined components). ``gamma* = gamma`` when the state is the generator's
Hamiltonian without constraints; in general ``gamma*/gamma = exp(-u + f + u_g)`` at the same ``z``.

- Forward proposal density of a path ``z_0..z_K``: ``Q = N_T(z_0) prod_k T_k(z_{k-1}, z_k)``.
- Extended target: ``P = gamma*(z_K) / Z* prod_k T_k(z_k, z_{k-1})``, normalised (each ``T_k`` is a
  probability kernel in its second argument), with ``gamma* / Z*`` as the marginal of ``z_K``.
- Reversibility, ``pi_k(a) T_k(a, b) = pi_k(b) T_k(b, a)``, telescopes the ratio:

      P / Q = (1/Z*) [gamma*(z_K) / gamma(z_K)] W,   log W = sum_k (b_k - b_{k-1}) log w(z_{k-1}),

  ``log w = log gamma - log N_T`` the latent log weight, each increment at the point *before* the
  level-``k`` kernel: the annealer's AIS weight.
- The move on path space: (1) refresh the current path given its end ``z_K = F^{-1}(x)`` from
  ``P(z_0..z_{K-1} | z_K) = prod_k T_k(z_k, z_{k-1})``, i.e. the kernels in reverse order
  ``T_K, ..., T_1`` (`openmm_bg.sampling.backward_log_weights`, weight ``W_bwd``): a Gibbs step, it
  leaves ``P`` invariant whatever MD did to ``x`` before; (2) independence Metropolis-Hastings
  with the forward proposal ``Q``: accept with ``min(1, [P/Q](new) / [P/Q](current))``, i.e.

      log a = [-u(x') + f(x') + u_g(x') + log W_fwd] - [-u(x) + f(x) + u_g(x) + log W_bwd]

  (the base's ``-du + df + g(x') - g(x)`` with ``g = log W + u_g``, ``u_g = log|det J_zx| - log gamma``
  at the path's end). Detailed balance on the end points: with ``s`` a path ending at ``z`` and
  ``s'`` one ending at ``z'``,
  ``pi(z) K(z, z') = (1/Z*) ∫∫ Q(s) Q(s') min(W*(s), W*(s'))`` (``W* = W gamma*/gamma``), symmetric
  in ``(s, s')``. Successive proposals of one ``apply`` compare with the path last accepted.
- With ``K = 1`` and a kernel that never moves, ``g = -log p_X(x)``: the plain move.

Frozen means frozen: betas, step sizes and scales come from a `openmm_bg.sampling.FixedSchedule`
given by the user or from `pilot_schedule` (independent flow samples, before the move is used),
never from the chain. No resampling (each proposal is one path). A current configuration outside
the generator's domain, or where ``gamma`` is zero (an inverted stereocentre, a failed generator
energy), has no backward path: every proposal of that ``apply`` is rejected (counted as out of
domain); forward paths never end there, so detailed balance holds on both sides.

Constraints are exact as for the plain move: the latent path moves in the generator's coordinates
(bonds to hydrogen fixed), the Fixman factor enters only the final test.

Cost per ``apply`` (energy + force evaluations of the generator's energy, counted in
`BoltzmannGeneratorMove.anneal_statistics`): ``n_proposals x (1 + K m L)`` forward and
``1 + K m L`` backward (``m`` steps per level, ``L`` leapfrog steps for HMC, 1 for MALA), plus the
base's state energies.

Examples
--------
>>> from openmm_bg.sampling import FixedSchedule
>>> # dw_gen: a small generator built on MD data of the double well (conftest.py)
>>> schedule = pilot_schedule(dw_gen, n=64, seed=0)
>>> isinstance(schedule, FixedSchedule) and schedule.betas[-1] == 1.0
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import positive_int
from ..model.annealed import GENERATOR_DEFAULT, LatentPath, latent_path
from ..model.generator import BoltzmannGenerator
from ..sampling import AnnealConfig, FixedSchedule, anneal, backward_log_weights

__all__ = ["pilot_schedule"]


def move_anneal_config(anneal_option) -> AnnealConfig | None:
    """The move's annealing settings: None, a `FixedSchedule` or a frozen `AnnealConfig`, checked."""
    if anneal_option is None:
        return None
    if isinstance(anneal_option, FixedSchedule):
        return AnnealConfig(adaptive=False, schedule=anneal_option, resample_threshold=0.0)
    if not isinstance(anneal_option, AnnealConfig):
        raise ValueError(f"anneal must be None, a FixedSchedule or an AnnealConfig with a frozen schedule, got "
                         f"{type(anneal_option).__name__}")
    if anneal_option.adaptive:
        raise ValueError("anneal= needs a frozen schedule (an adaptive one would be tuned on the chain it moves): "
                         "pass FixedSchedule(...), pilot_schedule(generator) or AnnealConfig(adaptive=False, ...)")
    if anneal_option.resample_threshold != 0.0:
        raise ValueError("each annealed proposal is one path and resampling would mix them: pass "
                         "AnnealConfig(..., resample_threshold=0)")
    if anneal_option.seed is not None:
        raise ValueError("AnnealConfig(seed=...) given to the move: its seed= seeds the paths; leave it None")
    if anneal_option.independence_steps:
        raise ValueError("the annealed move's backward path takes local kernels only: pass "
                         "AnnealConfig(..., independence_steps=0)")
    return dataclasses.replace(anneal_option, progress=False)


def config_state(config: AnnealConfig | None) -> dict | None:
    """What serialisation stores of the move's annealing settings (plain lists and numbers)."""
    if config is None:
        return None
    schedule = config.make_schedule(config.make_kernel())
    return {"betas": list(schedule.betas), "step_sizes": list(schedule.step_sizes),
            "scales": None if schedule.scales is None else [list(row) for row in schedule.scales],
            "kernel": config.kernel, "mcmc_steps_per_level": config.mcmc_steps_per_level,
            "leapfrog_steps": config.leapfrog_steps}


def config_from_state(state: dict | None) -> AnnealConfig | None:
    """Inverse of `config_state`."""
    if state is None:
        return None
    schedule = FixedSchedule(state["betas"], state["step_sizes"], state.get("scales"))
    return AnnealConfig(adaptive=False, schedule=schedule, resample_threshold=0.0, kernel=str(state["kernel"]),
                        mcmc_steps_per_level=int(state["mcmc_steps_per_level"]),
                        leapfrog_steps=int(state["leapfrog_steps"]))


def pilot_schedule(generator: BoltzmannGenerator, temperature: float | None = None, n: int = 512,
                   config: AnnealConfig | None = None, seed: int | None = 0) -> FixedSchedule:
    """Freeze the schedule of an adaptive annealed run of ``n`` fresh flow samples (a pilot run).

    Run it before the move is used: the samples are the generator's own, independent of any chain,
    so the frozen schedule keeps the annealed move exact.

    Parameters
    ----------
    generator : BoltzmannGenerator
    temperature : float, optional
        K of the target (default: the generator's); use the state's temperature.
    n : int
        Pilot particles.
    config : AnnealConfig, optional
        Adaptive settings of the pilot (its ``seed`` is replaced by ``seed``); default
        `openmm_bg.model.annealed.GENERATOR_DEFAULT`. A fixed config returns its own schedule.
    seed : int, optional
        Seeds the pilot's flow samples and annealer (None: fresh).

    Returns
    -------
    FixedSchedule
        Betas, step sizes (and scales, with ``precondition=True``) of the pilot's levels.
    """
    config = GENERATOR_DEFAULT if config is None else config
    if not isinstance(config, AnnealConfig):
        raise ValueError(f"config must be an AnnealConfig, got {type(config).__name__}")
    if not config.adaptive:
        return config.make_schedule(config.make_kernel())
    t = generator._temperature(temperature)
    path = latent_path(generator, t)
    z0 = generator.sample_latent(positive_int("n", n), generator._seeded_generator(seed), t).to(torch.float64)
    result = anneal(path.log_q, path.log_target, z0, dataclasses.replace(config, seed=seed, progress=False),
                    support=path.support)
    return FixedSchedule.from_result(result)


def seed_from(tgen: torch.Generator) -> int:
    """A seed for one annealer run, drawn from the move's stream."""
    return int(torch.randint(0, 2**62, (1,), generator=tgen, device=tgen.device))


@dataclass(frozen=True)
class AnnealedPaths:
    """Forward paths of one ``apply``: their ends and the terms of the acceptance.

    Attributes
    ----------
    x : torch.Tensor
        ``[n, n_atoms, 3]`` nm, ``F(z_K)`` in the generator's frame (placeholders where not ``ok``).
    log_ratio_term : numpy.ndarray
        ``[n]`` float64 ``g = log W_fwd + u_g(F(z_K))``; ``-inf`` for paths of weight zero.
    ok : numpy.ndarray
        ``[n]`` bool: the end is in the generator's domain.
    """

    x: torch.Tensor
    log_ratio_term: np.ndarray
    ok: np.ndarray


def forward_paths(gen: BoltzmannGenerator, path: LatentPath, n: int, config: AnnealConfig,
                  tgen: torch.Generator) -> AnnealedPaths:
    """``n`` forward paths from the (scaled) prior through the frozen schedule, batched."""
    z0 = gen.sample_latent(n, tgen, path.temperature).to(torch.float64)
    result = anneal(path.log_q, path.log_target, z0, dataclasses.replace(config, seed=seed_from(tgen)),
                    support=path.support)
    with torch.no_grad():
        end = gen.propose(z=result.positions.to(gen.flow_dtype), temperature=path.temperature)
    log_w = result.log_weights.to(torch.float64)
    good = torch.isfinite(log_w) & torch.isfinite(result.log_target) & end.ok
    # u_g at the end = log|det J_zx| - log gamma (the annealer's log_target at the same z)
    g = torch.where(good, log_w + end.log_det - torch.where(good, result.log_target, 0.0), -math.inf)
    return AnnealedPaths(end.x, g.detach().cpu().numpy(), end.ok.cpu().numpy())


def backward_terms(gen: BoltzmannGenerator, path: LatentPath, x: np.ndarray, config: AnnealConfig,
                   tgen: torch.Generator) -> np.ndarray:
    """``[n]`` float64 ``g = log W_bwd + u_g(x)`` of refreshed (backward) paths of configurations ``x``.

    ``x [n, n_atoms, 3]`` nm. ``z_K = F^{-1}(x)`` (frame removed, with ``log|det J_zx(z_K)| =
    -log|det dz/dx|``), then the kernels of levels ``K, ..., 1`` (`openmm_bg.sampling.backward_log_weights`),
    one independent path per row. NaN where ``x`` has no path: outside the generator's domain or
    ``gamma(z_K) = 0``.
    """
    with torch.no_grad():
        z, ld_inv, ok = gen.inverse(torch.as_tensor(x, dtype=torch.float64))
    z = z.to(torch.float64)
    ok = ok & torch.isfinite(z).all(1)
    ok = ok & path.support.contains(torch.where(ok[:, None], z, 0.0))
    g = torch.full((len(z),), math.nan, dtype=torch.float64)
    if bool(ok.any()):
        back = backward_log_weights(path.log_q, path.log_target, z[ok],
                                    dataclasses.replace(config, seed=seed_from(tgen)), support=path.support)
        g_ok = back.log_weights - ld_inv[ok].to(torch.float64) - back.end_log_target
        g[ok.cpu()] = torch.where(torch.isfinite(g_ok), g_ok, math.nan).cpu()
    return g.numpy()
