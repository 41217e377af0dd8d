"""openmm-bg: Boltzmann Generators for OpenMM.

Layers (see the design notes): ``systems`` -> ``energy`` -> ``transforms`` -> ``flows`` ->
generator -> training -> analysis -> MCMC -> CLI.

Examples
--------
>>> import openmm_bg
>>> system = openmm_bg.systems.load("alanine_dipeptide")
>>> system.n_atoms
22
"""

from . import systems
from ._version import __version__
from .generator import BoltzmannGenerator
from .samples import Samples
from .simulation import simulate

__all__ = ["__version__", "systems", "simulate", "BoltzmannGenerator", "Samples"]
