"""Physical constants and unit conversions used across openmm-bg (the bottom layer).

Energies in openmm-bg are reduced, ``u = U / kT`` (dimensionless, "kT"); kJ/mol and kcal/mol are
derived from them with the temperature of the state through `kT_kJ_per_mol` and `KJ_PER_KCAL`.
The values are OpenMM's, so that reduced energies computed here and by OpenMM agree to rounding.

Examples
--------
>>> from openmm_bg.constants import KJ_PER_KCAL, kT_kJ_per_mol
>>> round(kT_kJ_per_mol(300.0), 6)
2.494339
>>> round(kT_kJ_per_mol(300.0) / KJ_PER_KCAL, 6)  # kcal/mol
0.596161
"""

from __future__ import annotations

__all__ = ["MOLAR_GAS_CONSTANT", "KJ_PER_KCAL", "ONE_4PI_EPS0", "kT_kJ_per_mol", "kT_kcal_per_mol"]

#: Molar gas constant R in kJ/(mol K), OpenMM's value (``openmm.unit.MOLAR_GAS_CONSTANT_R``; the tests check
#: that they are equal). A literal, so that this module and the torch force field import without OpenMM.
MOLAR_GAS_CONSTANT: float = 8.31446261815324e-3

#: kJ per kcal (thermochemical calorie).
KJ_PER_KCAL: float = 4.184

#: Coulomb constant 1/(4 pi eps0) in kJ mol^-1 nm e^-2, as OpenMM's Reference platform.
ONE_4PI_EPS0: float = 138.935456


def kT_kJ_per_mol(temperature: float) -> float:
    """Thermal energy kT in kJ/mol at ``temperature`` (K).

    Parameters
    ----------
    temperature : float
        Temperature in K.

    Returns
    -------
    float
        ``R T`` in kJ/mol.
    """
    return MOLAR_GAS_CONSTANT * float(temperature)


def kT_kcal_per_mol(temperature: float) -> float:
    """Thermal energy kT in kcal/mol at ``temperature`` (K)."""
    return kT_kJ_per_mol(temperature) / KJ_PER_KCAL
