"""The generator's clustering of its training data, for the coverage table of its samples.

`BoltzmannGenerator.build` clusters the training frames once (`openmm_bg.analysis.coverage`) and
keeps the result in ``generator.coverage_reference`` (stored with the model under `COVERAGE_KEY`
of its metadata); every
sample set it draws carries it, so that `Samples.summary` reports per cluster the data share, the
raw and reweighted shares and the effective samples. Molecules without a peptide backbone are
clustered on the generator's heavy-atom Z-matrix torsions.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..analysis.coverage import coverage_reference
from ..systems import MolecularSystem

__all__ = ["training_coverage_reference", "COVERAGE_KEY"]

#: Key of the reference in the model file's metadata (``extra``; `BoltzmannGenerator.load` takes it out).
COVERAGE_KEY = "coverage_reference"


def _zmatrix_torsions(transform) -> list[tuple[int, int, int, int]]:
    """Proper Z-matrix torsions of heavy atoms (all proper torsions where none is heavy)."""
    zmatrix = getattr(transform, "zmatrix", None)
    if zmatrix is None:
        return []
    rows, proper = np.asarray(zmatrix.rows), np.asarray(zmatrix.proper, dtype=bool)
    heavy = ~np.asarray(zmatrix.is_hydrogen, dtype=bool)
    chosen = proper & heavy[rows].all(axis=1)
    if not chosen.any():
        chosen = proper
    return [tuple(int(a) for a in r) for r in rows[chosen]]


def training_coverage_reference(system: MolecularSystem, transform, x: torch.Tensor) -> dict | None:
    """The clustering of training frames ``x [n, n_atoms, 3]`` (nm) as a dict, or None where a molecule
    has nothing to cluster on (no backbone, no torsion)."""
    torsions = _zmatrix_torsions(transform) if system.rotation_invariant else None
    try:
        ref = coverage_reference(system, x.detach().cpu().numpy(), torsions=torsions or None)
    except ValueError as err:  # nothing to cluster on: the samples get no coverage table
        logging.getLogger(__name__).info("no coverage reference: %s", err)
        return None
    return ref.as_dict()
