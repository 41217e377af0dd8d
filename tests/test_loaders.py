"""User-system loaders: Amber, GROMACS, CHARMM (parmed), PDB + force field, OpenMM objects."""

import numpy as np
import openmm
import openmm.app as app
import parmed
import pytest
from openmmtools import testsystems
from openmmtools.testsystems import get_data_filename

import openmm_bg.systems as bgs

PRMTOP = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.prmtop")
CRD = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.crd")


def _energy_kj(system, positions):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(
        openmm.unit.kilojoule_per_mole)


@pytest.mark.parametrize("solvent, implicit, reference", [
    ("vacuum", None, testsystems.AlanineDipeptideVacuum),
    ("implicit", "OBC1", testsystems.AlanineDipeptideImplicit),
])
def test_amber_round_trip(solvent, implicit, reference):
    loaded = bgs.from_files(PRMTOP, CRD, implicit_solvent=implicit)
    ref = reference(constraints=None)
    assert loaded.n_atoms == 22 and not loaded.periodic
    np.testing.assert_allclose(loaded.positions, ref.positions.value_in_unit(openmm.unit.nanometer),
                               atol=1e-6)
    np.testing.assert_allclose(_energy_kj(loaded.system, loaded.positions),
                               _energy_kj(ref.system, ref.positions), rtol=1e-6)


def test_old_format_prmtop_through_parmed():
    top = get_data_filename("data/trpzip2-explicit/trpzip2.prmtop")
    crd = get_data_filename("data/trpzip2-explicit/trpzip2.crd")
    with pytest.raises(Exception):  # noqa: B017 - OpenMM's own reader rejects this file
        app.AmberPrmtopFile(top)
    loaded = bgs.from_files(top, crd)
    assert loaded.periodic  # explicit water box: loads, flagged
    with pytest.raises(ValueError, match="periodic.*implicit solvent"):
        loaded.require_nonperiodic()


def test_one_periodic_check_one_exception_across_layers():
    import openmm_bg
    from openmm_bg.energy import OpenMMEnergy, PeriodicSystemError
    from openmm_bg.transforms import MixedTransform

    assert PeriodicSystemError is bgs.PeriodicSystemError and issubclass(PeriodicSystemError, ValueError)
    top = get_data_filename("data/trpzip2-explicit/trpzip2.prmtop")
    crd = get_data_filename("data/trpzip2-explicit/trpzip2.crd")
    box = bgs.from_files(top, crd)
    messages = []
    for refuse in (lambda: bgs.require_nonperiodic(box, "this check"), box.require_nonperiodic,
                   lambda: openmm_bg.simulate(box, n_frames=1, stride=1, progress=False),
                   lambda: MixedTransform.from_system(box, box.positions[None]),
                   lambda: OpenMMEnergy(box.system, temperature=300.0, platform="Reference")):
        with pytest.raises(PeriodicSystemError, match="is periodic .explicit solvent or a periodic box.") as err:
            refuse()
        messages.append(str(err.value))
    assert "this check supports single molecules in vacuum or implicit solvent only" in messages[0]
    assert all("implicitSolvent=OBC2" in m for m in messages)
    bgs.require_nonperiodic(bgs.load("alanine_dipeptide"))  # a molecule passes


@pytest.fixture(scope="module")
def amber_structure():
    return parmed.load_file(PRMTOP, xyz=CRD)


def test_gromacs_round_trip(amber_structure, tmp_path):
    top, gro = tmp_path / "ala.top", tmp_path / "ala.gro"
    amber_structure.save(str(top), format="gromacs")
    amber_structure.save(str(gro), format="gro")
    loaded = bgs.from_files(top, gro)
    reference = parmed.load_file(str(top), xyz=str(gro))
    ref_system = reference.createSystem(nonbondedMethod=app.NoCutoff)
    assert loaded.n_atoms == 22
    np.testing.assert_allclose(loaded.positions, np.asarray(reference.coordinates) / 10, atol=1e-6)
    np.testing.assert_allclose(_energy_kj(loaded.system, loaded.positions),
                               _energy_kj(ref_system, loaded.positions), rtol=1e-8)


def test_charmm_round_trip(amber_structure, tmp_path):
    psf, crd = tmp_path / "ala.psf", tmp_path / "ala.crd"
    par, rtf = tmp_path / "ala.prm", tmp_path / "ala.rtf"
    parameters = parmed.charmm.CharmmParameterSet.from_structure(amber_structure)
    parameters.write(par=str(par), top=str(rtf))
    amber_structure.save(str(psf), format="psf")
    amber_structure.save(str(crd), format="charmmcrd")
    loaded = bgs.from_files(psf, crd, parameters=[rtf, par])
    reference = parmed.load_file(str(psf))
    reference.load_parameters(parmed.charmm.CharmmParameterSet(str(rtf), str(par)))
    ref_system = reference.createSystem(nonbondedMethod=app.NoCutoff)
    assert loaded.n_atoms == 22
    np.testing.assert_allclose(_energy_kj(loaded.system, loaded.positions),
                               _energy_kj(ref_system, loaded.positions), rtol=1e-8)
    with pytest.raises(ValueError, match="CHARMM input needs its parameter files"):
        bgs.from_files(psf, crd)


def test_pdb_with_forcefield_matches_builtin_amber14():
    from openmm_bg.data import structure_path

    pdb = structure_path("alanine_dipeptide.pdb")
    loaded = bgs.from_pdb(pdb, forcefield=["amber14-all.xml", "implicit/obc2.xml"])
    builtin = bgs.load("alanine_dipeptide", forcefield="amber14", solvent="implicit")
    from openmm_bg.energy import energy_for

    u = [energy_for(s, platform="Reference").reference_energy for s in (loaded, builtin)]
    assert u[0] == pytest.approx(u[1], rel=1e-12)


def test_from_openmm_wraps_and_detects_external_forces():
    ala = testsystems.AlanineDipeptideVacuum(constraints=None)
    wrapped = bgs.from_openmm(ala.system, ala.topology, ala.positions, temperature=310)
    assert wrapped.rotation_invariant and wrapped.temperature == 310.0
    dw = bgs.load("double_well")
    assert not bgs.from_openmm(dw.system, dw.topology, dw.positions).rotation_invariant


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="topology file not found"):
        bgs.from_files(tmp_path / "missing.prmtop", CRD)
    with pytest.raises(FileNotFoundError, match="coordinate file not found"):
        bgs.from_files(PRMTOP, tmp_path / "missing.crd")
    with pytest.raises(ValueError, match="unknown topology format '.xyz'"):
        (tmp_path / "a.xyz").write_text("1\n")
        bgs.from_files(tmp_path / "a.xyz", CRD)
    with pytest.raises(ValueError, match="implicit_solvent must be one of"):
        bgs.from_files(PRMTOP, CRD, implicit_solvent="water")
    # coordinates of another molecule: atom counts disagree
    other = get_data_filename("data/benzene-toluene-implicit/receptor.inpcrd")
    with pytest.raises(ValueError, match="atoms"):
        bgs.from_files(PRMTOP, other)
    # an unparameterised residue
    pdb = tmp_path / "unknown.pdb"
    pdb.write_text("HETATM    1  C1  XYZ A   1       0.000   0.000   0.000  1.00  0.00           C\nEND\n")
    with pytest.raises(ValueError, match="could not parameterise unknown.pdb.*missing residue templates"):
        bgs.from_pdb(pdb, forcefield=["amber14-all.xml"])
    with pytest.raises(FileNotFoundError, match="PDB file not found"):
        bgs.from_pdb(tmp_path / "nothing.pdb")
    ala = testsystems.AlanineDipeptideVacuum(constraints=None)
    with pytest.raises(ValueError, match="atom counts disagree"):
        bgs.from_openmm(ala.system, ala.topology, ala.positions[:10])
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = np.array(ala.positions.value_in_unit(openmm.unit.nanometer))
        bad[3, 1] = np.nan
        bgs.from_openmm(ala.system, ala.topology, bad)
