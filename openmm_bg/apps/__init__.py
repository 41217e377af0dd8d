"""The interface layer: the ``openmm-bg`` command line (:mod:`.cli`), the main job (:mod:`.demo`)
and plots (:mod:`.plots`). Nothing below this layer imports from it.

Examples
--------
>>> from openmm_bg.apps import plot_profile, run_demo
>>> plot_profile.__module__, run_demo.__module__
('openmm_bg.apps.plots', 'openmm_bg.apps.demo')
"""

from .demo import run_demo
from .plots import plot_free_energies, plot_history, plot_profile, plot_ramachandran, plot_surface

__all__ = ["run_demo", "plot_free_energies", "plot_profile", "plot_surface", "plot_ramachandran", "plot_history"]
