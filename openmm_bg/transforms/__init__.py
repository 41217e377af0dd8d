"""Coordinate transforms between Cartesian positions and flow coordinates.

- `build_zmatrix` / `ZMatrix`: automatic Z-matrix of one connected molecule.
- `MixedTransform`: x ``[batch, n_atoms, 3]`` <-> y ``[batch, n_dof]`` =
  (bonds nm, angles / pi, torsions / pi, whitened Cartesian core), rigid-body motion removed exactly,
  exact log|det J| of ``x <-> (y, R, t)``.
- `CartesianTransform`: whitened free Cartesian coordinates for toy and particle systems.
- `stereocentres` / `Stereocentres`: chirality of the reference and inverted samples.
- `random_rotation`, `apply_rigid`, `randomize_orientation`: rigid-body helpers for MCMC moves.
- `DimInfo`: per-dimension metadata (circular / bounded / positive masks, bounds, atoms, names).

Building blocks stay importable from their modules: :mod:`.internal` (bond lengths, angles,
torsions and NeRF placement), :mod:`.core` (`Whitening`, the rigid frame of the Cartesian core,
``SO3_VOLUME``), :mod:`.dims` (``DOMAINS``). Angles and dihedrals of positions are
`openmm_bg.geometry`'s.

Conventions: ``forward(y) -> (x, log_det)`` maps flow coordinates to positions (nm) and
``inverse(x) -> (y, log_det)`` the reverse; each log_det is log|det J| of the map applied.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> from openmm_bg.transforms import build_zmatrix, stereocentres
>>> ala = bgs.load("alanine_dipeptide")
>>> build_zmatrix(ala.topology).n_placed, stereocentres(ala.topology, ala.positions).atoms.tolist()
(19, [8])
"""

from ..systems.chirality import Stereocentres, stereocentres
from .cartesian import CartesianTransform
from .dims import DimInfo
from .mixed import ConstraintError, MixedTransform
from .rigid import apply_rigid, random_rotation, randomize_orientation
from .zmatrix import DisconnectedTopologyError, ZMatrix, build_zmatrix

__all__ = [
    "build_zmatrix", "ZMatrix", "DisconnectedTopologyError",
    "MixedTransform", "ConstraintError", "CartesianTransform",
    "stereocentres", "Stereocentres",
    "random_rotation", "apply_rigid", "randomize_orientation",
    "DimInfo",
]
