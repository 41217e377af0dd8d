"""Old import paths of modules that moved when the package was laid out by layers.

Code and files written before the move keep working: ``import openmm_bg.generator`` gives the
module now at ``openmm_bg.model.generator`` (the same module object, so classes, pickles and
openmmtools storage that name the old path resolve to the current classes). New code should use
the new paths (``docs/architecture.md``).

Examples
--------
>>> import openmm_bg.generator, openmm_bg.model.generator
>>> openmm_bg.generator is openmm_bg.model.generator
True
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__all__ = ["MOVED_MODULES", "install"]

#: old module path -> current module path
MOVED_MODULES: dict[str, str] = {
    "openmm_bg.generator": "openmm_bg.model.generator",
    "openmm_bg.samples": "openmm_bg.analysis.samples",
    "openmm_bg.reweighting": "openmm_bg.analysis.reweighting",
    "openmm_bg.simulation": "openmm_bg.md.simulation",
    "openmm_bg.free_energy": "openmm_bg.analysis.free_energy",
    "openmm_bg.free_energy.states": "openmm_bg.analysis.free_energy.states",
    "openmm_bg.free_energy.thermodynamic": "openmm_bg.analysis.free_energy.thermodynamic",
    "openmm_bg.free_energy.profiles": "openmm_bg.analysis.free_energy.profiles",
    "openmm_bg.plots": "openmm_bg.apps.plots",
    "openmm_bg.demo": "openmm_bg.apps.demo",
    "openmm_bg.cli": "openmm_bg.apps.cli",
    "openmm_bg.energy.regularization": "openmm_bg.training.regularization",
    "openmm_bg.energy.torch_forcefield": "openmm_bg.energy.torchff.forcefield",
    "openmm_bg.energy.expressions": "openmm_bg.energy.torchff.expressions",
    "openmm_bg.transforms.chirality": "openmm_bg.systems.chirality",
}


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self.target = target
        self._spec = None

    def create_module(self, spec):
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module) -> None:
        # the import system stamped the alias's spec on the real module: give it back its own
        module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(new))


_FINDER = _AliasFinder()


def install() -> None:
    """Register the old paths (idempotent; done on ``import openmm_bg``)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)
