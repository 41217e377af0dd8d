"""`MixedTransform`: Cartesian x <-> internal coordinates y with an exact, rigid-body-free log-det.

Layout and units of ``y`` (``[batch, n_dof]``, ``n_dof = 3 n_atoms - 6 - n_constrained_bonds``)::

    y = [ bonds | angles | torsions | core ]

- ``bonds``: lengths ``|x_i - x_j|`` in nm of the Z-matrix bonds that are not constrained, in
  Z-matrix row order (positive, domain ``(0, inf)``);
- ``angles``: ``theta / pi`` for every placed atom (domain ``(0, 1)``);
- ``torsions``: ``phi / pi`` for every placed atom, circular on ``[-1, 1)`` (period 2; a torsion of
  exactly pi maps to -1);
- ``core``: the ``3 n_core - 6`` body-frame core coordinates (`openmm_bg.transforms.core`), whitened
  with a full-rank linear map fitted on training frames (dimensionless, unbounded).

`MixedTransform.dims` (a `DimInfo`) holds the per-dimension kind, bounds, masks, atoms and names.

Direction and log-det: ``forward(y) -> (x, log_det)`` maps internal coordinates to Cartesian
positions and ``inverse(x) -> (y, log_det)`` the reverse; each returns log|det J| of the map it
applies, for the full bijection ``x <-> (y, R, t)`` with rotation ``R`` in the Haar measure of
`SO3_VOLUME` = 8 pi^2 (generators ``omega_k x x_i`` at the identity) and translation ``t`` (the
position of the first core atom) in the Lebesgue measure. So ``inverse``'s log-det is
``-forward``'s, and a density on ``y`` gives the Cartesian density
``log p_X(x) = log p_Y(y) + log_det_inverse(x) - log(8 pi^2) - log p_T(t)``.

With constraints, each constrained bond length is held at its constraint value and is not a
dimension of ``y``; the log-det still contains its ``2 log b`` term, i.e. it is that of the
"fixed-bond" internal-coordinate measure (the Cartesian measure with a delta on each constrained
length), without the Fixman factor of constrained dynamics.

Degenerate input (NaN, collinear frame atoms, zero bonds) gives NaN/inf in that row only; ``y``
outside its domain gives ``x = NaN`` and ``log_det = NaN`` in that row (see `MixedTransform.in_domain`).

Examples
--------
>>> import torch, openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> frames = ala.positions + 0.002 * torch.randn(40, 22, 3, dtype=torch.float64).numpy()
>>> t = MixedTransform.from_system(ala, frames)
>>> t.n_dof, t.dims.kinds[t.torsion_index(4, 6, 8, 14)]
(60, 'torsion')
>>> y, ld = t.inverse(torch.as_tensor(frames[:3]))
>>> x, ld2 = t.forward(y)
>>> bool(torch.allclose(ld + ld2, torch.zeros(3, dtype=torch.float64)))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..geometry import as_tensor
from .core import Float64Buffers, Whitening, frame_coordinates, frame_positions
from .dims import DimInfo
from .internal import internal_coordinates, place_atoms
from .rigid import apply_rigid
from .zmatrix import ZMatrix, build_zmatrix

__all__ = ["MixedTransform", "ConstraintError"]

_LOG_PI = math.log(math.pi)


class ConstraintError(ValueError):
    """A constraint the internal-coordinate transform cannot represent."""


def _positions(data, n_atoms: int) -> torch.Tensor:
    x = as_tensor(data, dtype=torch.float64).detach().cpu()
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[1:] != (n_atoms, 3):
        raise ValueError(f"expected positions [n_frames, {n_atoms}, 3] in nm, got {tuple(x.shape)}")
    return x


class MixedTransform(Float64Buffers):
    """Cartesian positions <-> (bonds, angles, torsions, whitened Cartesian core).

    Parameters
    ----------
    zmatrix : ZMatrix
        From `build_zmatrix`.
    core_data : array-like, torch.Tensor or mdtraj.Trajectory
        Training frames ``[n_frames, n_atoms, 3]`` (nm) used to fit the core whitening (any
        orientation; more than ``3 n_core - 6`` frames for a well-conditioned fit).
    constraints : sequence of (int, int, float), optional
        ``(i, j, length_nm)`` bond constraints, each of which must be a Z-matrix bond of a placed atom.
    ridge : float
        Regularisation of the whitening covariance (see `Whitening`).

    Attributes
    ----------
    n_atoms, n_dof : int
    n_core, n_free_bonds, n_rows : int
        Core atoms, unconstrained Z-matrix bonds, placed atoms (= number of angles = of torsions).
    dims : DimInfo
        Per-dimension metadata of ``y`` (``dims.circular_mask``, ``dims.bounded_mask``,
        ``dims.positive_mask``, ``dims.lower``/``upper``, ``dims.torsion_dims``, ``dims.names``...).
    proper_torsion_mask : torch.Tensor
        ``[n_dof]`` bool, torsions that are proper (rotatable) dihedrals; the others are stiff
        improper-like torsions (methyl H2/H3 relative to H1, carbonyl O, branches).
    zmatrix : ZMatrix
    whitening : Whitening
    fixed_bonds : dict of (int, int) -> float
        Constrained Z-matrix bonds and their lengths (nm).

    Raises
    ------
    ConstraintError
        For a constraint between two core atoms or one that is not a Z-matrix bond (AllBonds
        touching the core, ring closures, HAngles).

    Examples
    --------
    >>> import torch, openmm_bg.systems as bgs
    >>> from openmm_bg.transforms import build_zmatrix
    >>> ala = bgs.load("alanine_dipeptide", constraints="hbonds")
    >>> frames = ala.positions + 0.002 * torch.randn(40, 22, 3, dtype=torch.float64).numpy()
    >>> t = MixedTransform(build_zmatrix(ala.topology), frames, constraints=ala.constraints)
    >>> t.n_dof, len(t.fixed_bonds)                      # 3 * 22 - 6 - 12
    (48, 12)
    >>> y, log_det, rotation, translation = t.inverse(torch.as_tensor(frames[:2]), return_frame=True)
    >>> x, log_det_fwd = t.forward(y, rotation, translation)   # back in the original pose
    >>> x.shape
    torch.Size([2, 22, 3])
    """

    _float64_buffers = ("_fixed_values",)

    #: Rigid-body motion is not modelled: ``frame``/``place`` carry it (see also `CartesianTransform`).
    rotation_invariant = True

    def __init__(self, zmatrix: ZMatrix, core_data,
                 constraints: Sequence[tuple[int, int, float]] | None = None, ridge: float = 1e-4):
        super().__init__()
        zmatrix.validate()
        self.zmatrix = zmatrix
        self.n_atoms = zmatrix.n_atoms
        rows = zmatrix.rows
        n_rows = len(rows)
        core = zmatrix.core
        is_core = np.zeros(self.n_atoms, dtype=bool)
        is_core[core] = True
        row_of_bond = {frozenset((int(i), int(j))): r for r, (i, j, _, _) in enumerate(rows)}
        fixed, in_core, not_bond, ring = {}, [], [], []
        bond_set = set(zmatrix.bonds)
        for i, j, length in constraints or ():
            i, j = int(i), int(j)
            label = f"{zmatrix.atom_names[i]}-{zmatrix.atom_names[j]} ({i}, {j})"
            r = row_of_bond.get(frozenset((i, j)))
            if is_core[i] and is_core[j]:
                in_core.append(label)
            elif r is not None:
                fixed[r] = float(length)
            elif (min(i, j), max(i, j)) in bond_set:
                ring.append(label)
            else:
                not_bond.append(label)
        if in_core or not_bond or ring:
            parts = []
            reasons = [(in_core, "lie inside the Cartesian core (the core cannot hold fixed distances)"),
                       (not_bond, "are not a bond (angle constraints such as HAngles)"),
                       (ring, "are bonds that close a ring, not Z-matrix bonds")]
            for items, why in reasons:
                if items:
                    more = f" and {len(items) - 3} more" if len(items) > 3 else ""
                    parts.append(f"{len(items)} constraints {why}: {', '.join(items[:3])}{more}")
            raise ConstraintError(
                "unsupported constraints: " + "; ".join(parts) + ". Only constraints on Z-matrix bonds of "
                "placed atoms are supported (constraints=HBonds); rebuild the System with HBonds or None")
        self.fixed_bonds = {(int(rows[r, 0]), int(rows[r, 1])): v for r, v in sorted(fixed.items())}
        free_rows = [r for r in range(n_rows) if r not in fixed]
        fixed_rows = sorted(fixed)
        # bond values of all rows = cat([free bonds, fixed]) [:, bond_perm]
        perm = np.empty(n_rows, dtype=int)
        perm[free_rows] = np.arange(len(free_rows))
        perm[fixed_rows] = len(free_rows) + np.arange(len(fixed_rows))
        self.register_buffer("_bond_perm", torch.as_tensor(perm, dtype=torch.long), persistent=False)
        self.register_buffer("_free_rows", torch.as_tensor(free_rows, dtype=torch.long), persistent=False)
        self.register_buffer("_fixed_rows", torch.as_tensor(fixed_rows, dtype=torch.long), persistent=False)
        fixed_values = torch.tensor([fixed[r] for r in fixed_rows], dtype=torch.float64)
        self.register_buffer("_fixed_values", fixed_values, persistent=False)
        self.register_buffer("_rows", torch.as_tensor(rows, dtype=torch.long), persistent=False)
        self.register_buffer("_core", torch.as_tensor(core, dtype=torch.long), persistent=False)
        levels = zmatrix.levels()
        order = np.argsort(levels, kind="stable")
        bounds = np.searchsorted(levels[order], np.arange(1, levels.max() + 2)) if n_rows else np.array([0])
        self._level_slices = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]
        self.register_buffer("_level_rows", torch.as_tensor(order, dtype=torch.long), persistent=False)
        self.n_core = len(core)
        self.n_free_bonds = len(free_rows)
        self.n_rows = n_rows
        self.n_core_dof = 3 * self.n_core - 6
        self.n_dof = self.n_free_bonds + 2 * n_rows + self.n_core_dof
        assert self.n_dof == 3 * self.n_atoms - 6 - len(fixed_rows)
        # whitening of the core, fitted in the body frame
        data = _positions(core_data, self.n_atoms)
        c, _, _, ld = frame_coordinates(data[:, core])
        if not torch.isfinite(ld).all():
            raise ValueError("the first three core atoms are collinear (or NaN) in some core_data frames")
        self.whitening = Whitening(c, ridge=ridge)
        # metadata
        nm = zmatrix.atom_names
        kinds, atoms, names = [], [], []
        for r in free_rows:
            i, j = (int(a) for a in rows[r, :2])
            kinds.append("bond")
            atoms.append((i, j))
            names.append(f"bond {nm[i]}-{nm[j]}")
        for r in range(n_rows):
            i, j, k = (int(a) for a in rows[r, :3])
            kinds.append("angle")
            atoms.append((i, j, k))
            names.append(f"angle {nm[i]}-{nm[j]}-{nm[k]}")
        for r in range(n_rows):
            i, j, k, l = (int(a) for a in rows[r])
            kinds.append("torsion")
            atoms.append((i, j, k, l))
            suffix = "" if zmatrix.proper[r] else " (improper)"
            names.append(f"torsion {nm[i]}-{nm[j]}-{nm[k]}-{nm[l]}{suffix}")
        for d in range(self.n_core_dof):
            kinds.append("cartesian")
            atoms.append(())
            names.append(f"core PC {d}")
        self.dims = DimInfo.build(kinds, atoms, names)
        #: ``[n_dof]`` bool, True for torsions that are proper (rotatable) dihedrals.
        self.proper_torsion_mask = torch.zeros(self.n_dof, dtype=torch.bool)
        self.proper_torsion_mask[self.dims.torsion_dims[torch.as_tensor(zmatrix.proper)]] = True

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_system(cls, system, data, cartesian=None, ridge: float = 1e-4) -> MixedTransform:
        """Build the Z-matrix and transform of a `MolecularSystem`, with its constraints.

        Parameters
        ----------
        system : openmm_bg.systems.MolecularSystem
            A single, rotation-invariant, non-periodic molecule.
        data : array-like or mdtraj.Trajectory
            Training frames ``[n_frames, n_atoms, 3]`` (nm) for the core whitening.
        cartesian : optional
            Core selection, see `build_zmatrix`.
        ridge : float
            See `Whitening`.
        """
        system.require_nonperiodic("MixedTransform")
        if not system.rotation_invariant:
            raise ValueError(f"system {system.name!r} is not rotation invariant (external potential); "
                             "use CartesianTransform.from_system instead")
        zm = build_zmatrix(system.topology, cartesian=cartesian, positions=system.positions)
        return cls(zm, data, constraints=system.constraints, ridge=ridge)

    # ---------------------------------------------------------------- metadata
    @property
    def circular_mask(self) -> torch.Tensor:
        """``[n_dof]`` bool, True for torsions (circular on ``[-1, 1)``)."""
        return self.dims.circular_mask

    def torsion_index(self, i: int, j: int, k: int, l: int) -> int:
        """Column of ``y`` holding torsion ``i-j-k-l`` (or ``l-k-j-i``); KeyError if not a dimension."""
        return self.dims.index("torsion", (i, j, k, l))

    def in_domain(self, y: torch.Tensor) -> torch.Tensor:
        """``[batch]`` bool: finite, bonds > 0, angles in (0, 1), torsions in [-1, 1)."""
        return self.dims.in_domain(y)

    # ---------------------------------------------------------------- maps
    def _bond_values(self, free: torch.Tensor) -> torch.Tensor:
        if len(self._fixed_rows) == 0:
            return free
        fixed = self._fixed_values.to(free).expand(free.shape[0], -1)
        return torch.cat([free, fixed], dim=1)[:, self._bond_perm.to(free.device)]

    def forward(self, y: torch.Tensor, rotation: torch.Tensor | None = None,
                translation: torch.Tensor | None = None):
        """Internal coordinates -> Cartesian positions.

        Parameters
        ----------
        y : torch.Tensor
            ``[batch, n_dof]`` (float32 or float64, any device).
        rotation : torch.Tensor, optional
            ``[batch, 3, 3]``; default identity (the body frame).
        translation : torch.Tensor, optional
            ``[batch, 3]`` nm, position of the first core atom; default the origin.

        Returns
        -------
        x : torch.Tensor
            ``[batch, n_atoms, 3]`` nm; NaN rows where ``y`` is outside its domain.
        log_det : torch.Tensor
            ``[batch]`` log|det d(x)/d(y, R, t)|; NaN where ``y`` is outside its domain.
        """
        if y.dim() != 2 or y.shape[1] != self.n_dof:
            raise ValueError(f"expected y of shape [batch, {self.n_dof}], got {tuple(y.shape)}")
        dev = y.device
        nb, nr = self.n_free_bonds, self.n_rows
        bonds = self._bond_values(y[:, :nb])
        angles = y[:, nb:nb + nr] * math.pi
        tors = y[:, nb + nr:nb + 2 * nr] * math.pi
        c, ld_white = self.whitening.forward(y[:, nb + 2 * nr:])
        q, ld_frame = frame_positions(c, self.n_core)
        x = y.new_zeros(y.shape[0], self.n_atoms, 3).index_copy(1, self._core.to(dev), q)
        rows = self._rows.to(dev)
        level_rows = self._level_rows.to(dev)
        for a, b in self._level_slices:
            r = level_rows[a:b]
            i = rows[r, 0]
            xj, xk, xl = x.index_select(1, rows[r, 1:].T.reshape(-1)).unflatten(1, (3, b - a)).unbind(1)
            pos = place_atoms(xj, xk, xl, bonds.index_select(1, r), angles.index_select(1, r),
                              tors.index_select(1, r))
            x = x.index_copy(1, i, pos)
        log_det = (ld_white + ld_frame + 2.0 * torch.log(bonds).sum(-1) + torch.log(torch.sin(angles)).sum(-1)
                   + 2 * nr * _LOG_PI)
        bad = ~self.in_domain(y) | ~(c[:, 0] > 0) | ~(c[:, 2] > 0)  # no host sync: always mask
        nan = torch.full_like(log_det, float("nan"))
        log_det = torch.where(bad, nan, log_det)
        x = torch.where(bad[:, None, None], nan[:, None, None], x)
        return apply_rigid(x, rotation, translation), log_det

    def inverse(self, x: torch.Tensor, return_frame: bool = False):
        """Cartesian positions -> internal coordinates.

        Parameters
        ----------
        x : torch.Tensor
            ``[batch, n_atoms, 3]`` nm, any orientation (float32 or float64, any device).
        return_frame : bool
            Also return the rigid-body part ``(rotation [batch, 3, 3], translation [batch, 3])`` with
            ``forward(y, rotation, translation)[0] == x``.

        Returns
        -------
        y : torch.Tensor
            ``[batch, n_dof]``.
        log_det : torch.Tensor
            ``[batch]`` log|det d(y, R, t)/dx| (= minus the forward log-det at ``y``). Constrained
            bonds enter with their constraint length. NaN/inf for degenerate rows.
        rotation, translation : torch.Tensor
            Only if ``return_frame``.
        """
        if x.dim() != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"expected x of shape [batch, {self.n_atoms}, 3] (nm), got {tuple(x.shape)}")
        dev = x.device
        i, j, k, l = self._rows.to(dev).unbind(1)
        bonds, angles, tors = internal_coordinates(x, i, j, k, l)
        tors = tors / math.pi
        tors = torch.where(tors >= 1.0, tors - 2.0, tors)  # phi = pi -> -1: [-1, 1)
        c, rot, trans, ld_frame = frame_coordinates(x.index_select(1, self._core.to(dev)))
        w, ld_white = self.whitening.inverse(c)
        y = torch.cat([bonds[:, self._free_rows.to(dev)], angles / math.pi, tors, w], dim=1)
        b_used = self._bond_values(bonds[:, self._free_rows.to(dev)])
        log_det = (ld_white + ld_frame - 2.0 * torch.log(b_used).sum(-1)
                   - torch.log(torch.sin(angles)).sum(-1) - 2 * self.n_rows * _LOG_PI)
        if return_frame:
            return y, log_det, rot, trans
        return y, log_det

    def frame(self, x: torch.Tensor):
        """What ``y`` does not describe, the rigid-body part of ``x``: ``(rotation [batch, 3, 3],
        translation [batch, 3])``, for `place`."""
        _, rot, trans, _ = frame_coordinates(x[:, self._core.to(x.device)])
        return rot, trans

    def place(self, x: torch.Tensor, frame) -> torch.Tensor:
        """Move configurations ``[batch, n_atoms, 3]`` of the body frame (``forward``'s output) into
        ``frame`` (from `frame`, of one configuration or one per row)."""
        rotation, translation = frame
        return apply_rigid(x, rotation.to(x), translation.to(x))

    def extra_repr(self) -> str:
        return (f"n_atoms={self.n_atoms}, n_dof={self.n_dof}, n_core={self.n_core}, "
                f"constrained={len(self.fixed_bonds)}")
