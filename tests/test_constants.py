"""The constants module: one home for R, kT and kJ/kcal, re-exported under the old names."""

import openmm.unit as unit
import pytest

from openmm_bg import constants


def test_kT_matches_openmm_units():
    expected = (unit.MOLAR_GAS_CONSTANT_R * 310.0 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    assert constants.kT_kJ_per_mol(310.0) == pytest.approx(expected, rel=1e-12)
    assert constants.kT_kcal_per_mol(310.0) == pytest.approx(expected / 4.184, rel=1e-12)


def test_old_homes_re_export_the_same_objects():
    from openmm_bg.analysis.free_energy import KJ_PER_KCAL
    from openmm_bg.energy.torchff import ONE_4PI_EPS0
    from openmm_bg.systems import kT_kJ_per_mol
    from openmm_bg.systems.molecular_system import MOLAR_GAS_CONSTANT
    from openmm_bg.systems.molecular_system import kT_kJ_per_mol as old

    assert kT_kJ_per_mol is constants.kT_kJ_per_mol and old is constants.kT_kJ_per_mol
    assert MOLAR_GAS_CONSTANT == constants.MOLAR_GAS_CONSTANT
    assert KJ_PER_KCAL == constants.KJ_PER_KCAL == 4.184
    assert ONE_4PI_EPS0 == constants.ONE_4PI_EPS0


def test_gas_constant_literal_is_openmms_value():
    # a literal (the torch force field imports without OpenMM); it must stay OpenMM's value exactly
    assert constants.MOLAR_GAS_CONSTANT == (unit.MOLAR_GAS_CONSTANT_R).value_in_unit(
        unit.kilojoule_per_mole / unit.kelvin)
