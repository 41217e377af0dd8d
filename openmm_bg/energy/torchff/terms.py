"""What every translated force shares: the `_Term` base class, geometry and pair lists.

Each OpenMM force becomes one `_Term`, a ``torch.nn.Module`` whose ``energy(x, params)`` maps
positions ``x`` laid out as ``[3, n_atoms, batch]`` (nm; batch innermost, so that gathers copy
contiguous rows; `TorchForceField` transposes the public ``[batch, n_atoms, 3]``) and the global
parameters to energies ``[batch]`` (kJ/mol). Per-item constants (one per bond, pair, particle)
are buffers of shape ``[n_items, 1]`` that broadcast against ``[n_items, batch]``.

This module is the one home of the force field's geometry (distances, angles and dihedrals on
``[3, n, batch]`` positions), of the all-pairs lists with exclusions, of unit stripping and of
the ``_Unsupported`` error through which a term refuses a force it cannot translate.

Examples
--------
>>> import torch
>>> x = torch.tensor([[0.0, 0.3], [0.0, 0.4], [0.0, 0.0]]).reshape(3, 2, 1)  # 2 atoms, batch 1
>>> _distance(x, torch.tensor([0]), torch.tensor([1]))  # [n_pairs, batch], nm
tensor([[0.5000]])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ...constants import ONE_4PI_EPS0  # Coulomb constant, kJ mol^-1 nm e^-2 (as OpenMM's Reference)
from ...geometry import bond_dihedral, vector_angle

__all__ = ["ONE_4PI_EPS0"]



class _Unsupported(ValueError):
    """A force (or a feature of one) the torch force field cannot translate."""


# --------------------------------------------------------------------------------------------
# geometry on positions [3, n, batch] (batch innermost: gathers copy contiguous rows)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[:, index]`` for positions ``x`` [3, n, batch] (batch innermost) and 1D ``index``."""
    return torch.index_select(x, 1, index)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(0)


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v * v).sum(0))


def _distance(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return _norm(_gather(x, j) - _gather(x, i))


def _distance_vec(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    return _norm(p2 - p1)


def _angle_vec(p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    return vector_angle(p1 - p2, p3 - p2, dim=0)


def _dihedral_vec(p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
    return bond_dihedral(p2 - p1, p3 - p2, p4 - p3, dim=0)


def _angle(x, i, j, k):
    return _angle_vec(_gather(x, i), _gather(x, j), _gather(x, k))


def _dihedral(x, i, j, k, l):
    return _dihedral_vec(_gather(x, i), _gather(x, j), _gather(x, k), _gather(x, l))


# --------------------------------------------------------------------------------------------
# pair lists


def _kept(n: int, i: np.ndarray, j: np.ndarray, excluded: set[tuple[int, int]]) -> np.ndarray:
    """Mask over the pairs ``(i, j)`` of ``n`` particles: False for the ``excluded`` ones (min, max)."""
    mask = np.ones((n, n), dtype=bool)
    ex = np.array(sorted(excluded), dtype=np.int64).reshape(-1, 2)
    mask[ex[:, 0], ex[:, 1]] = False
    return mask[i, j]


def _all_pairs(n: int, excluded: set[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of ``n`` particles, without the ``excluded`` ones (given as (min, max))."""
    i, j = np.triu_indices(n, k=1)
    if excluded:
        keep = _kept(n, i, j, excluded)
        i, j = i[keep], j[keep]
    return i.astype(np.int64), j.astype(np.int64)


def _exclusions(force) -> set[tuple[int, int]]:
    """Excluded pairs ``(min, max)`` of a CustomNonbondedForce / CustomGBForce."""
    excluded = set()
    for e in range(force.getNumExclusions()):
        a, b = force.getExclusionParticles(e)
        excluded.add((min(a, b), max(a, b)))
    return excluded


def _sum_rows(value, batch: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-item value (float, [n, 1] or [n, batch]) over the items to [batch]."""
    if not isinstance(value, torch.Tensor):
        return torch.full((batch,), float(value) * n, dtype=like.dtype, device=like.device)
    if value.dim() < 2:
        value = value.reshape(-1, 1)
    return value.to(like.dtype).expand(n, batch).sum(0)


# --------------------------------------------------------------------------------------------
# reading forces


def _value(quantity) -> float:
    """Strip OpenMM units (MD unit system) from a scalar."""
    if hasattr(quantity, "value_in_unit_system"):
        import openmm.unit

        return float(quantity.value_in_unit_system(openmm.unit.md_unit_system))
    return float(quantity)


def _atom_index(rows, n_atoms: int) -> np.ndarray:
    """The first ``n_atoms`` entries (particle indices) of each parameter row, ``[n_items, n_atoms]``."""
    return np.array([list(r[:n_atoms]) for r in rows], dtype=np.int64).reshape(-1, n_atoms)


def _method_name(force, method: int) -> str:
    for name in ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME", "LJPME"):
        if getattr(type(force), name, None) == method:
            return name
    return str(method)


def _require_no_cutoff(force) -> None:
    """Refuse a (Custom)NonbondedForce / CustomGBForce whose nonbonded method is not NoCutoff."""
    method = force.getNonbondedMethod()
    if method != type(force).NoCutoff:
        raise _Unsupported(f"{type(force).__name__} (nonbondedMethod {_method_name(force, method)}; only "
                           "NoCutoff is supported)")


# --------------------------------------------------------------------------------------------
# the base class


class _Term(nn.Module):
    """One translated force: ``energy(x, params) -> [batch]`` for positions ``x`` [3, n, batch]."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _buf(self, name: str, value, dtype, column: bool = True) -> None:
        """Register a constant; 1D float arrays become columns [n, 1] (batch is the last axis)."""
        tensor = torch.as_tensor(np.asarray(value), dtype=dtype)
        if column and dtype.is_floating_point and tensor.dim() == 1:
            tensor = tensor[:, None]
        self.register_buffer(name, tensor, persistent=False)

    def _setup(self, spec: dict, dtype) -> None:  # pragma: no cover - terms that pickle compactly
        """Build the buffers from ``spec``, the term's parameters as plain numbers and numpy arrays."""
        raise NotImplementedError

    def n_pairs(self) -> int:
        """Pair interactions evaluated per configuration (sets the automatic chunk size); 0 if none."""
        return 0

    def energy(self, x: torch.Tensor, params: dict[str, float]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def _rebuild(cls: type, name: str, spec: dict, dtype) -> _Term:
    """Unpickle a term that pickles as its parameters (``__reduce__``): rebuild its buffers (on the CPU)
    with ``_setup``; no OpenMM force is needed."""
    term = cls.__new__(cls)
    _Term.__init__(term, name)
    term._setup(spec, dtype)
    return term
