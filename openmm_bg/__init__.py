"""openmm-bg: Boltzmann Generators for OpenMM.

The package is laid out by layers, each depending only on the ones listed before it
(``docs/architecture.md``): ``constants``/``geometry`` -> ``systems`` -> ``energy`` -> ``md`` ->
``transforms`` -> ``flows`` -> ``analysis`` -> ``model`` -> ``training`` -> ``mcmc`` -> ``apps``.

Examples
--------
>>> import openmm_bg
>>> system = openmm_bg.systems.load("alanine_dipeptide")
>>> system.n_atoms
22
"""

from . import _compat

_compat.install()

from . import constants, geometry, systems  # noqa: E402
from ._version import __version__  # noqa: E402
from .analysis.samples import Samples  # noqa: E402
from .md.simulation import simulate  # noqa: E402
from .model.generator import BoltzmannGenerator  # noqa: E402

__all__ = ["__version__", "constants", "geometry", "systems", "simulate", "BoltzmannGenerator", "Samples"]
