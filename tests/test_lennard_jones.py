"""Lennard-Jones tables folded into the NonbondedForce (stripped prmtops), kept with a warning for NBFIX."""

import copy
import shutil
import warnings

import numpy as np
import openmm
import openmm.app as app
import parmed
import pytest

import openmm_bg.systems as bgs
from openmm_bg.data import structure_path
from openmm_bg.systems.lennard_jones import TabulatedLennardJonesWarning, fold_lennard_jones_table

PRMTOP = str(structure_path("trpzip2/trpzip2.prmtop"))
INPCRD = str(structure_path("trpzip2/trpzip2.inpcrd"))


def _tabulated(constraints=None):
    """trpzip2 as OpenMM's reader builds it: LJ table because of the unused water/ion types."""
    return app.AmberPrmtopFile(PRMTOP).createSystem(implicitSolvent=app.OBC2, nonbondedMethod=app.NoCutoff,
                                                    constraints=constraints)


def _energies_forces(system, frames):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    out = []
    for x in frames:
        context.setPositions(x)
        state = context.getState(getEnergy=True, getForces=True)
        out.append((state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value))
    return out


def _frames(positions, n=5, seed=0):
    rng = np.random.default_rng(seed)
    return [positions + rng.normal(0.0, 0.004 * k, positions.shape) for k in range(n)]


def _force_names(system):
    return [type(f).__name__ for f in system.getForces()]


def test_diagnosis_unused_types_make_the_table():
    prm = parmed.amber.AmberFormat(PRMTOP)
    n_types = prm.parm_data["POINTERS"][1]
    used = set(prm.parm_data["ATOM_TYPE_INDEX"])
    assert n_types == 15 and len(used) == 12  # three stripped water/ion types remain
    assert "CustomNonbondedForce" in _force_names(_tabulated())
    result = fold_lennard_jones_table(_tabulated())
    assert result.folded and (result.n_types, result.n_used_types) == (15, 12) and not result.deviating_pairs


@pytest.mark.parametrize("constraints", [None, "hbonds"])
def test_trpzip2_has_standard_forces_and_todays_energies(constraints):
    system = bgs.load("trpzip2", constraints=constraints)
    names = _force_names(system.system)
    assert "CustomNonbondedForce" not in names and "NonbondedForce" in names and "GBSAOBCForce" in names
    before = _tabulated(app.HBonds if constraints else None)
    assert system.system.getNumConstraints() == before.getNumConstraints()
    for (e0, f0), (e1, f1) in zip(_energies_forces(before, _frames(system.positions)),
                                  _energies_forces(system.system, _frames(system.positions)), strict=True):
        assert abs(e1 - e0) <= 1e-6 * abs(e0)
        assert np.abs(f1 - f0).max() <= 1e-6 * np.abs(f0).max()


def test_from_files_folds_a_stripped_prmtop():
    loaded = bgs.from_files(PRMTOP, INPCRD, implicit_solvent="OBC2")
    assert "CustomNonbondedForce" not in _force_names(loaded.system)
    (e0, _), = _energies_forces(_tabulated(), [loaded.positions])
    (e1, _), = _energies_forces(loaded.system, [loaded.positions])
    assert abs(e1 - e0) <= 1e-6 * abs(e0)


def test_parmed_built_table_is_folded_too():
    structure = parmed.load_file(PRMTOP, xyz=INPCRD)
    system = structure.createSystem(nonbondedMethod=app.NoCutoff, implicitSolvent=app.OBC2)
    reference = copy.deepcopy(system)
    had_table = "CustomNonbondedForce" in _force_names(system)
    result = fold_lennard_jones_table(system)
    assert result.folded == had_table and "CustomNonbondedForce" not in _force_names(system)
    x = structure.coordinates / 10.0
    (e0, f0), = _energies_forces(reference, [x])
    (e1, f1), = _energies_forces(system, [x])
    assert abs(e1 - e0) <= 1e-6 * abs(e0) and np.abs(f1 - f0).max() <= 1e-6 * np.abs(f0).max()


def test_genuine_nbfix_keeps_the_table_with_a_warning(tmp_path):
    prm = parmed.amber.AmberFormat(PRMTOP)
    n_types = prm.parm_data["POINTERS"][1]
    i, j = 0, 1  # two LJ types atoms use: one off-diagonal pair 5 % off the combining rules
    k = prm.parm_data["NONBONDED_PARM_INDEX"][n_types * i + j] - 1
    prm.parm_data["LENNARD_JONES_ACOEF"][k] *= 1.05
    prm.write_parm(str(tmp_path / "nbfix.prmtop"))
    shutil.copy(INPCRD, tmp_path / "nbfix.inpcrd")
    with pytest.warns(TabulatedLennardJonesWarning, match=r"nbfix.prmtop: 1 pair .*NBFIX.*0-1 \(0.05\).*per MD step"):
        loaded = bgs.from_files(tmp_path / "nbfix.prmtop", tmp_path / "nbfix.inpcrd", implicit_solvent="OBC2")
    assert "CustomNonbondedForce" in _force_names(loaded.system)
    reference = app.AmberPrmtopFile(str(tmp_path / "nbfix.prmtop")).createSystem(
        implicitSolvent=app.OBC2, nonbondedMethod=app.NoCutoff)
    (e0, _), = _energies_forces(reference, [loaded.positions])
    (e1, _), = _energies_forces(loaded.system, [loaded.positions])
    assert e1 == e0
    (e_fold, _), = _energies_forces(_tabulated(), [loaded.positions])
    assert abs(e_fold - e0) > 1e-3  # the deviating pair does change the energy: folding it would be wrong


def test_systems_without_a_table_are_left_alone():
    system = bgs.load("alanine_dipeptide").system
    before = openmm.XmlSerializer.serialize(system)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = fold_lennard_jones_table(system)
    assert not result.folded and "no tabulated" in result.reason
    assert openmm.XmlSerializer.serialize(system) == before


def test_amber14_variant():
    amber = bgs.load("trpzip2")
    system = bgs.load("trpzip2", forcefield="amber14")
    assert system.n_atoms == amber.n_atoms == 218 and "GBn2" in system.description
    assert "CustomGBForce" in _force_names(system.system)
    (e, f), = _energies_forces(system.system, [system.positions])
    assert np.isfinite(e) and np.all(np.isfinite(f))
    with pytest.raises(ValueError, match="forcefield must be 'amber'.*'amber14'"):
        bgs.load("trpzip2", forcefield="charmm")
