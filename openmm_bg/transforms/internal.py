"""Bond, angle and torsion coordinates <-> Cartesian positions, batched in torch.

Conventions (shared by the whole `openmm_bg.transforms` package):

- positions ``x`` are ``[batch, n_atoms, 3]`` in nm;
- a placed atom ``i`` with references ``(j, k, l)`` has bond length ``|x_i - x_j|`` (nm), bond angle
  ``i-j-k`` in radians in ``(0, pi)`` and torsion ``i-j-k-l`` in radians in ``[-pi, pi)``, with the
  sign convention of ``mdtraj.compute_dihedrals`` (the torsion equals that of ``l-k-j-i``);
- the volume element of one placed atom is ``dx_i = b^2 sin(theta) db dtheta dphi``.

Degenerate geometry (zero-length bonds, collinear reference atoms, NaN) never raises: it gives
NaN or inf values that callers mask.

Examples
--------
>>> import torch
>>> x = torch.tensor([[[0.0, 0, 0], [0.1, 0, 0], [0.1, 0.1, 0], [0.1, 0.1, 0.1]]], dtype=torch.float64)
>>> i, j, k, l = (torch.tensor([3]), torch.tensor([2]), torch.tensor([1]), torch.tensor([0]))
>>> b, a, t = bond_lengths(x, i, j), bond_angles(x, i, j, k), torsions(x, i, j, k, l)
>>> y = place_atoms(x[:, j], x[:, k], x[:, l], b, a, t)
>>> bool(torch.allclose(y, x[:, i]))
True
"""

from __future__ import annotations

import torch

from ..geometry import angle, bond_dihedral, dihedral, distance, vector_angle

__all__ = ["bond_lengths", "bond_angles", "torsions", "place_atoms", "internal_coordinates"]


def bond_lengths(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Distances ``|x_i - x_j|`` in nm.

    Parameters
    ----------
    x : torch.Tensor
        ``[batch, n_atoms, 3]`` positions, nm.
    i, j : torch.Tensor
        ``[m]`` long atom indices.

    Returns
    -------
    torch.Tensor
        ``[batch, m]``.
    """
    return distance(x, i, j)


def bond_angles(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Angles ``i-j-k`` in radians, ``[batch, m]``, in ``[0, pi]``.

    `openmm_bg.geometry.angle`: ``atan2(|a x b|, a . b)``, accurate near 0 and pi and without any
    clamping. A zero-length bond gives 0 (its ``log sin`` is ``-inf``); NaN input gives NaN.
    """
    return angle(x, i, j, k)


def torsions(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor,
             l: torch.Tensor) -> torch.Tensor:
    """Torsions ``i-j-k-l`` in radians, ``[batch, m]``, in ``(-pi, pi]`` (`openmm_bg.geometry.dihedral`)."""
    return dihedral(x, i, j, k, l)


def place_atoms(xj: torch.Tensor, xk: torch.Tensor, xl: torch.Tensor, bond: torch.Tensor,
                angle: torch.Tensor, torsion: torch.Tensor) -> torch.Tensor:
    """Positions of atoms from their references and internal coordinates (NeRF).

    Parameters
    ----------
    xj, xk, xl : torch.Tensor
        ``[batch, m, 3]`` positions of the bond, angle and torsion partners, nm.
    bond : torch.Tensor
        ``[batch, m]`` bond lengths ``|x_i - x_j|``, nm.
    angle : torch.Tensor
        ``[batch, m]`` angles ``i-j-k``, rad.
    torsion : torch.Tensor
        ``[batch, m]`` torsions ``i-j-k-l``, rad.

    Returns
    -------
    torch.Tensor
        ``[batch, m, 3]`` positions ``x_i``, nm. Collinear ``j, k, l`` give NaN.
    """
    bc = xj - xk
    bc = bc / torch.linalg.norm(bc, dim=-1, keepdim=True)
    n = torch.linalg.cross(xk - xl, bc)
    n = n / torch.linalg.norm(n, dim=-1, keepdim=True)
    m = torch.linalg.cross(n, bc)
    sin_a = torch.sin(angle)
    d0 = -bond * torch.cos(angle)
    d1 = bond * sin_a * torch.cos(torsion)
    d2 = bond * sin_a * torch.sin(torsion)
    return xj + d0[..., None] * bc + d1[..., None] * m + d2[..., None] * n


def internal_coordinates(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor, k: torch.Tensor, l: torch.Tensor):
    """Bond lengths ``i-j``, angles ``i-j-k`` and torsions ``i-j-k-l`` at once (shared gathers).

    Same values as `bond_lengths`, `bond_angles` and `torsions`; faster for many rows.

    Parameters
    ----------
    x : torch.Tensor
        ``[batch, n_atoms, 3]`` positions, nm.
    i, j, k, l : torch.Tensor
        ``[m]`` long atom indices on ``x``'s device.

    Returns
    -------
    bond, angle, torsion : torch.Tensor
        ``[batch, m]`` each: nm, rad in ``[0, pi]``, rad in ``(-pi, pi]``.
    """
    m = i.shape[0]
    xi, xj, xk, xl = x.index_select(1, torch.cat([i, j, k, l])).unflatten(1, (4, m)).unbind(1)
    b1 = xj - xi
    b2 = xk - xj
    bond = torch.linalg.norm(b1, dim=-1)
    return bond, vector_angle(-b1, b2), bond_dihedral(b1, b2, xl - xk)
