"""Batched geometry on Cartesian coordinates: distances, angles and dihedrals.

Plain functions in the style of ``mdtraj.compute_dihedrals`` that work on torch tensors
(differentiable) and on numpy arrays alike. Positions are ``[..., n_atoms, 3]`` in nm; the
result has the leading shape ``[...]`` and the input's type.

Examples
--------
>>> import numpy as np
>>> x = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]]])
>>> float(dihedral(x, 0, 1, 2, 3)[0])  # doctest: +ELLIPSIS
-1.5707963...
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor", "distance", "angle", "dihedral"]


def as_tensor(x, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Convert positions (tensor, array, OpenMM Quantity or mdtraj.Trajectory) to a tensor in nm."""
    if hasattr(x, "xyz") and hasattr(x, "topology"):  # mdtraj.Trajectory
        x = x.xyz
    if hasattr(x, "value_in_unit"):  # openmm.unit.Quantity
        import openmm.unit as u

        x = np.asarray(x.value_in_unit(u.nanometer))
    if isinstance(x, torch.Tensor):
        return x if dtype is None else x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def _wrap(fn):
    """Run ``fn`` on tensors and return the input's type (numpy in, numpy out)."""

    def wrapped(x, *atoms):
        if isinstance(x, torch.Tensor):
            return fn(x, *atoms)
        t = as_tensor(x, dtype=torch.float64)
        return fn(t, *atoms).numpy()

    wrapped.__name__ = fn.__name__
    wrapped.__doc__ = fn.__doc__
    return wrapped


@_wrap
def distance(x, i: int, j: int):
    """Distance between atoms ``i`` and ``j`` (nm), shape ``[...]``."""
    return torch.linalg.norm(x[..., j, :] - x[..., i, :], dim=-1)


@_wrap
def angle(x, i: int, j: int, k: int):
    """Angle i-j-k in radians, in [0, pi], shape ``[...]``."""
    a = x[..., i, :] - x[..., j, :]
    b = x[..., k, :] - x[..., j, :]
    cos = (a * b).sum(-1) / (torch.linalg.norm(a, dim=-1) * torch.linalg.norm(b, dim=-1))
    return torch.acos(cos.clamp(-1.0, 1.0))


@_wrap
def dihedral(x, i: int, j: int, k: int, l: int):
    """Dihedral angle i-j-k-l in radians, in (-pi, pi], same convention as mdtraj."""
    b1 = x[..., j, :] - x[..., i, :]
    b2 = x[..., k, :] - x[..., j, :]
    b3 = x[..., l, :] - x[..., k, :]
    n1 = torch.linalg.cross(b1, b2)
    n2 = torch.linalg.cross(b2, b3)
    y = torch.linalg.norm(b2, dim=-1) * (b1 * n2).sum(-1)
    return torch.atan2(y, (n1 * n2).sum(-1))
