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
