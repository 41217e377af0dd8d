"""Molecular dynamics with OpenMM as training data: `simulate` (Langevin MD, progress, seed).

Examples
--------
>>> from openmm_bg.md import default_timestep
>>> from openmm_bg.systems import load
>>> default_timestep(load("alanine_dipeptide"))
0.001
"""

from .simulation import default_timestep, simulate

__all__ = ["simulate", "default_timestep"]
