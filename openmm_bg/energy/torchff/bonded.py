"""The standard bonded forces: harmonic bonds and angles, periodic and Ryckaert-Bellemans torsions.

Implements OpenMM's ``HarmonicBondForce`` (``k/2 (r - r0)^2``), ``HarmonicAngleForce``
(``k/2 (theta - theta0)^2``), ``PeriodicTorsionForce`` (``k (1 + cos(n phi - phase))``) and
``RBTorsionForce`` (``sum_n c_n cos(psi)^n`` with ``psi = phi - pi``), with the same conventions
as OpenMM's Reference platform. Units: nm, radians, kJ/mol. Each term maps positions
``[3, n_atoms, batch]`` (the internal layout, see `openmm_bg.energy.torchff.terms`) to energies
``[batch]``; `TorchForceField` takes the public ``[batch, n_atoms, 3]``.

Examples
--------
>>> import openmm, torch
>>> force = openmm.HarmonicBondForce()
>>> _ = force.addBond(0, 1, 0.1, 1000.0)  # r0 = 0.1 nm, k = 1000 kJ/mol/nm^2
>>> term = _HarmonicBond(force, torch.float64)
>>> x = torch.tensor([[0.0, 0.2], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)[:, :, None]
>>> term.energy(x, {})  # [batch], kJ/mol: 500 * 0.1^2
tensor([5.], dtype=torch.float64)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from .terms import _angle, _atom_index, _dihedral, _distance, _Term, _value

if TYPE_CHECKING:  # the evaluation needs no OpenMM (benchmarks/gpu_check.py runs it without)
    import openmm

__all__: list[str] = []


class _HarmonicBond(_Term):
    def __init__(self, force: openmm.HarmonicBondForce, dtype):
        super().__init__("HarmonicBondForce")
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        self._buf("i", [r[0] for r in rows], torch.long)
        self._buf("j", [r[1] for r in rows], torch.long)
        self._buf("r0", [_value(r[2]) for r in rows], dtype)
        self._buf("k", [0.5 * _value(r[3]) for r in rows], dtype)

    def energy(self, x, params):
        d = _distance(x, self.i, self.j) - self.r0
        return (self.k * d * d).sum(0)


class _HarmonicAngle(_Term):
    def __init__(self, force: openmm.HarmonicAngleForce, dtype):
        super().__init__("HarmonicAngleForce")
        rows = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        self._buf("idx", _atom_index(rows, 3), torch.long)
        self._buf("theta0", [_value(r[3]) for r in rows], dtype)
        self._buf("kf", [0.5 * _value(r[4]) for r in rows], dtype)

    def energy(self, x, params):
        if self.idx.numel() == 0:
            return x.new_zeros(x.shape[2])
        d = _angle(x, *self.idx.T) - self.theta0
        return (self.kf * d * d).sum(0)


class _PeriodicTorsion(_Term):
    def __init__(self, force: openmm.PeriodicTorsionForce, dtype):
        super().__init__("PeriodicTorsionForce")
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        self._buf("idx", _atom_index(rows, 4), torch.long)
        self._buf("n", [float(r[4]) for r in rows], dtype)
        self._buf("phase", [_value(r[5]) for r in rows], dtype)
        self._buf("kt", [_value(r[6]) for r in rows], dtype)

    def energy(self, x, params):
        if self.idx.numel() == 0:
            return x.new_zeros(x.shape[2])
        phi = _dihedral(x, *self.idx.T)
        return (self.kt * (1.0 + torch.cos(self.n * phi - self.phase))).sum(0)


class _RBTorsion(_Term):
    def __init__(self, force: openmm.RBTorsionForce, dtype):
        super().__init__("RBTorsionForce")
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        self._buf("idx", _atom_index(rows, 4), torch.long)
        self._buf("c", [[_value(c) for c in r[4:10]] for r in rows], dtype)

    def energy(self, x, params):
        if self.idx.numel() == 0:
            return x.new_zeros(x.shape[2])
        psi = _dihedral(x, *self.idx.T) - math.pi
        cos = torch.cos(psi)
        result = self.c[:, 5:6]
        for n in range(4, -1, -1):  # Horner
            result = result * cos + self.c[:, n:n + 1]
        return result.sum(0)
