"""FAB: flow annealed importance sampling bootstrap with the alpha = 2 divergence (Midgley et al., ICLR 2023).

The loss is the alpha = 2 divergence ``D_2(p || q) = int p^2 / q``, which is *mass covering*:
a region where ``p`` has mass and ``q`` little costs ``p^2 / q``, so rare states present in the
target are kept (reverse KL, ``int q log(q / p)``, lets them go). Its gradient with respect to the
flow's parameters ``theta`` is

    grad D_2 = -int (p^2 / q) grad log q = -Z_g E_g[grad log q],    g = p^2 / q  (q detached),

so ``grad log D_2 = -E_g[grad log q_theta]``. FAB estimates ``E_g`` with annealed importance
sampling (AIS) from ``q`` to ``g``, run on the generic annealer (`openmm_bg.sampling.anneal`)
with ``log_target = 2 log p - log q`` and the flow held fixed, and minimises the surrogate
``-sum_i W_i log q_theta(x_i)`` (self-normalised AIS weights ``W_i``): `fab_loss`.

The generator's annealer works in latent space (`openmm_bg.model.annealed.latent_path`), with
``log_q = log N(z)`` and ``log p = log N(z) + log w(z)``; there ``g`` becomes
``log N(z) + 2 log w(z)`` (`fab_target`), the pull-back of ``p^2 / q`` through the flow.

A prioritised replay buffer (`ReplayBuffer`) keeps the AIS samples of the last few refreshes in
the flow's coordinates ``v`` with their log weights; a batch is drawn with probability
proportional to the weights (without replacement) and its NLL is the loss. After the step, the
log weights of the drawn samples are updated by ``log q_old - log q_new``: the target
``p^2 / q`` moved with ``q``, so that is exactly the factor that turns a weight for the old target
into one for the new.

Examples
--------
The surrogate's gradient is ``grad log D_2`` (here with exact samples of ``g``, weights equal):

>>> import torch
>>> mu = torch.tensor(0.3, requires_grad=True)
>>> x = torch.tensor([-1.0, 0.0, 1.0])
>>> fab_loss(-0.5 * (x - mu) ** 2, torch.zeros(3)).backward()
>>> round(mu.grad.item(), 6)  # -mean(x - mu)
0.3
"""

from __future__ import annotations

import math

import torch

from .. import _validation as check
from ..sampling import ValueAndGrad

__all__ = ["fab_loss", "fab_target", "ReplayBuffer"]


def fab_loss(log_q: torch.Tensor, log_weights: torch.Tensor) -> torch.Tensor:
    """FAB surrogate ``-sum_i W_i log q_theta(x_i)`` with self-normalised weights ``W`` (scalar).

    Parameters
    ----------
    log_q : torch.Tensor
        ``[n]`` log density of the flow at the samples, differentiable in its parameters.
    log_weights : torch.Tensor
        ``[n]`` unnormalised log AIS weights of the samples for the target ``p^2 / q`` (no
        gradient is taken through them); ``-inf`` is weight zero.

    Returns
    -------
    torch.Tensor
        Its gradient estimates ``grad_theta log D_2(p || q_theta)``. Zero-weight rows are left out
        (their ``log_q`` may be ``-inf``).

    Raises
    ------
    ValueError
        Shapes differ, a weight is NaN or ``+inf``, or every weight is zero.
    """
    if log_q.shape != log_weights.shape or log_q.dim() != 1:
        raise ValueError(f"log_q and log_weights must both be [n], got {list(log_q.shape)} and "
                         f"{list(log_weights.shape)}")
    lw = log_weights.detach().to(torch.float64)
    if bool(torch.isnan(lw).any() | torch.isposinf(lw).any()):
        raise ValueError("log_weights has NaN or +inf entries; a zero weight is -inf")
    keep = torch.isfinite(lw)
    if not bool(keep.any()):
        raise ValueError("every FAB weight is zero: the annealed samples all lie where p = 0")
    w = torch.softmax(lw[keep], 0)
    return -(w * log_q[keep].to(torch.float64)).sum()


def fab_target(log_q, log_p: ValueAndGrad) -> ValueAndGrad:
    """``log g = 2 log p - log q`` with its gradient, for `openmm_bg.sampling.anneal`.

    Parameters
    ----------
    log_q : callable
        ``[n, d] -> [n]`` log density of the (fixed) base, differentiable by autograd.
    log_p : ValueAndGrad
        ``[n, d] -> ([n], [n, d])`` log target and its gradient (``-inf``, gradient 0, where ``p = 0``).

    Returns
    -------
    ValueAndGrad
        ``-inf`` (gradient 0) wherever ``p`` is zero; float64.

    Examples
    --------
    >>> import torch
    >>> from openmm_bg.sampling import ValueAndGrad
    >>> g = fab_target(lambda x: -0.5 * (x**2).sum(1), ValueAndGrad(lambda x: (-(x**2).sum(1), -2 * x)))
    >>> value, grad = g.fn(torch.tensor([[1.0]], dtype=torch.float64))
    >>> value.item(), grad.item()  # -2 x^2 + x^2 / 2 and its derivative
    (-1.5, -3.0)
    """
    def value_and_grad(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        value_p, grad_p = log_p.fn(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            value_q = log_q(xg).to(torch.float64)
            grad_q = torch.autograd.grad(value_q.sum(), xg)[0].to(torch.float64)
        value_p, grad_p = value_p.to(torch.float64), grad_p.to(torch.float64)
        alive = torch.isfinite(value_p) & torch.isfinite(value_q)
        value = torch.where(alive, 2.0 * value_p - value_q.detach(), torch.full_like(value_p, -math.inf))
        grad = torch.where(alive[:, None], 2.0 * grad_p - grad_q, torch.zeros_like(grad_p))
        return value, grad

    return ValueAndGrad(value_and_grad)


class ReplayBuffer:
    """Prioritised replay buffer of FAB samples: flow coordinates, log weights, log q when added.

    Parameters
    ----------
    capacity : int
        Most samples kept (the oldest are dropped first), >= 1.
    n_dof : int
        Dimension of the stored coordinates.

    Attributes
    ----------
    v : torch.Tensor
        ``[size, n_dof]`` stored coordinates.
    log_weights : torch.Tensor
        ``[size]`` float64 log weights for the current target ``p^2 / q``.
    log_q : torch.Tensor
        ``[size]`` float64 log density of the flow the weights refer to.

    Examples
    --------
    >>> import torch
    >>> buf = ReplayBuffer(capacity=4, n_dof=1)
    >>> buf.add(torch.zeros(3, 1), torch.tensor([0.0, 0.0, -math.inf]), torch.zeros(3))
    >>> len(buf), sorted(buf.sample(2, torch.Generator().manual_seed(0)).tolist())  # never the zero weight
    (2, [0, 1])
    >>> buf.adjust(torch.tensor([0]), torch.tensor([1.0]))  # q rose by 1 nat at sample 0
    >>> buf.log_weights.tolist()
    [-1.0, 0.0]
    """

    def __init__(self, capacity: int, n_dof: int):
        self.capacity = check.positive_int("capacity", capacity)
        self.n_dof = check.positive_int("n_dof", n_dof)
        self.v = torch.zeros(0, self.n_dof)
        self.log_weights = torch.zeros(0, dtype=torch.float64)
        self.log_q = torch.zeros(0, dtype=torch.float64)

    def __len__(self) -> int:
        return int(self.v.shape[0])

    def add(self, v: torch.Tensor, log_weights: torch.Tensor, log_q: torch.Tensor) -> None:
        """Append samples ``v [m, n_dof]``; zero-weight rows (``-inf``) are not stored."""
        keep = torch.isfinite(log_weights) & torch.isfinite(log_q)
        v = v.detach()[keep]
        if self.v.numel() == 0:
            self.v = self.v.to(dtype=v.dtype, device=v.device)
            self.log_weights = self.log_weights.to(v.device)
            self.log_q = self.log_q.to(v.device)
        keep_last = slice(-self.capacity, None)
        self.v = torch.cat([self.v, v.to(self.v)])[keep_last]
        self.log_weights = torch.cat([self.log_weights, log_weights.detach()[keep].to(self.log_weights)])[keep_last]
        self.log_q = torch.cat([self.log_q, log_q.detach()[keep].to(self.log_q)])[keep_last]

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Indices of ``min(n, size)`` samples drawn with probability ∝ weight, without replacement."""
        if len(self) == 0:
            raise ValueError("the replay buffer is empty: add annealed samples first")
        probs = torch.softmax(self.log_weights, 0)
        n = min(int(n), int((probs > 0).sum()))
        return torch.multinomial(probs.cpu(), n, replacement=False, generator=generator).to(self.v.device)

    def adjust(self, index: torch.Tensor, log_q_new: torch.Tensor) -> None:
        """After a step: ``log w += log q_old - log q_new`` at ``index``; ``-inf`` new densities drop out."""
        new = log_q_new.detach().to(self.log_q)
        self.log_weights[index] = torch.where(torch.isfinite(new), self.log_weights[index] + self.log_q[index] - new,
                                              torch.full_like(new, -math.inf))
        self.log_q[index] = torch.where(torch.isfinite(new), new, self.log_q[index])

    def state_dict(self) -> dict:
        return {"v": self.v.cpu(), "log_weights": self.log_weights.cpu(), "log_q": self.log_q.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.v, self.log_weights, self.log_q = state["v"], state["log_weights"], state["log_q"]
