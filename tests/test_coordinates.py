"""Coordinate and state expressions: values against mdtraj, gradients, states, state files, bad input refused."""

import math

import mdtraj
import numpy as np
import pytest
import torch

import openmm_bg.systems as bgs
from openmm_bg.data import structure_path
from openmm_bg.systems import BACKBONE_BASINS, CoordinateError, backbone_definitions, coordinate, define, state
from openmm_bg.systems.state_files import parse_coordinate_option, parse_state_option, read_state_file


@pytest.fixture(scope="module")
def ala():
    return bgs.load("alanine_dipeptide")


@pytest.fixture(scope="module")
def ala_md():
    """Every 20th frame of the shipped alanine dipeptide MD (C7eq and C7ax frames)."""
    return mdtraj.load(str(structure_path("models/alanine_dipeptide_vacuum_md.h5")))[::20]


@pytest.fixture(scope="module")
def trpzip():
    """trpzip2 and five noisy copies of its structure (side chains of every kind for chi1-chi4)."""
    system = bgs.load("trpzip2")
    xyz = system.positions[None] + np.random.default_rng(0).normal(0, 0.02, (5, system.n_atoms, 3))
    return system, mdtraj.Trajectory(xyz.astype(np.float32), system.mdtraj_topology)


def _xyz(traj):
    return traj.xyz.astype(np.float64)


def test_backbone_dihedrals_of_alanine_equal_mdtraj(ala, ala_md):
    for kind, compute in (("phi", mdtraj.compute_phi), ("psi", mdtraj.compute_psi)):
        indices, values = compute(ala_md)
        rc = coordinate(ala, f"{kind}:2")
        assert rc.atoms == tuple(indices[0]) and rc.periodic and rc.unit == "rad"
        np.testing.assert_allclose(rc(_xyz(ala_md)), values[:, 0], atol=1e-5)
    # the same dihedral by atom indices and by residue/atom names
    by_index, by_name = coordinate(ala, "dihedral:4,6,8,14"), coordinate(ala, "dihedral: 1/C, 2/N, 2/CA, 2/C")
    assert by_index.atoms == by_name.atoms == coordinate(ala, "phi:2").atoms
    assert by_name.name == "dihedral:1/C,2/N,2/CA,2/C"


@pytest.mark.parametrize("kind", ["phi", "psi", "omega", "chi1", "chi2", "chi3", "chi4"])
def test_named_dihedrals_of_every_residue_equal_mdtraj(trpzip, kind):
    system, traj = trpzip
    indices, values = getattr(mdtraj, f"compute_{kind}")(traj)
    assert len(indices) >= 2
    at = 0 if kind == "omega" else 1  # the residue of mdtraj's omega is that of its first atom
    for q, v in zip(indices, values.T, strict=True):
        residue = system.mdtraj_topology.atom(int(q[at])).residue.index + 1
        rc = coordinate(system, f"{kind}:{residue}")
        assert rc.atoms == tuple(int(a) for a in q), (kind, residue)
        np.testing.assert_allclose(rc(_xyz(traj)), v, atol=1e-4)


def test_distances_angles_and_rmsd_equal_mdtraj(ala, ala_md, tmp_path):
    pairs = [(8, 18), (1, 14)]
    d = mdtraj.compute_distances(ala_md, pairs)
    np.testing.assert_allclose(coordinate(ala, "distance:2/CA,3/C")(_xyz(ala_md)), d[:, 0], atol=1e-6)
    np.testing.assert_allclose(coordinate(ala, "distance:1, 14")(_xyz(ala_md)), d[:, 1], atol=1e-6)
    a = mdtraj.compute_angles(ala_md, [(6, 8, 14)])
    np.testing.assert_allclose(coordinate(ala, "angle:2/N,2/CA,2/C")(_xyz(ala_md)), a[:, 0], atol=1e-5)
    ref = ala_md[3]
    ref.save_pdb(str(tmp_path / "ref.pdb"))
    ref = mdtraj.load(str(tmp_path / "ref.pdb"))
    for text, selection in (("rmsd:ref.pdb", "not element H"), ("rmsd:ref.pdb[backbone]", "backbone"),
                            ("rmsd:ref.pdb[name CA or name C or name N]", "name CA or name C or name N")):
        rc = coordinate(ala, text, base=tmp_path)
        expected = mdtraj.rmsd(ala_md, ref, atom_indices=ala.atom_indices(selection))
        np.testing.assert_allclose(rc(_xyz(ala_md)), expected, atol=5e-5)  # mdtraj: float32, clipped at 0
        assert rc.unit == "nm" and not rc.periodic and rc(_xyz(ala_md))[3] < 1e-4  # the PDB rounds to 1e-4 nm


def test_coordinates_are_differentiable_torch_functions(ala, ala_md, tmp_path):
    """The RC loss differentiates R(x): every kind passes gradcheck in float64 and keeps the graph."""
    ala_md[0].save_pdb(str(tmp_path / "ref.pdb"))
    x = torch.tensor(_xyz(ala_md[1:4]), requires_grad=True)
    for text in ("phi:2", "psi:2", "distance:2/CA,3/C", "angle:4,6,8", "rmsd:ref.pdb[backbone]"):
        rc = coordinate(ala, text, base=tmp_path)
        value = rc(x)
        assert isinstance(value, torch.Tensor) and value.requires_grad and value.shape == (3,)
        assert torch.autograd.gradcheck(rc.function, (x,)), text
    # and in float32 (the flow's dtype), batched in any leading shape
    y = torch.tensor(ala_md.xyz[:4].reshape(2, 2, ala.n_atoms, 3))
    assert coordinate(ala, "phi:2")(y).shape == (2, 2)


@pytest.mark.parametrize("expression, message", [
    ("phi:7", "no residue 7 in system 'alanine_dipeptide'; residues are numbered 1-3 in topology order: "
              "ACE1 ALA2 NME3"),
    ("phi:1", "residue ACE1 has no phi"),
    ("psi:3", "residue NME3 has no psi"),
    ("chi1:2", "residue ALA2 has no chi1"),
    ("phi:x", "'x' is not a residue number"),
    ("distance:2/CX,3/N", "residue ALA2 has no atom 'CX'; its atoms are N, H, CA, HA, CB"),
    ("distance:9/CA,3/N", "no residue 9"),
    ("dihedral:1,2,3", "dihedral takes 4 atoms separated by commas, got 3"),
    ("distance:1,2,3", "distance takes 2 atoms separated by commas, got 3"),
    ("angle:1,,3", "angle takes 3 atoms"),
    ("dihedral:4,6,8,22", "atom index 22 is out of range: system 'alanine_dipeptide' has 22 atoms, indices 0-21"),
    ("distance:8,8", "repeat an atom"),
    ("distance:a-b,3", "'a-b' is not an atom; give a 0-based index (e.g. 4) or RESIDUE/NAME (e.g. 2/CA)"),
    ("torsion:4,6,8,14", "unknown coordinate kind 'torsion'; use one of dihedral"),
    ("phii", "system 'alanine_dipeptide' has no reaction coordinate 'phii'; it has ['phi', 'psi']; or give an "
             "expression KIND:ARGS"),
    ("", "must be non-empty text"),
    ("rmsd:missing.pdb", "reference structure 'missing.pdb' not found"),
    ("rmsd:", "rmsd takes a structure file"),
])
def test_bad_coordinate_expressions_are_refused_with_the_fix(ala, expression, message):
    with pytest.raises(CoordinateError) as err:
        coordinate(ala, expression)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_rmsd_reference_of_another_molecule_or_bad_selection_is_refused(ala, tmp_path):
    dw = bgs.load("double_well")
    dw.to_mdtraj().save_pdb(str(tmp_path / "other.pdb"))
    with pytest.raises(CoordinateError, match="the reference structure has 1 atoms, system 'alanine_dipeptide' 22"):
        coordinate(ala, "rmsd:other.pdb", base=tmp_path)
    ala.to_mdtraj().save_pdb(str(tmp_path / "ref.pdb"))
    with pytest.raises(CoordinateError, match="bad atom selection 'nonsense xx' .mdtraj syntax"):
        coordinate(ala, "rmsd:ref.pdb[nonsense xx]", base=tmp_path)
    with pytest.raises(CoordinateError, match="has 1 atoms; an RMSD needs at least 3"):
        coordinate(ala, "rmsd:ref.pdb[name CA]", base=tmp_path)
    (tmp_path / "broken.pdb").write_text("garbage\n")
    with pytest.raises(CoordinateError, match="broken.pdb"):
        coordinate(ala, "rmsd:broken.pdb", base=tmp_path)


def test_states_ranges_periodic_wrap_degrees_and_conjunctions(ala, ala_md):
    x = _xyz(ala_md)
    phi, psi = coordinate(ala, "phi:2")(x), coordinate(ala, "psi:2")(x)
    c7ax = state(ala, "C7ax", "phi:2 in (0, 2.2)")
    np.testing.assert_array_equal(c7ax(x), ala.states["C7ax"](x))  # the built-in state
    assert 0 < c7ax(x).sum() < len(x)
    np.testing.assert_array_equal(state(ala, "eq", "phi:2 not in (0, 2.2)")(x), ala.states["C7eq"](x))
    # a range of a dihedral with low > high wraps through +-pi; degrees and pi are accepted
    np.testing.assert_array_equal(state(ala, "b", "psi:2 in (2.0, -2.5)")(x), (psi > 2.0) | (psi < -2.5))
    np.testing.assert_array_equal(state(ala, "b", "psi:2 in (2.0, 3.7832)")(x),
                                  (psi > 2.0) | (psi < 3.7832 - 2 * math.pi))
    np.testing.assert_array_equal(state(ala, "n", "phi:2 in (-180deg, 0deg)")(x), phi < 0)
    np.testing.assert_array_equal(state(ala, "n", "phi:2 in (-pi, 0)")(x), phi < 0)
    both = state(ala, "helix", "phi:2 < 0 and psi:2 in (-120deg, 50deg) AND distance:2/CA,3/C > 0.1")
    np.testing.assert_array_equal(both(x), (phi < 0) & (psi > math.radians(-120)) & (psi < math.radians(50)))
    assert both.description == "phi:2 < 0 and psi:2 in (-120deg, 50deg) and distance:2/CA,3/C > 0.1"
    # the --state and --coordinate option forms
    assert parse_state_option(ala, "C7ax: phi:2 in (0, 2.2)").name == "C7ax"
    rc = parse_coordinate_option(ala, "ends:distance:1/CH3,3/C")
    assert rc.name == "ends" and rc.atoms == (1, 18)


@pytest.mark.parametrize("condition, message", [
    ("phi:2 in (0 2.2)", "malformed range (0 2.2); write (LOW, HIGH)"),
    ("phi:2 in (0, )", "malformed range"),
    ("distance:2/CA,3/C in (0.5, 0.2)", "malformed range (0.5, 0.2): the low end must be below the high end"),
    ("phi:2 in (-pi, pi)", "must span less than a full turn"),
    ("phi:2 in (1, 1)", "must span less than a full turn and more than nothing"),
    ("phi:2 between 0 and 1", "malformed condition; write EXPR in (LOW, HIGH)"),
    ("phi:2 < zero", "'zero' is not a number"),
    ("distance:2/CA,3/C < 10deg", "'deg' applies to angles only"),
    ("phi:9 < 0", "no residue 9"),
    ("", "the condition is empty"),
])
def test_bad_states_are_refused(ala, condition, message):
    with pytest.raises(CoordinateError) as err:
        state(ala, "s", condition)
    assert message in str(err.value)


def test_bad_state_names_and_options_are_refused(ala):
    with pytest.raises(CoordinateError, match="state name '2x' is not valid"):
        state(ala, "2x", "phi:2 < 0")
    with pytest.raises(CoordinateError, match="--state takes NAME:CONDITION, got 'phi' "):
        parse_state_option(ala, "phi")
    with pytest.raises(CoordinateError, match="state 'C7ax' is already defined"):
        define(ala, states=["C7ax:phi:2 < 0"])


def test_backbone_basins_partition_every_residue(ala, ala_md, trpzip):
    rcs, states = backbone_definitions(ala)
    assert sorted(rcs) == ["phi_2", "psi_2"] and sorted(states) == ["alphaL_2", "alphaR_2", "beta_2"]
    assert set(BACKBONE_BASINS) == {"alphaR", "beta", "alphaL"}
    x = _xyz(ala_md)
    member = np.stack([states[f"{b}_2"](x) for b in BACKBONE_BASINS])
    assert (member.sum(0) == 1).all()  # every frame in exactly one basin
    phi = coordinate(ala, "phi:2")(x)
    np.testing.assert_array_equal(states["alphaL_2"](x), (phi > 0) & (phi < 2.2))
    for basin, condition in BACKBONE_BASINS.items():  # the documented conditions are the states
        text = condition.replace("phi", "phi:2").replace("psi", "psi:2")
        np.testing.assert_array_equal(state(ala, basin, text)(x), states[f"{basin}_2"](x))
    assert (states["beta_2"](x) | states["alphaR_2"](x)).mean() > 0.5  # C7eq
    system, traj = trpzip
    rcs, states = backbone_definitions(system)
    assert len(rcs) == 22 and len(states) == 30  # 11 phi, 11 psi; residues 2-11 have both
    member = np.stack([states[f"{b}_5"](_xyz(traj)) for b in BACKBONE_BASINS])
    assert (member.sum(0) == 1).all()
    assert backbone_definitions(bgs.load("double_well")) == ({}, {})


def test_state_file_defines_coordinates_and_states(ala, ala_md, tmp_path):
    ala_md[0].save_pdb(str(tmp_path / "start.pdb"))
    path = tmp_path / "states.toml"
    path.write_text('[coordinates]\nbb = "dihedral:1/C, 2/N, 2/CA, 2/C"\nnear = "rmsd:start.pdb[backbone]"\n\n'
                    '[states]\nax = "bb in (0, 2.2)"\neq = { bb = ["2.2", "0deg"] }\n'
                    'close = { near = [0, 0.05], "psi:2" = ["-pi", 1.5708] }\n'
                    'sel = "rmsd:start.pdb[backbone and resid < 2] < 1 and phi:2 > -4"\n')
    d = read_state_file(path, ala)
    x = _xyz(ala_md)
    assert sorted(d.coordinates) == ["bb", "near"] and sorted(d.states) == ["ax", "close", "eq", "sel"]
    assert d.states["sel"](x).all()  # an 'and' and a '<' inside a selection belong to the selection
    x = _xyz(ala_md)
    np.testing.assert_array_equal(d.states["ax"](x), ala.states["C7ax"](x))
    np.testing.assert_array_equal(d.states["eq"](x), ala.states["C7eq"](x))
    assert d.states["close"](x)[0]
    system = define(ala, files=[path], states={"mine": "bb > 0 and near < 1"})
    assert {"bb", "near", "phi", "phi_2"} <= set(system.reaction_coordinates)
    assert {"ax", "eq", "close", "mine", "C7ax", "beta_2"} <= set(system.states)
    assert "mine" not in ala.states and "bb" not in ala.reaction_coordinates  # the system is not changed


@pytest.mark.parametrize("text, message", [
    ('[states]\nax = "bb in (0, 2.2)"\n',
     "states.toml: [states] ax: system 'alanine_dipeptide' has no reaction coordinate 'bb'"),
    ('[coordinates]\nbb = "phi:5"\n', "states.toml: [coordinates] bb: 'phi:5': no residue 5"),
    ('[coordinates]\nbb = 4\n', "[coordinates] bb: give the coordinate as text"),
    ('[states]\nax = { "phi:2" = [0] }\n', "[states] ax: 'phi:2' must be a range [LOW, HIGH]"),
    ('[states]\nax = {}\n', "[states] ax: the table of ranges is empty"),
    ('[state]\nax = "phi:2 < 0"\n', "unknown table(s) ['state']"),
    ('[states\n', "not a TOML file"),
])
def test_bad_state_files_are_refused_naming_the_entry(ala, tmp_path, text, message):
    path = tmp_path / "states.toml"
    path.write_text(text)
    with pytest.raises(CoordinateError) as err:
        read_state_file(path, ala)
    assert message in str(err.value)
    with pytest.raises(FileNotFoundError, match="state file not found"):
        read_state_file(tmp_path / "none.toml", ala)


def test_a_pdb_system_gets_backbone_definitions_and_user_states(tmp_path):
    """A PDB system (no coordinates or states of its own) gets them from define."""
    system = bgs.from_pdb(structure_path("alanine_dipeptide.pdb"))
    assert not system.states
    defined = define(system, coordinates=["ends:distance:1/C,3/N"], states=["ax:phi_2 in (0, 2.2)"])
    assert {"phi_2", "psi_2", "ends"} <= set(defined.reaction_coordinates)
    assert {"ax", "alphaR_2", "beta_2", "alphaL_2"} <= set(defined.states)
    assert defined.reaction_coordinates["phi_2"].atoms == coordinate(system, "phi:2").atoms
