"""Batched geometry on Cartesian coordinates: distances, angles and dihedrals (the one home).

Every angle and dihedral in openmm-bg (reaction coordinates, internal coordinates of the
transforms, the Z-matrix builder) is computed here, with one numerical recipe:

- angle between vectors ``a`` and ``b``: ``atan2(|a x b|, a . b)``, in ``[0, pi]``. Unlike
  ``arccos(a . b / |a||b|)`` it is accurate near 0 and pi, needs no clamping, and its gradient stays
  finite there (zero at exactly collinear vectors, where the angle has no direction of steepest
  change);
- dihedral from bond vectors ``b1 = x_j - x_i``, ``b2 = x_k - x_j``, ``b3 = x_l - x_k``:
  ``atan2(|b2| b1 . (b2 x b3), (b1 x b2) . (b2 x b3))``, in ``(-pi, pi]``, the sign convention of
  ``mdtraj.compute_dihedrals`` (the dihedral ``i-j-k-l`` equals that of ``l-k-j-i``). It is accurate
  and differentiable at planar (0 and pi) dihedrals; it is undefined (NaN gradient) only when three
  consecutive atoms are collinear.

The functions take torch tensors (differentiable, any float dtype, any device) or numpy arrays /
OpenMM quantities / mdtraj trajectories (computed in float64, returned as numpy). Positions are
``[..., n_atoms, 3]`` in nm; atom arguments are ints (result ``[...]``) or ``[m]`` index arrays
(result ``[..., m]``). The vector functions take a ``dim`` argument for layouts that keep the
Cartesian axis elsewhere.

Examples
--------
>>> import numpy as np
>>> x = np.array([[[1.0, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 1]]])
>>> float(dihedral(x, 0, 1, 2, 3)[0])  # doctest: +ELLIPSIS
-1.5707963...
>>> float(angle(x, 0, 1, 2)[0])  # doctest: +ELLIPSIS
1.5707963...
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["as_tensor", "distance", "angle", "dihedral", "vector_angle", "bond_dihedral"]


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


def _dot(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return (a * b).sum(dim)


def _vector_angle(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return torch.atan2(torch.linalg.norm(torch.linalg.cross(a, b, dim=dim), dim=dim), _dot(a, b, dim))


def _bond_dihedral(b1: torch.Tensor, b2: torch.Tensor, b3: torch.Tensor, dim: int = -1) -> torch.Tensor:
    n1 = torch.linalg.cross(b1, b2, dim=dim)
    n2 = torch.linalg.cross(b2, b3, dim=dim)
    return torch.atan2(torch.linalg.norm(b2, dim=dim) * _dot(b1, n2, dim), _dot(n1, n2, dim))


def _on_tensors(fn, *arrays, **kwargs):
    """Apply ``fn`` to tensors; numpy-like input is computed in float64 and returned as numpy."""
    if all(isinstance(a, torch.Tensor) for a in arrays):
        return fn(*arrays, **kwargs)
    tensors = [as_tensor(a, dtype=torch.float64) for a in arrays]
    return fn(*tensors, **kwargs).numpy()


def _index(atom, device: torch.device):
    if isinstance(atom, int | np.integer):
        return int(atom)
    return torch.as_tensor(np.asarray(atom) if not isinstance(atom, torch.Tensor) else atom,
                           dtype=torch.long, device=device)


def _points(x: torch.Tensor, atoms) -> list[torch.Tensor]:
    return [x[..., _index(a, x.device), :] for a in atoms]


def vector_angle(a, b, dim: int = -1):
    """Angle between vectors ``a`` and ``b`` (rad, in ``[0, pi]``), ``atan2(|a x b|, a . b)``.

    Parameters
    ----------
    a, b : torch.Tensor or array_like
        Vectors with the 3 Cartesian components along ``dim``.
    dim : int
        The Cartesian axis.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        The input shape without ``dim``. A zero vector gives 0; NaN gives NaN.
    """
    return _on_tensors(_vector_angle, a, b, dim=dim)


def bond_dihedral(b1, b2, b3, dim: int = -1):
    """Dihedral (rad, in ``(-pi, pi]``, mdtraj's sign) of the bond vectors ``b1, b2, b3``.

    For atoms ``i-j-k-l``: ``b1 = x_j - x_i``, ``b2 = x_k - x_j``, ``b3 = x_l - x_k``.

    Parameters
    ----------
    b1, b2, b3 : torch.Tensor or array_like
        Bond vectors with the 3 Cartesian components along ``dim``.
    dim : int
        The Cartesian axis.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        The input shape without ``dim``.
    """
    return _on_tensors(_bond_dihedral, b1, b2, b3, dim=dim)


def _distance(x: torch.Tensor, i, j) -> torch.Tensor:
    xi, xj = _points(x, (i, j))
    return torch.linalg.norm(xj - xi, dim=-1)


def _angle(x: torch.Tensor, i, j, k) -> torch.Tensor:
    xi, xj, xk = _points(x, (i, j, k))
    return _vector_angle(xi - xj, xk - xj)


def _dihedral(x: torch.Tensor, i, j, k, l) -> torch.Tensor:
    xi, xj, xk, xl = _points(x, (i, j, k, l))
    return _bond_dihedral(xj - xi, xk - xj, xl - xk)


def distance(x, i, j):
    """Distance between atoms ``i`` and ``j`` (nm).

    Parameters
    ----------
    x : torch.Tensor or array_like
        ``[..., n_atoms, 3]`` positions, nm.
    i, j : int or ``[m]`` int array

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``[...]`` (int atoms) or ``[..., m]`` (index arrays), nm.
    """
    return _on_tensors(lambda t: _distance(t, i, j), x)


def angle(x, i, j, k):
    """Angle ``i-j-k`` (rad, in ``[0, pi]``), as ``mdtraj.compute_angles``.

    Parameters
    ----------
    x : torch.Tensor or array_like
        ``[..., n_atoms, 3]`` positions, nm.
    i, j, k : int or ``[m]`` int array
        ``j`` is the vertex.

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``[...]`` or ``[..., m]``, rad.
    """
    return _on_tensors(lambda t: _angle(t, i, j, k), x)


def dihedral(x, i, j, k, l):
    """Dihedral angle ``i-j-k-l`` (rad, in ``(-pi, pi]``), as ``mdtraj.compute_dihedrals``.

    Parameters
    ----------
    x : torch.Tensor or array_like
        ``[..., n_atoms, 3]`` positions, nm.
    i, j, k, l : int or ``[m]`` int array

    Returns
    -------
    torch.Tensor or numpy.ndarray
        ``[...]`` or ``[..., m]``, rad.
    """
    return _on_tensors(lambda t: _dihedral(t, i, j, k, l), x)
