"""Molecular dynamics with OpenMM as training data: `simulate` (Langevin MD, progress, seed) and
`simulate_starts` (several starts, e.g. from `torsion_starts`, merged with each frame's origin) and
`replica_exchange` (parallel tempering with openmmtools, stored and resumable).

Examples
--------
>>> from openmm_bg.md import default_timestep
>>> from openmm_bg.systems import load
>>> default_timestep(load("alanine_dipeptide"))
0.001
"""

from .multistart import read_origins, simulate_starts, torsion_starts
from .replica_exchange import ReplicaExchangeRun, replica_exchange
from .simulation import default_timestep, simulate

__all__ = ["simulate", "default_timestep", "simulate_starts", "torsion_starts", "read_origins", "replica_exchange",
           "ReplicaExchangeRun"]
