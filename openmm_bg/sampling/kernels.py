"""Markov kernels that leave one density of the path, ``pi_b``, exactly invariant.

A kernel only proposes and accepts; the annealer decides ``b`` and the step size. Both kernels
use a Metropolis-Hastings test, so they are exact for any step size (a bad one only lowers the
acceptance):

- `MALA`: ``x' = x + (h^2 / 2) grad log pi_b(x) + h xi``, ``xi ~ N(0, I)``;
- `HMC`: ``L`` leapfrog steps of size ``h`` with unit masses and fresh momenta;
- `Independence`: a fresh draw ``y ~ q`` of the base, accepted with
  ``min(1, exp(b (s(y) - s(x))))``, ``s = log p - log q`` (``pi_b / q = exp(b s)``): no step size,
  no gradient needed for the test, and a move can jump between basins, which local steps cannot.

On a path with a `Support` (circles, intervals) proposals are folded back into the domain:
`MALA` then uses the folded proposal densities in its test, `HMC` wraps (circle) or reflects with
a momentum flip (interval); both stay exact, and such proposals are no longer wasted.

A proposal is rejected, counted in ``n_invalid`` and never applied when a position, log density or
gradient it needs is non-finite (out of domain: ``log p = -inf``; a failed evaluation: NaN or
``+inf``). HMC applies that test to every leapfrog point; the criterion is the same for a
trajectory and its reverse, so the kernel stays exact. Particles whose current density is zero
(``log pi_b = -inf``, weight zero already) stay where they are and are not counted as proposals.

Examples
--------
>>> import torch
>>> from openmm_bg.sampling.path import GeometricPath
>>> path = GeometricPath(lambda x: -0.5 * (x**2).sum(1), lambda x: -2.0 * (x**2).sum(1))
>>> state = path.evaluate(torch.zeros(100, 2, dtype=torch.float64))
>>> state, stats = MALA().step(path, state, beta=0.5, step_size=0.5,
...                            generator=torch.Generator().manual_seed(0))
>>> stats.n_proposed, 0.5 < stats.acceptance <= 1.0
(100, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import positive_int
from .path import GeometricPath, PathPoint

__all__ = ["MoveStats", "Kernel", "MALA", "HMC", "Independence"]


@dataclass(frozen=True)
class MoveStats:
    """Counts of one or more kernel steps.

    Attributes
    ----------
    n_proposed : int
        Proposals made from particles with non-zero density.
    n_accepted : int
        Proposals accepted.
    n_invalid : int
        Proposals rejected because a position, log density or gradient was non-finite.
    """

    n_proposed: int = 0
    n_accepted: int = 0
    n_invalid: int = 0

    @property
    def acceptance(self) -> float:
        """Accepted fraction of the proposals (NaN if there were none)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else float("nan")

    def __add__(self, other: MoveStats) -> MoveStats:
        return MoveStats(self.n_proposed + other.n_proposed, self.n_accepted + other.n_accepted,
                         self.n_invalid + other.n_invalid)


def _finite_rows(*tensors: torch.Tensor) -> torch.Tensor:
    ok = torch.ones(tensors[0].shape[0], dtype=torch.bool, device=tensors[0].device)
    for t in tensors:
        ok &= torch.isfinite(t.reshape(t.shape[0], -1)).all(1)
    return ok


def _scales(step_size: float, scale, x: torch.Tensor):
    """``h`` (no preconditioner) or ``[d]`` ``h s`` with ``s`` the per-dimension scales."""
    if scale is None:
        return step_size
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if scale.shape != x.shape[1:] or not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(f"scale must be [d] = {list(x.shape[1:])} finite values > 0, got {list(scale.shape)}")
    return step_size * scale


def _accept(state: PathPoint, proposal: PathPoint, log_alpha: torch.Tensor, alive: torch.Tensor,
            valid: torch.Tensor, generator: torch.Generator) -> tuple[PathPoint, MoveStats]:
    log_u = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64,
                       device=log_alpha.device).log()
    accept = alive & valid & (log_u < log_alpha)
    stats = MoveStats(int(alive.sum()), int(accept.sum()), int((alive & ~valid).sum()))
    return state.where(accept, proposal), stats


class Kernel:
    """Base class: ``step`` moves every particle once, leaving ``pi_beta`` invariant."""

    #: Acceptance the adaptive schedule tunes the step size towards.
    target_acceptance: float = 0.5

    def step(self, path: GeometricPath, state: PathPoint, beta: float, step_size: float,
             generator: torch.Generator, scale: torch.Tensor | None = None) -> tuple[PathPoint, MoveStats]:
        """One proposal and Metropolis-Hastings test per particle.

        Parameters
        ----------
        path : GeometricPath
            Evaluates the proposals.
        state : PathPoint
            ``[n]`` current particles (densities and gradients cached).
        beta : float
            The invariant density is ``pi_beta``.
        step_size : float
            ``h`` in units of ``x``.
        generator : torch.Generator
            Source of randomness (same generator state, same result).
        scale : torch.Tensor, optional
            ``[d]`` per-dimension scales ``s > 0`` (diagonal preconditioner): the proposal moves
            dimension ``i`` by about ``h s_i``. Fixed during the step; default 1.
        """
        raise NotImplementedError


class MALA(Kernel):
    """Metropolis-adjusted Langevin: one gradient evaluation per step.

    ``y = x + (h^2 / 2) s^2 grad log pi_b(x) + h s xi`` with per-dimension scales ``s`` (the
    preconditioner, default 1), folded into the path's `Support` when it has one; the test then
    uses the folded proposal densities (exact).
    """

    target_acceptance = 0.574

    def step(self, path, state, beta, step_size, generator, scale=None):
        sd = _scales(step_size, scale, state.x)
        support = path.support
        lp_x = state.log_density(beta)
        alive = torch.isfinite(lp_x)
        mean_x = state.x + 0.5 * sd**2 * state.grad(beta)
        noise = torch.randn(state.x.shape, generator=generator, dtype=state.x.dtype, device=state.x.device)
        y = mean_x + sd * noise
        valid = alive & _finite_rows(y)
        if support is not None:
            y = support.fold(torch.where(valid[:, None], y, state.x))
        proposal = path.evaluate(torch.where(valid[:, None], y, state.x))
        lp_y, grad_y = proposal.log_density(beta), proposal.grad(beta)
        valid &= _finite_rows(lp_y, grad_y)
        mean_y = proposal.x + 0.5 * sd**2 * grad_y
        if support is None or support.is_real:
            log_forward = -0.5 * (noise**2).sum(1)
            log_reverse = -0.5 * (((state.x - mean_y) / sd) ** 2).sum(1)
        else:
            log_forward = support.log_density(proposal.x, mean_x, sd)
            log_reverse = support.log_density(state.x, torch.where(valid[:, None], mean_y, mean_x), sd)
        log_alpha = lp_y - lp_x + log_reverse - log_forward
        return _accept(state, proposal, log_alpha, alive, valid, generator)


class HMC(Kernel):
    """Hamiltonian Monte Carlo with ``leapfrog_steps`` gradient evaluations per step.

    Parameters
    ----------
    leapfrog_steps : int
        ``L >= 1``; trajectory length is ``L x step_size``.
    """

    target_acceptance = 0.65

    def __init__(self, leapfrog_steps: int = 5):
        self.leapfrog_steps = positive_int("leapfrog_steps", leapfrog_steps)

    def step(self, path, state, beta, step_size, generator, scale=None):
        sd = _scales(step_size, scale, state.x)  # position steps h s; masses 1 / s^2
        support = path.support
        lp_x = state.log_density(beta)
        alive = torch.isfinite(lp_x)
        p0 = torch.randn(state.x.shape, generator=generator, dtype=state.x.dtype, device=state.x.device)
        valid = alive.clone()
        # in units where the momentum is ``s p``: drift x += h s (s p), kick (s p) += h s grad
        x, p = state.x, p0 + 0.5 * sd * state.grad(beta)
        point = state
        for i in range(self.leapfrog_steps):
            x = x + sd * p
            valid &= _finite_rows(x)
            x = torch.where(valid[:, None], x, state.x)
            if support is not None:  # wrap on circles; reflect on intervals, flipping that momentum
                p = torch.where(support.reflected(x), -p, p)
                x = support.fold(x)
            point = path.evaluate(x)
            grad = point.grad(beta)
            valid &= _finite_rows(point.log_density(beta), grad)
            p = p + (0.5 if i == self.leapfrog_steps - 1 else 1.0) * sd * grad
        log_alpha = point.log_density(beta) - lp_x - 0.5 * ((p**2).sum(1) - (p0**2).sum(1))
        return _accept(state, point, log_alpha, alive, valid, generator)


class Independence(Kernel):
    """Independence Metropolis-Hastings with proposals from the base ``q``: global moves.

    ``y ~ q`` independently of ``x``; the Metropolis-Hastings ratio of ``pi_b ∝ q^(1-b) p^b`` with
    this proposal is ``pi_b(y) q(x) / (pi_b(x) q(y)) = exp(b (s(y) - s(x)))`` with
    ``s = log p - log q``, so the kernel leaves every ``pi_b`` exactly invariant. Acceptance is high
    where ``pi_b`` is close to ``q`` (small ``b``) and falls as ``b`` grows; a particle in a region
    that ``q`` under-covers (large ``s``) rarely leaves it, as it should. ``step_size`` and
    ``scale`` are ignored. One evaluation (with gradient, for the next local step) per proposal.

    Parameters
    ----------
    sample_q : callable
        ``(n, generator) -> [n, d]`` exact draws from ``q`` (``torch.Generator`` as the source of
        randomness, so runs stay reproducible).

    Examples
    --------
    >>> import torch
    >>> from openmm_bg.sampling.path import GeometricPath
    >>> path = GeometricPath(lambda x: -0.5 * (x**2).sum(1), lambda x: -2.0 * (x**2).sum(1))
    >>> kernel = Independence(lambda n, g: torch.randn(n, 2, generator=g, dtype=torch.float64))
    >>> state = path.evaluate(torch.zeros(100, 2, dtype=torch.float64))
    >>> state, stats = kernel.step(path, state, 0.5, None, torch.Generator().manual_seed(0))
    >>> stats.n_proposed, 0.0 < stats.acceptance < 1.0
    (100, True)
    """

    target_acceptance = None

    def __init__(self, sample_q):
        if not callable(sample_q):
            raise ValueError(f"sample_q must be a callable (n, generator) -> [n, d], got {type(sample_q).__name__}")
        self.sample_q = sample_q

    def step(self, path, state, beta, step_size, generator, scale=None):
        n = state.x.shape[0]
        lp_x = state.log_density(beta)
        alive = torch.isfinite(lp_x)
        y = torch.as_tensor(self.sample_q(n, generator))
        if y.shape != state.x.shape:
            raise ValueError(f"sample_q({n}, generator) must return {list(state.x.shape)}, got {list(y.shape)}")
        y = y.to(dtype=state.x.dtype, device=state.x.device)
        valid = alive & _finite_rows(y)
        proposal = path.evaluate(torch.where(valid[:, None], y, state.x))
        valid &= _finite_rows(proposal.log_density(beta), proposal.grad(beta), proposal.log_q)
        slope_x, slope_y = state.log_p - state.log_q, proposal.log_p - proposal.log_q
        log_alpha = beta * torch.where(valid, slope_y - slope_x, torch.zeros_like(slope_x))
        return _accept(state, proposal, log_alpha, alive, valid, generator)

