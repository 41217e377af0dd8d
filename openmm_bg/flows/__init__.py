"""Normalizing flows on the flow variables ``y`` ``[batch, n_dof]`` (knows nothing about OpenMM).

Direction convention: ``forward`` maps latent ``z`` to output ``y``, ``inverse`` maps ``y`` to
``z``; both return ``(output, log_det)`` with ``log_det`` ``[batch]`` the log absolute Jacobian
determinant of the map applied. Dimensions are real, circular (``[low, high)``, default
``[-pi, pi)``) or bounded intervals (``(low, high)``), described by a :class:`Domain`; every
layer keeps each dimension in its domain by construction.

The names below are the public API; the spline math (:mod:`.splines`: ``knots``, ``rq_spline``,
``derivatives``) and the builder's ``block_masks`` stay importable from their modules.

Modules: :mod:`.domain` (per-dimension domains), :mod:`.base` (Transform protocol,
Sequential, Permutation, MLP), :mod:`.coupling` (RealNVP affine coupling), :mod:`.splines`
(rational-quadratic spline math), :mod:`.spline_coupling` (circular / interval / tailed spline
coupling), :mod:`.priors` (Gaussian / uniform prior), :mod:`.flow` (Flow container),
:mod:`.builder` (``build_flow``), :mod:`.standardize` (fixed data standardisation).

Examples
--------
>>> import torch
>>> from openmm_bg.flows import build_flow
>>> flow = build_flow(6, kind="realnvp", circular_mask=[0, 0, 0, 0, 1, 1], n_blocks=2, hidden=(16,))
>>> z = flow.prior.sample(4, generator=torch.Generator().manual_seed(0))
>>> y, log_det = flow(z)
>>> z2, log_det_inv = flow.inverse(y)
>>> bool(torch.allclose(z, z2, atol=1e-5)), bool((log_det + log_det_inv).abs().max() < 1e-5)
(True, True)
"""

from .base import MLP, Permutation, Sequential, Transform
from .builder import build_flow
from .coupling import AffineCoupling
from .domain import CIRCULAR, INTERVAL, REAL, Domain
from .flow import Flow
from .priors import Prior
from .spline_coupling import SplineCoupling
from .standardize import Standardize

__all__ = [
    "CIRCULAR",
    "INTERVAL",
    "MLP",
    "REAL",
    "AffineCoupling",
    "Domain",
    "Flow",
    "Permutation",
    "Prior",
    "Sequential",
    "SplineCoupling",
    "Standardize",
    "Transform",
    "build_flow",
]
