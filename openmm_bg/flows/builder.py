"""``build_flow``: the standard flow for ``n_dof`` dimensions with circular/bounded ones.

Layout: ``n_blocks`` blocks; block ``b`` splits the dimensions into two halves ``A_b``/``B_b``
(per kind, so each kind is split evenly) and applies a coupling on ``A_b`` conditioned on
``B_b``, then one on ``B_b`` conditioned on ``A_b``. Every block transforms every dimension.
The splits cycle through alternating indices, first/second half and seeded random halves,
so each dimension is conditioned on different partners in different blocks (this replaces
permutation layers, which would mix domains). A kind with a single dimension alternates
between the two halves.

``kind="realnvp"``: within a half, real dimensions get an :class:`AffineCoupling`, then the
circular (and, with ``bounded_mode="spline"``, interval) dimensions a :class:`SplineCoupling`;
each is conditioned on every dimension it does not transform -- torsions are handled by
circular splines conditioned on everything else.
``kind="spline"``: one :class:`SplineCoupling` per half for all kinds (real dims with linear
tails).

Alternatives chosen by ``circular_mode``/``bounded_mode = "unbounded"``: those dimensions are
treated as real by the flow (Gaussian prior, affine or tailed spline maps); the flow's
:meth:`Flow.in_domain` still checks the true domain, so samples outside it get weight 0
(``log_prob = -inf``). For the proposal density on the whole line that is exact, but the mass
outside the domain is wasted, and torsions are then not periodic in the flow.

Examples
--------
>>> import math, torch
>>> flow = build_flow(5, kind="spline", circular_mask=[0, 0, 1, 1, 0], bounded={4: (0.0, math.pi)},
...                   n_blocks=2, hidden=(16,), dtype=torch.float64)
>>> y = flow.sample(10, generator=torch.Generator().manual_seed(0))
>>> bool(flow.in_domain(y).all())
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .. import _validation as check
from .base import Sequential, Transform
from .coupling import AffineCoupling
from .domain import CIRCULAR, INTERVAL, REAL, Domain
from .flow import Flow
from .priors import Prior
from .spline_coupling import SplineCoupling

__all__ = ["build_flow", "block_masks", "check_flow_arguments"]


def _split(idx: list[int], block: int, seed: int) -> tuple[list[int], list[int]]:
    """Split one kind's indices into two halves, varying with the block number."""
    n = len(idx)
    if n == 0:
        return [], []
    if n == 1:
        return (idx, []) if block % 2 == 0 else ([], idx)
    pattern = block % 3
    if pattern == 0:
        a = idx[::2]
    elif pattern == 1:
        a = idx[: n // 2]
    else:
        g = torch.Generator().manual_seed(seed + 7919 * block)
        perm = torch.randperm(n, generator=g).tolist()
        a = sorted(idx[i] for i in perm[: n // 2])
    return a, [i for i in idx if i not in set(a)]


def block_masks(domain: Domain, n_blocks: int, seed: int = 0) -> list[torch.Tensor]:
    """The coupling masks of :func:`build_flow`: ``2 * n_blocks`` bool tensors ``[n_dof]``.

    Masks ``2b`` and ``2b + 1`` are complementary (block ``b`` transforms every dimension).
    """
    masks = []
    for b in range(n_blocks):
        m = torch.zeros(domain.n_dof, dtype=torch.bool)
        for kind in (REAL, CIRCULAR, INTERVAL):
            a, _ = _split(domain.indices(kind), b, seed)
            m[a] = True
        masks += [m, ~m]
    return masks


def _couplings(mask: torch.Tensor, domain: Domain, kind: str, hidden, bins, tail_bound, scale_bound,
               activation) -> list[Transform]:
    """Couplings transforming the ``mask`` dimensions.

    For ``"realnvp"`` the half is transformed in two steps, affine on its real dimensions and
    spline on the others; each step is conditioned on every dimension it does not transform.
    """
    if not mask.any():
        return []
    if kind == "spline":
        return [SplineCoupling(mask, domain, bins=bins, hidden=hidden, tail_bound=tail_bound,
                               activation=activation)]
    real = torch.tensor([k == REAL for k in domain.kinds])
    out: list[Transform] = []
    if (mask & real).any():
        out.append(AffineCoupling(mask & real, domain, hidden=hidden,
                                  scale_bound=scale_bound, activation=activation))
    if (mask & ~real).any():
        out.append(SplineCoupling(mask & ~real, domain, bins=bins,
                                  hidden=hidden, tail_bound=tail_bound, activation=activation))
    return out


def check_flow_arguments(kind: str = "realnvp", n_blocks: int = 4, hidden: Sequence[int] = (64, 64), bins: int = 8,
                         tail_bound: float = 5.0, scale_bound: float = 2.0, circular_mode: str = "spline",
                         bounded_mode: str = "spline", seed: int = 0, dtype: torch.dtype = torch.float32,
                         activation: type[nn.Module] = nn.SiLU) -> dict:
    """Check the architecture arguments of `build_flow` (cheap: call it before any expensive work).

    Returns them converted (``n_blocks``, ``bins``, ``seed`` as int, ``hidden`` as a tuple of int,
    bounds as float), as a dict of `build_flow`'s keyword arguments.

    Raises
    ------
    ValueError
        One message naming the argument and its allowed range: ``kind`` ``"realnvp"`` or
        ``"spline"``; ``n_blocks`` an integer >= 1; ``hidden`` a non-empty sequence of integers >= 1;
        ``bins`` an integer >= 2; ``tail_bound`` and ``scale_bound`` positive and finite; the modes
        ``"spline"`` or ``"unbounded"``; ``seed`` an integer; ``dtype`` float32 or float64;
        ``activation`` a `torch.nn.Module` subclass.

    Examples
    --------
    >>> check_flow_arguments(n_blocks=2, hidden=[32.0])["hidden"]
    (32,)
    >>> check_flow_arguments(hidden=())
    Traceback (most recent call last):
    ...
    ValueError: hidden must be a non-empty sequence of layer widths (integers >= 1), got ()
    """
    if kind not in ("realnvp", "spline"):
        raise ValueError(f"kind must be 'realnvp' or 'spline', got {kind!r}")
    for name, mode in (("circular_mode", circular_mode), ("bounded_mode", bounded_mode)):
        if mode not in ("spline", "unbounded"):
            raise ValueError(f"{name} must be 'spline' or 'unbounded', got {mode!r}")
    try:
        widths = () if isinstance(hidden, str | bytes) else tuple(hidden)
    except TypeError:
        widths = ()
    if not widths:
        raise ValueError(f"hidden must be a non-empty sequence of layer widths (integers >= 1), got {hidden!r}")
    widths = tuple(check.positive_int(f"hidden[{k}]", h) for k, h in enumerate(widths))
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if not (isinstance(activation, type) and issubclass(activation, nn.Module)):
        raise ValueError(f"activation must be a torch.nn.Module class (e.g. torch.nn.SiLU), got {activation!r}")
    return {"kind": kind, "n_blocks": check.positive_int("n_blocks", n_blocks), "hidden": widths,
            "bins": check.integer("bins", bins, low=2), "tail_bound": check.positive("tail_bound", tail_bound),
            "scale_bound": check.positive("scale_bound", scale_bound), "circular_mode": circular_mode,
            "bounded_mode": bounded_mode, "seed": check.integer("seed", seed), "dtype": dtype,
            "activation": activation}


def build_flow(
    n_dof: int,
    kind: str = "realnvp",
    circular_mask: Sequence[bool] | torch.Tensor | None = None,
    bounded: Mapping[int, tuple[float, float]] | Sequence[tuple[float, float] | None] | None = None,
    n_blocks: int = 4,
    hidden: Sequence[int] = (64, 64),
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    circular_interval: tuple[float, float] = (-math.pi, math.pi),
    bins: int = 8,
    tail_bound: float = 5.0,
    scale_bound: float = 2.0,
    circular_mode: str = "spline",
    bounded_mode: str = "spline",
    activation: type[nn.Module] = nn.SiLU,
    seed: int = 0,
    domain: Domain | None = None,
) -> Flow:
    """Build a flow on ``[batch, n_dof]`` (initialised as the identity map).

    Parameters
    ----------
    n_dof : int
        Number of dimensions.
    kind : {"realnvp", "spline"}
        Affine couplings on real dims (+ splines on circular/interval dims), or RQ splines on all.
    circular_mask : bool sequence or tensor ``[n_dof]``, optional
        Circular dimensions (torsions), on ``circular_interval``.
    bounded : dict ``{index: (low, high)}`` or sequence of ``(low, high) | None``, optional
        Bounded-interval dimensions (e.g. angles on ``(0, pi)``).
    n_blocks : int
        Number of blocks (each transforms every dimension once).
    hidden : sequence of int
        Conditioner hidden widths.
    device, dtype :
        Where and in which precision the flow runs (float32 or float64).
    circular_interval : (float, float)
        ``[low, high)`` of the circular dimensions, default ``(-pi, pi)``.
    bins, tail_bound : int, float
        Spline bins and tail bound (real dims splined on ``[-tail_bound, tail_bound]``).
    scale_bound : float
        Bound of the affine log-scale.
    circular_mode, bounded_mode : {"spline", "unbounded"}
        ``"spline"``: uniform prior + circular/interval splines, outputs in the domain by
        construction. ``"unbounded"``: treat as real (Gaussian prior); out-of-domain samples
        are flagged by :meth:`Flow.in_domain`.
    activation : type of nn.Module
        Conditioner activation.
    seed : int
        Seed of the random coupling splits (architecture only; weights use torch's global RNG,
        but the last layers start at zero so the initial map is the identity regardless).
    domain : Domain, optional
        Give the full domain directly instead of ``circular_mask``/``bounded``/``circular_interval``.

    Returns
    -------
    Flow
        With ``flow.domain`` the true output domain and ``flow.prior.domain`` the latent one.

    Raises
    ------
    ValueError
        ``n_dof`` not an integer >= 1, a ``domain`` of another size, or an architecture argument
        out of its range (see `check_flow_arguments`).
    """
    n_dof = check.positive_int("n_dof", n_dof)
    args = check_flow_arguments(kind, n_blocks, hidden, bins, tail_bound, scale_bound, circular_mode, bounded_mode,
                                seed, dtype, activation)
    n_blocks, hidden, bins, tail_bound, scale_bound, seed = (args[k] for k in ("n_blocks", "hidden", "bins",
                                                                               "tail_bound", "scale_bound", "seed"))
    if domain is None:
        domain = Domain.from_spec(n_dof, circular_mask, bounded, circular_interval)
    elif domain.n_dof != n_dof:
        raise ValueError(f"domain has {domain.n_dof} dimensions, expected {n_dof}")
    relax = [k for k, m in ((CIRCULAR, circular_mode), (INTERVAL, bounded_mode)) if m == "unbounded"]
    flow_domain = domain.relaxed(relax)
    layers: list[Transform] = []
    for mask in block_masks(flow_domain, n_blocks, seed):
        layers += _couplings(mask, flow_domain, kind, hidden, bins, tail_bound, scale_bound, activation)
    flow = Flow(Sequential(*layers), Prior(flow_domain), domain=domain)
    return flow.to(device=device, dtype=dtype)
