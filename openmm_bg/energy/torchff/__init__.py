"""The batched torch force field: OpenMM forces re-implemented as torch ops (``backend="torch"``).

Positions are ``[batch, n_atoms, 3]`` in nm, energies ``[batch]`` in kJ/mol, forces
``[batch, n_atoms, 3]`` in kJ/mol/nm (by autograd). One module per concept:

- :mod:`.forcefield`: `TorchForceField`, `unsupported_forces` and the force -> term registry;
- :mod:`.terms`: the term base class, geometry on the internal ``[3, n_atoms, batch]`` layout,
  pair lists, `ONE_4PI_EPS0`;
- :mod:`.bonded`: ``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``,
  ``RBTorsionForce``;
- :mod:`.nonbonded`: ``NonbondedForce`` (Coulomb + Lennard-Jones, no cutoff);
- :mod:`.gb`: ``GBSAOBCForce`` (OBC2 + ACE) and ``CustomGBForce``;
- :mod:`.custom`: the other custom forces, their parameters and tabulated functions;
- :mod:`.expressions`: OpenMM's custom-force expression language compiled to torch.

Examples
--------
>>> import openmm, torch
>>> from openmm_bg.energy.torchff import Expression, TorchForceField
>>> float(Expression("x^2 + 1").evaluate({"x": 2.0}))
5.0
>>> system = openmm.System()
>>> for _ in range(2):
...     _ = system.addParticle(1.0)
>>> bond = openmm.HarmonicBondForce()
>>> _ = bond.addBond(0, 1, 0.1, 1000.0)  # r0 = 0.1 nm, k = 1000 kJ/mol/nm^2
>>> _ = system.addForce(bond)
>>> x = torch.tensor([[[0.0, 0.0, 0.0], [0.2, 0.0, 0.0]]], dtype=torch.float64)  # [1, 2, 3], nm
>>> TorchForceField(system)(x)  # [batch], kJ/mol: 500 * 0.1^2
tensor([5.], dtype=torch.float64)
"""

from .expressions import Expression, ExpressionError
from .forcefield import TorchForceField, unsupported_forces
from .terms import ONE_4PI_EPS0

__all__ = ["TorchForceField", "unsupported_forces", "ONE_4PI_EPS0", "Expression", "ExpressionError"]
