"""Free energies from Boltzmann-Generator samples: states, thermodynamic states, profiles.

Three kinds of free-energy differences (``docs/design.md``, "Key formulas"):

- **Conformational states of one system** (`state_free_energy`):
  ``Delta A = A_B - A_A = -log(sum_{x in B} w / sum_{x in A} w)`` in kT of the samples'
  temperature, with a bootstrap error (over samples and, given several sample sets from
  independently trained generators, over generators), the effective sample size inside each state
  and the weight diagnostics. A state with fewer than ``min_ess`` effective samples is refused.
- **Thermodynamic states** (`thermodynamic_free_energy`): two `MolecularSystem` s sharing a
  topology (other temperature, solvent model or parameters). The generator density is normalised,
  so it is a tractable reference state with ``f = 0``: MBAR (pymbar) over the generator state(s),
  the two targets and any MD frames; BAR / EXP on the same data where asked. Results are reduced
  differences ``Delta f = f_B - f_A`` (``f = A/kT``, dimensionless) and, where a normalised
  reference fixes absolute ``f``, ``Delta A = kT_B f_B - kT_A f_A`` in kJ/mol. Next to it the paper's
  two-generator estimate ``<J_KL^B> - <J_KL^A>``, a difference of two upper bounds.
- **Profiles and surfaces** (`free_energy_profile`, `mbar_profile`, `free_energy_surface`):
  ``F(s) = -log p(s)`` along a reaction coordinate, from reweighted samples, or from MBAR over
  BG samples and MD trajectories at one or several thermodynamic states.
- **The MBAR problem itself** (`MBARProblem`): generator sample sets, MD frames and target states
  (optionally restricted to a conformational state), ``u_kn`` built once, solved once, then queried
  for free energies with covariance, weights, expectations, histograms and overlap. The MBAR-based
  functions above are built on it.

Energies are reduced (kT) throughout; kJ/mol and kcal/mol are derived with the temperature of
the state. Free energies are configurational (no kinetic part); positions are in nm.

pymbar is imported lazily and quietly (`pymbar_module`): it logs a "JAX NOT FOUND" banner on import.

Examples
--------
>>> from openmm_bg.analysis.free_energy import state_free_energy
>>> # dw: the double well; dw_gen: a small generator built on MD data of it (conftest.py)
>>> gen = dw_gen
>>> def deep(x):  # any boolean function of positions [n, n_atoms, 3] (nm) is a state
...     return x[:, 0, 0] < -1.8
>>> result = state_free_energy(gen.sample(2000, seed=1), "left", deep)
>>> result.state_b, result.unit_note, result.delta_a_kT > 0
('deep', 'kT at 300 K', True)
"""

from __future__ import annotations

from ._common import (  # noqa: F401 - the constants stay importable, outside __all__
    DEFAULT_MIN_ESS,
    KJ_PER_KCAL,
    MIN_OVERLAP,
    InsufficientSamplesError,
    pymbar_module,
)
from .mbar import MBARProblem, MDSubsampling
from .profiles import FreeEnergyProfile, FreeEnergySurface, free_energy_profile, free_energy_surface, mbar_profile
from .states import StateFreeEnergy, state_free_energy, state_free_energy_mbar
from .thermodynamic import (
    ThermodynamicFreeEnergy,
    TwoGeneratorEstimate,
    thermodynamic_free_energy,
    two_generator_estimate,
)

#: What users may rely on. KJ_PER_KCAL, DEFAULT_MIN_ESS and MIN_OVERLAP stay importable from here
#: (documented defaults used by the functions), but are not part of the interface.
__all__ = ["InsufficientSamplesError", "StateFreeEnergy", "ThermodynamicFreeEnergy", "TwoGeneratorEstimate",
           "FreeEnergyProfile", "FreeEnergySurface", "MBARProblem", "MDSubsampling", "state_free_energy",
           "state_free_energy_mbar", "thermodynamic_free_energy", "two_generator_estimate", "free_energy_profile",
           "mbar_profile", "free_energy_surface", "pymbar_module"]
