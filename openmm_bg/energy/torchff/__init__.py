"""The batched torch force field: OpenMM forces re-implemented as torch ops (``backend="torch"``).

- :mod:`.expressions`: OpenMM's custom-force expression language compiled to torch;
- :mod:`.forcefield`: `TorchForceField` (bonded, nonbonded, GB and custom forces) and
  `unsupported_forces`.

Examples
--------
>>> from openmm_bg.energy.torchff import Expression
>>> float(Expression("x^2 + 1", ["x"])({"x": 2.0}))  # doctest: +SKIP
5.0
"""

from .expressions import Expression, ExpressionError
from .forcefield import ONE_4PI_EPS0, TorchForceField, unsupported_forces

__all__ = ["TorchForceField", "unsupported_forces", "ONE_4PI_EPS0", "Expression", "ExpressionError"]
