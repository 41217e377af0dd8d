"""The geometric path between a normalised base density q and an unnormalised target p.

``log pi_b(x) = (1 - b) log q(x) + b log p(x)`` for ``0 <= b <= 1``. A term whose coefficient is 0
is dropped rather than multiplied, so ``pi_0 = q`` and ``pi_1 = p`` hold exactly even where the
other density is zero (``0 x -inf`` never becomes NaN).

Each density is a callable ``[n, d] -> [n]`` (float64 log density). Its gradient is taken with
``torch.autograd``; a callable that computes its gradient itself (forces from OpenMM, say) is
wrapped in `ValueAndGrad`. Evaluations are counted (rows, i.e. calls x batch size).

Examples
--------
>>> import torch
>>> path = GeometricPath(lambda x: -0.5 * (x**2).sum(1), lambda x: -(x**2).sum(1))
>>> point = path.evaluate(torch.tensor([[1.0, 2.0]], dtype=torch.float64))
>>> point.log_density(0.5).item(), point.grad(0.5).tolist()
(-3.75, [[-1.5, -3.0]])
>>> path.n_target_evaluations
1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .support import Support

__all__ = ["ValueAndGrad", "PathPoint", "GeometricPath"]


class ValueAndGrad:
    """A log density that returns its own gradient: ``fn(x [n, d]) -> (value [n], grad [n, d])``.

    Use it where the gradient is cheaper to get directly than through ``torch.autograd`` (forces).
    """

    def __init__(self, fn: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]):
        if not callable(fn):
            raise ValueError(f"ValueAndGrad needs a callable, got {type(fn).__name__}")
        self.fn = fn


def _value_and_grad(fn, x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(fn, ValueAndGrad):
        value, grad = fn.fn(x)
    else:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            value = fn(xg)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must return a torch tensor [n], got {type(value).__name__}")
            if value.requires_grad:
                grad = torch.autograd.grad(value.sum(), xg, allow_unused=True)[0]
            else:
                grad = None
            grad = torch.zeros_like(x) if grad is None else grad  # a constant has gradient 0
    value, grad = torch.as_tensor(value).detach(), torch.as_tensor(grad).detach()
    if value.shape != x.shape[:1] or grad.shape != x.shape:
        raise ValueError(f"{name} must map [n, d] = {list(x.shape)} to a value [n] and gradient [n, d]; "
                         f"got {list(value.shape)} and {list(grad.shape)}")
    return value.to(torch.float64), grad.to(torch.float64)


def _mix(beta: float, base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(1 - beta) base + beta target`` with a zero-coefficient term dropped (0 x inf = 0)."""
    if beta == 0.0:
        return base
    if beta == 1.0:
        return target
    return (1.0 - beta) * base + beta * target


@dataclass(frozen=True)
class PathPoint:
    """Particles on the path: positions with both log densities and their gradients.

    Attributes
    ----------
    x : torch.Tensor
        ``[n, d]`` positions.
    log_q, log_p : torch.Tensor
        ``[n]`` float64 base and target log densities (``-inf``: zero density).
    grad_q, grad_p : torch.Tensor
        ``[n, d]`` their gradients with respect to ``x``.
    """

    x: torch.Tensor
    log_q: torch.Tensor
    log_p: torch.Tensor
    grad_q: torch.Tensor
    grad_p: torch.Tensor

    def log_density(self, beta: float) -> torch.Tensor:
        """``[n]`` unnormalised ``log pi_beta``."""
        return _mix(beta, self.log_q, self.log_p)

    def grad(self, beta: float) -> torch.Tensor:
        """``[n, d]`` gradient of ``log pi_beta``."""
        return _mix(beta, self.grad_q, self.grad_p)

    def take(self, index: torch.Tensor) -> PathPoint:
        """The particles at ``index`` (e.g. resampled ancestors)."""
        return PathPoint(*(getattr(self, f)[index] for f in _FIELDS))

    def where(self, mask: torch.Tensor, other: PathPoint) -> PathPoint:
        """Rows of ``other`` where ``mask [n]`` is true, of ``self`` elsewhere."""
        def pick(a, b):
            return torch.where(mask.reshape(-1, *([1] * (a.dim() - 1))), b, a)
        return PathPoint(*(pick(getattr(self, f), getattr(other, f)) for f in _FIELDS))


_FIELDS = ("x", "log_q", "log_p", "grad_q", "grad_p")


class GeometricPath:
    """``pi_b ∝ q^(1-b) p^b`` from a normalised base ``q`` to an unnormalised target ``p``.

    Parameters
    ----------
    log_q : callable or ValueAndGrad
        ``[n, d] -> [n]`` log density of the base (normalised).
    log_target : callable or ValueAndGrad
        ``[n, d] -> [n]`` unnormalised log density of the target; ``-inf`` for states outside its
        domain (never clamp: a move into such a state is rejected).
    support : Support, optional
        The domain both densities live on (circles, intervals); kernels fold their proposals
        into it. None: the real line in every dimension.

    Attributes
    ----------
    n_target_evaluations, n_gradient_evaluations : int
        Rows of ``log_target`` evaluated, and of those with a gradient.
    n_base_evaluations : int
        Rows of ``log_q`` evaluated.
    """

    def __init__(self, log_q, log_target, support: Support | None = None):
        for name, fn in (("log_q", log_q), ("log_target", log_target)):
            if not callable(fn) and not isinstance(fn, ValueAndGrad):
                raise ValueError(f"{name} must be a callable [n, d] -> [n] or a ValueAndGrad, "
                                 f"got {type(fn).__name__}")
        if support is not None and not isinstance(support, Support):
            raise ValueError(f"support must be an openmm_bg.sampling.Support or None, got {type(support).__name__}")
        self.log_q, self.log_target, self.support = log_q, log_target, support
        self.n_target_evaluations = self.n_gradient_evaluations = self.n_base_evaluations = 0

    def evaluate(self, x: torch.Tensor) -> PathPoint:
        """Both log densities and their gradients at ``x [n, d]``."""
        log_q, grad_q = _value_and_grad(self.log_q, x, "log_q")
        log_p, grad_p = _value_and_grad(self.log_target, x, "log_target")
        n = x.shape[0]
        self.n_base_evaluations += n
        self.n_target_evaluations += n
        self.n_gradient_evaluations += n
        return PathPoint(x.detach(), log_q, log_p, grad_q, grad_p)
