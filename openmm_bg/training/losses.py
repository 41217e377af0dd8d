"""Training losses of a Boltzmann Generator: ML (data), KL (energy) and RC (spread along a coordinate).

Formulas in ``docs/design.md`` ("Key formulas"). Each loss is a scalar torch tensor to minimise.
"""

from __future__ import annotations

import math

import torch

from ..model.generator import BoltzmannGenerator
from ..systems import ReactionCoordinate
from .regularization import linlogcut

__all__ = ["ml_loss", "kl_loss", "rc_loss"]


def ml_loss(gen: BoltzmannGenerator, v: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of standardised data ``v`` ``[batch, n_dof]`` under the flow (scalar)."""
    return -gen.flow.log_prob(v).mean()


def kl_loss(gen: BoltzmannGenerator, z: torch.Tensor, temperature: float, reference_energy: float,
            high: float, max_energy: float, chirality_weight: float):
    """Reverse KL (variational free energy) of latent samples ``z``; returns ``(loss, proposal, info)``.

    ``proposal`` is the `Proposal` of ``z`` at ``temperature`` (``x`` float64 with the graph attached,
    invalid rows marked by ``proposal.ok`` and holding finite placeholders) for reuse by the RC loss;
    ``info`` holds the mean raw energy and rejection counts. Energies are evaluated for valid rows
    only; invalid rows enter the loss with the lin-log cut's ceiling (the value of a failed energy),
    which carries no gradient.
    """
    p = gen.propose(z=z, temperature=temperature)
    ok = p.ok
    u = torch.full_like(p.log_q, math.inf)
    if bool(ok.any()):
        u = u.index_put((ok.nonzero()[:, 0],), gen.reduced_energy(p.x[ok], temperature).to(u))
    scale = gen.energy.temperature / temperature
    u_cut = linlogcut(u, high=high, max=max_energy, reference=reference_energy * scale)
    ceiling = linlogcut(torch.full((1,), math.inf, dtype=u.dtype, device=u.device), high=high, max=max_energy,
                        reference=reference_energy * scale)
    u_cut = torch.where(ok, u_cut, ceiling.detach())
    loss = (u_cut - p.log_det).mean()
    n_inverted = 0
    if gen.stereo is not None and chirality_weight > 0:
        vol = gen.stereo.signed_volumes(p.x)
        ref = torch.as_tensor(gen.stereo.reference_sign, dtype=vol.dtype, device=vol.device)
        magnitude = vol.detach().abs().mean(0).clamp_min(1e-6)
        penalty = torch.relu(-vol * ref / magnitude).sum(-1)
        penalty = torch.where(ok, penalty, torch.zeros_like(penalty))
        loss = loss + chirality_weight * penalty.mean()
        n_inverted = int(((vol * ref <= 0).any(-1) & ok).sum())
    finite_u = u.detach()[ok & torch.isfinite(u.detach())]
    info = {"u_mean": float(finite_u.mean()) if finite_u.numel() else math.inf,
            "out_of_domain": int((~ok).sum()), "inverted": n_inverted}
    return loss, p, info


def rc_loss(x: torch.Tensor, ok: torch.Tensor, coordinate: ReactionCoordinate,
            bandwidth: float | None = None) -> torch.Tensor:
    """``E[log p(R(x))]`` with ``p`` a Gaussian KDE of the batch's own values (scalar).

    Minimising it spreads samples along ``R``. Periodic coordinates use wrapped differences.
    """
    r = coordinate(x[ok])
    if r.numel() < 2:
        return x.new_zeros(())
    lo, hi = coordinate.bounds
    h = bandwidth if bandwidth is not None else 0.05 * (hi - lo)
    d = r[:, None] - r[None, :]
    if coordinate.periodic:
        period = hi - lo
        d = torch.remainder(d + 0.5 * period, period) - 0.5 * period
    log_k = -0.5 * (d / h) ** 2
    log_p = torch.logsumexp(log_k, dim=1) - math.log(r.numel()) - math.log(h * math.sqrt(2 * math.pi))
    return log_p.mean()
