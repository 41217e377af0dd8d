"""Per-dimension metadata of a transform's output ``y``: kind, domain, atoms, names.

The flows layer reads it to pick a coupling per dimension: circular dimensions (torsions) live on
``[lower, upper)`` with period ``upper - lower``; bounded ones (angles) on the open interval
``(lower, upper)``; positive ones (bond lengths) on ``(0, inf)``; the rest (whitened Cartesian) on the
real line.

Examples
--------
>>> import torch
>>> d = DimInfo.build(["bond", "angle", "torsion", "cartesian"], [(0, 1), (0, 1, 2), (0, 1, 2, 3), ()])
>>> d.circular_mask.tolist(), d.upper.tolist()
([False, False, True, False], [inf, 1.0, 1.0, inf])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["DimInfo", "DOMAINS"]

#: Domain ``(lower, upper)`` of each kind of dimension, in the units of ``y``.
DOMAINS = {
    "bond": (0.0, math.inf),        # nm
    "angle": (0.0, 1.0),            # theta / pi
    "torsion": (-1.0, 1.0),         # phi / pi, circular, period 2
    "cartesian": (-math.inf, math.inf),  # whitened Cartesian (core or free dimensions)
}


@dataclass(frozen=True)
class DimInfo:
    """What each of the ``n_dof`` dimensions of ``y`` is.

    Attributes
    ----------
    kinds : tuple of str
        ``"bond"``, ``"angle"``, ``"torsion"`` or ``"cartesian"`` per dimension.
    atoms : tuple of tuple of int
        Atoms defining the dimension (``(i, j)`` bond, ``(i, j, k)`` angle, ``(i, j, k, l)`` torsion,
        ``()`` for whitened Cartesian dimensions, which mix several atoms).
    names : tuple of str
        Readable labels, e.g. ``"torsion ACE1:C-ALA2:N-ALA2:CA-ALA2:C"``.
    lower, upper : torch.Tensor
        ``[n_dof]`` float64 domain bounds (``-inf``/``inf`` where unbounded).
    circular_mask, bounded_mask, positive_mask, unbounded_mask : torch.Tensor
        ``[n_dof]`` bool: torsions; angles; bond lengths; whitened Cartesian.
    bond_dims, angle_dims, torsion_dims, cartesian_dims : torch.Tensor
        ``[n]`` long indices of each kind in ``y``.
    """

    kinds: tuple
    atoms: tuple
    names: tuple
    lower: torch.Tensor
    upper: torch.Tensor
    circular_mask: torch.Tensor
    bounded_mask: torch.Tensor
    positive_mask: torch.Tensor
    unbounded_mask: torch.Tensor
    bond_dims: torch.Tensor
    angle_dims: torch.Tensor
    torsion_dims: torch.Tensor
    cartesian_dims: torch.Tensor

    @classmethod
    def build(cls, kinds, atoms, names=None) -> DimInfo:
        """Metadata from a kind and an atom tuple per dimension."""
        kinds = tuple(kinds)
        if names is None:
            names = [f"{k} {a}" for k, a in zip(kinds, atoms, strict=True)]
        names = tuple(names)
        lower = torch.tensor([DOMAINS[k][0] for k in kinds], dtype=torch.float64)
        upper = torch.tensor([DOMAINS[k][1] for k in kinds], dtype=torch.float64)

        def mask(kind):
            return torch.tensor([k == kind for k in kinds], dtype=torch.bool)

        def idx(kind):
            return torch.tensor([d for d, k in enumerate(kinds) if k == kind], dtype=torch.long)

        return cls(kinds, tuple(tuple(int(x) for x in a) for a in atoms), names, lower, upper,
                   mask("torsion"), mask("angle"), mask("bond"), mask("cartesian"),
                   idx("bond"), idx("angle"), idx("torsion"), idx("cartesian"))

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def period(self) -> float:
        """Period of the circular dimensions in units of ``y`` (2, since torsions are phi / pi)."""
        return DOMAINS["torsion"][1] - DOMAINS["torsion"][0]

    def index(self, kind: str, atoms) -> int:
        """Dimension of ``kind`` defined by ``atoms`` (a torsion or angle also matches reversed).

        Raises KeyError if absent (e.g. a constrained bond, or a torsion inside the Cartesian core).
        """
        atoms = tuple(int(a) for a in atoms)
        for d, (k, a) in enumerate(zip(self.kinds, self.atoms, strict=True)):
            if k == kind and (a == atoms or a == atoms[::-1]):
                return d
        raise KeyError(f"no {kind} dimension on atoms {atoms}")

    def in_domain(self, y: torch.Tensor) -> torch.Tensor:
        """``[batch]`` bool: every dimension finite and inside its domain (torsions in ``[-1, 1)``)."""
        lo = self.lower.to(device=y.device, dtype=y.dtype)
        hi = self.upper.to(device=y.device, dtype=y.dtype)
        circ = self.circular_mask.to(y.device)
        ok = torch.isfinite(y) & (y < hi) & ((y > lo) | (circ & (y == lo)))
        return ok.all(-1)
