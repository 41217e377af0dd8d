"""Bad system input: temperatures that are 0, negative, NaN or infinite; PDBs with water but no water model."""

import argparse
import math

import pytest
from openmmtools.testsystems import get_data_filename

from openmm_bg.apps.cli import load_system, system_spec
from openmm_bg.data import structure_path
from openmm_bg.systems import from_files, from_openmm, from_pdb, load

BAD_TEMPERATURES = [0, 0.0, -300.0, math.nan, math.inf, "300"]
TEMPERATURE_MESSAGE = r"^temperature must be a positive, finite temperature in K, got"


@pytest.mark.parametrize("bad", BAD_TEMPERATURES)
def test_load_system_refuses_a_bad_temperature_instead_of_using_the_default(bad):
    with pytest.raises(ValueError, match=TEMPERATURE_MESSAGE):
        load_system({"name": "double_well", "temperature": bad, "options": {}})
    with pytest.raises(ValueError, match=TEMPERATURE_MESSAGE):  # the built-in's option, e.g. --option temperature=0
        load_system({"name": "double_well", "options": {"temperature": bad}})


def test_load_system_none_is_the_systems_temperature_and_a_value_is_used():
    assert load_system({"name": "double_well", "temperature": None}).temperature == 300.0
    assert load_system({"name": "double_well"}).temperature == 300.0
    assert load_system({"name": "double_well", "temperature": 250}).temperature == 250.0


def test_system_spec_keeps_zero_as_a_value_not_as_not_given():
    args = argparse.Namespace(system="double_well", option=None, temperature=0.0)
    with pytest.raises(ValueError, match="--temperature must be a positive, finite temperature in K, got 0.0"):
        system_spec(args)
    assert "temperature" not in system_spec(argparse.Namespace(system="double_well", option=None, temperature=None))


@pytest.mark.parametrize("bad", BAD_TEMPERATURES)
def test_file_loaders_refuse_a_bad_temperature(bad):
    pdb = structure_path("alanine_dipeptide.pdb")
    with pytest.raises(ValueError, match=TEMPERATURE_MESSAGE):
        from_pdb(pdb, temperature=bad)
    top = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.prmtop")
    crd = get_data_filename("data/alanine-dipeptide-gbsa/alanine-dipeptide.crd")
    with pytest.raises(ValueError, match=TEMPERATURE_MESSAGE):
        from_files(top, crd, temperature=bad)
    dw = load("double_well")
    with pytest.raises(ValueError, match=TEMPERATURE_MESSAGE):
        from_openmm(dw.system, dw.topology, dw.positions, temperature=bad)


# ---------------------------------------------------------------------- 5. water without a water model
@pytest.fixture(scope="module")
def pdbs(tmp_path_factory):
    """Alanine dipeptide with three waters (box kept), and one without the alanine's hydrogens."""
    import openmm.app as app
    import openmm.unit as unit

    folder = tmp_path_factory.mktemp("pdbs")
    pdb = app.PDBFile(str(structure_path("alanine_dipeptide.pdb")))
    modeller = app.Modeller(pdb.topology, pdb.positions)
    modeller.addSolvent(app.ForceField("amber14-all.xml", "amber14/tip3p.xml"), padding=0.4 * unit.nanometer)
    modeller.delete([r for r in modeller.topology.residues() if r.name == "HOH"][3:])
    with open(folder / "solvated.pdb", "w") as fh:
        app.PDBFile.writeFile(modeller.topology, modeller.positions, fh)
    bare = app.Modeller(pdb.topology, pdb.positions)
    bare.delete([a for a in bare.topology.atoms() if a.residue.name == "ALA" and a.element.symbol == "H"])
    with open(folder / "no_hydrogens.pdb", "w") as fh:
        app.PDBFile.writeFile(bare.topology, bare.positions, fh)
    return folder


def test_water_without_a_water_model_names_the_residue_and_the_fix(pdbs):
    with pytest.raises(ValueError) as info:
        from_pdb(pdbs / "solvated.pdb", forcefield=["amber14-all.xml"])
    message = str(info.value)
    assert message.startswith("could not parameterise solvated.pdb: no template for the water HOH (3 residues, "
                              "the first HOH 1 in chain B): the force field ['amber14-all.xml'] has no water model")
    assert "'amber14/tip3p.xml'" in message and "deleteWater" in message
    assert "hydrogens" not in message.lower()
    system = from_pdb(pdbs / "solvated.pdb", forcefield=["amber14-all.xml", "amber14/tip3p.xml"])
    assert system.n_atoms == 22 + 3 * 3 and system.periodic  # loads; later layers refuse explicit solvent


def test_missing_hydrogens_name_the_residue(pdbs):
    with pytest.raises(ValueError, match=r"^could not parameterise no_hydrogens.pdb: the force field "
                       r"\['amber14-all.xml'\] has no template for ALA \(residue ALA 2 in chain A\)\. "
                       r"Add missing hydrogens"):
        from_pdb(pdbs / "no_hydrogens.pdb")


def test_cli_water_error_is_one_line(pdbs, tmp_path, capsys):
    from openmm_bg.apps.cli import main

    assert main(["simulate", str(pdbs / "solvated.pdb"), "-n", "2", "-o", str(tmp_path / "md.h5")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("openmm-bg: error: could not parameterise solvated.pdb: no template for the water HOH")
    assert len(err.splitlines()) == 1 and "amber14/tip3p.xml" in err and not (tmp_path / "md.h5").exists()
