"""One OpenMM context evaluating a batch of configurations, one at a time.

`ContextEvaluator` is the unit of work of the energy layer: the in-process backend of
`OpenMMEnergy` (``n_workers=1``) and each worker process of the pool own one. It works on
plain numpy arrays in OpenMM's units (positions nm, energies kJ/mol, forces kJ/mol/nm) and
applies the failure convention (``docs/design.md``, "Out of domain and failed evaluations"): a
configuration with non-finite input, an OpenMM exception, or a non-finite energy or force gets
energy ``+inf`` and force ``0``, and only that configuration.

Examples
--------
>>> import numpy as np
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> ev = ContextEvaluator(dw.system, "Reference")
>>> x = np.array([[[1.0, 0.5, 0.0]], [[np.nan, 0.0, 0.0]]])
>>> energy, forces = ev.evaluate(x)
>>> energy / dw.kT
array([-3.875,    inf])
>>> forces[1].tolist()
[[0.0, 0.0, 0.0]]
"""

from __future__ import annotations

import math

import numpy as np
import openmm

__all__ = ["ContextEvaluator", "make_context"]


def make_context(system: openmm.System, platform: str, properties: dict[str, str] | None = None
                 ) -> openmm.Context:
    """An ``openmm.Context`` for ``system`` on the named platform (a dummy Verlet integrator).

    Parameters
    ----------
    system : openmm.System
        The potential.
    platform : str
        OpenMM platform name, e.g. ``"Reference"``, ``"CPU"``, ``"CUDA"``.
    properties : dict of str -> str, optional
        Platform properties, e.g. ``{"Threads": "1"}``.
    """
    integrator = openmm.VerletIntegrator(0.001)
    plat = openmm.Platform.getPlatformByName(platform)
    return openmm.Context(system, integrator, plat, dict(properties or {}))


class ContextEvaluator:
    """Energies and forces of a batch of configurations with one OpenMM context.

    Parameters
    ----------
    system : openmm.System
        The potential; a private copy is not made, the context holds its own.
    platform : str
        OpenMM platform name.
    properties : dict of str -> str, optional
        Platform properties.

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide")
    >>> ev = ContextEvaluator(ala.system, "Reference")
    >>> e, f = ev.evaluate(ala.positions[None])
    >>> e.shape, f.shape
    ((1,), (1, 22, 3))
    """

    def __init__(self, system: openmm.System, platform: str, properties: dict[str, str] | None = None):
        self.platform = platform
        self.properties = dict(properties or {})
        self.n_atoms = system.getNumParticles()
        self.context = make_context(system, platform, self.properties)
        self._has_virtual_sites = any(system.isVirtualSite(i) for i in range(self.n_atoms))

    def evaluate(self, positions: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Evaluate every configuration of a batch.

        Parameters
        ----------
        positions : numpy.ndarray
            ``[batch, n_atoms, 3]`` in nm (converted to float64).
        forces : bool
            Also compute forces.

        Returns
        -------
        energy : numpy.ndarray
            ``[batch]`` float64, kJ/mol; ``+inf`` for failed configurations.
        forces : numpy.ndarray or None
            ``[batch, n_atoms, 3]`` float64, kJ/mol/nm; zero rows for failed configurations.
        """
        x = np.ascontiguousarray(positions, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape [batch, {self.n_atoms}, 3], got {x.shape}")
        batch = x.shape[0]
        energy = np.full(batch, np.inf)
        force = np.zeros((batch, self.n_atoms, 3)) if forces else None
        finite = np.isfinite(x).all(axis=(1, 2))
        context = self.context
        vsites = self._has_virtual_sites
        for b in range(batch):
            if not finite[b]:
                continue
            try:
                context.setPositions(x[b])
                if vsites:
                    context.computeVirtualSites()
                state = context.getState(getEnergy=True, getForces=forces)
                e = state.getPotentialEnergy()._value  # kJ/mol
                if forces:
                    force[b] = state.getForces(asNumpy=True)._value  # kJ/mol/nm
            except Exception:  # an OpenMM error for this configuration only
                if forces:
                    force[b] = 0.0
                continue
            if math.isfinite(e):
                energy[b] = e
        if forces:
            bad = ~(np.isfinite(energy) & np.isfinite(force).all(axis=(1, 2)))
            energy[bad] = np.inf
            force[bad] = 0.0
        return energy, force
