"""Molecular dynamics with OpenMM as training data: `simulate` (Langevin MD, progress, seed) and
`replica_exchange` (parallel tempering with openmmtools, stored and resumable).

Examples
--------
>>> from openmm_bg.md import default_timestep
>>> from openmm_bg.systems import load
>>> default_timestep(load("alanine_dipeptide"))
0.001
"""

from .replica_exchange import ReplicaExchangeRun, replica_exchange
from .simulation import default_timestep, simulate

__all__ = ["simulate", "default_timestep", "replica_exchange", "ReplicaExchangeRun"]
