"""Peptides from a sequence (`openmm_bg.systems.peptide`): atoms, chirality, energies, coordinates, refusals."""

import io

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import pytest

import openmm_bg.systems as bgs
from openmm_bg.systems.backbone import backbone_coordinates, l_amino_acid_centres
from openmm_bg.systems.gbsa import native_obc2
from openmm_bg.systems.proline import broken_rings, ring_closure_bonds, ring_closure_deviation

# atoms of a residue inside a chain (all hydrogens, pH 7 protonation), counted from the formulas
RESIDUE_ATOMS = {"ACE": 6, "NME": 6, "ALA": 10, "GLY": 7, "PRO": 14, "ILE": 19, "THR": 14, "LYS": 22, "TRP": 24}


@pytest.fixture(scope="module")
def gpit():
    return bgs.peptide("GPIT")


@pytest.fixture(scope="module")
def aaga_implicit():
    return bgs.peptide("AAGA", solvent="implicit")


def _energy(system: openmm.System, positions) -> float:
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def _roundtrip_pdb(pep):
    text = io.StringIO()
    app.PDBFile.writeFile(pep.topology, pep.positions * unit.nanometer, text)
    text.seek(0)
    return app.PDBFile(text)


def test_atom_counts_and_residues(gpit):
    assert [r.name for r in gpit.topology.residues()] == ["ACE", "GLY", "PRO", "ILE", "THR", "NME"]
    assert gpit.n_atoms == sum(RESIDUE_ATOMS[r] for r in ("ACE", "GLY", "PRO", "ILE", "THR", "NME"))
    ala = bgs.peptide("A")
    assert ala.n_atoms == 22 and sorted(a.name for a in ala.topology.atoms()) == sorted(
        a.name for a in bgs.load("alanine_dipeptide", forcefield="amber14").topology.atoms())
    free = bgs.peptide("KW", caps=False)  # charged termini: NH3+ (two extra H) and COO- (OXT)
    assert free.n_atoms == RESIDUE_ATOMS["LYS"] + RESIDUE_ATOMS["TRP"] + 2 + 1


def test_every_residue_is_the_l_amino_acid_and_a_mirror_image_is_caught(gpit):
    centres = l_amino_acid_centres(gpit.topology)
    assert centres.names == ("PRO3:CA", "ILE4:CA", "ILE4:CB", "THR5:CA", "THR5:CB")
    assert not centres.inverted(gpit.positions[None]).any()
    assert centres.inverted(gpit.positions[None] * [-1.0, 1.0, 1.0]).all()
    # the same sign convention on structures from elsewhere: trpzip2 (a PDB structure) is all L
    tz = bgs.load("trpzip2")
    assert not l_amino_acid_centres(tz.topology).inverted(tz.positions[None]).any()


@pytest.mark.parametrize("solvent", ["vacuum", "implicit"])
def test_energy_equals_openmm_forcefield_on_the_same_pdb(solvent, gpit, aaga_implicit):
    pep = gpit if solvent == "vacuum" else aaga_implicit
    pdb = _roundtrip_pdb(pep)
    files = ["amber14-all.xml"] + (["implicit/obc2.xml"] if solvent == "implicit" else [])
    reference = app.ForceField(*files).createSystem(pdb.topology, nonbondedMethod=app.NoCutoff)
    ours = _energy(pep.system, pdb.positions)
    if solvent == "implicit":  # the same OBC2 model as OpenMM's native force
        assert any(isinstance(f, openmm.GBSAOBCForce) for f in pep.system.getForces())
        assert not any(isinstance(f, openmm.CustomGBForce) for f in pep.system.getForces())
        custom = _energy(reference, pdb.positions)
        assert ours == pytest.approx(custom, rel=1e-5, abs=1e-3)  # Coulomb constants differ in the 7th digit
        reference = native_obc2(reference)
    assert ours == pytest.approx(_energy(reference, pdb.positions), rel=1e-6)


def test_minimised_and_deterministic(gpit):
    context = openmm.Context(gpit.system, openmm.VerletIntegrator(0.001),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(gpit.positions)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole
                                                                                      / unit.nanometer)
    assert np.sqrt((forces**2).sum(-1).mean()) < 10.0  # the minimiser's tolerance (kJ/mol/nm)
    again = bgs.load("peptide:gpit")
    assert again.name == gpit.name == "peptide:GPIT"
    np.testing.assert_array_equal(again.positions, gpit.positions)


def test_phi_psi_coordinates_and_basin_states(gpit):
    rcs = gpit.reaction_coordinates
    assert sorted(rcs) == sorted(f"{a}_{k}" for a in ("phi", "psi") for k in range(2, 6))
    assert rcs["phi_2"].atoms == tuple(backbone_coordinates(gpit.topology)["phi_2"].atoms)
    import mdtraj

    traj = gpit.to_mdtraj()
    _, phi = mdtraj.compute_phi(traj)
    _, psi = mdtraj.compute_psi(traj)
    np.testing.assert_allclose([rcs[f"phi_{k}"](gpit.positions[None])[0] for k in range(2, 6)], phi[0], atol=1e-5)
    np.testing.assert_allclose([rcs[f"psi_{k}"](gpit.positions[None])[0] for k in range(2, 6)], psi[0], atol=1e-5)
    # the three basins of a residue partition configurations
    rng = np.random.default_rng(0)
    x = gpit.positions[None] + rng.normal(scale=0.05, size=(200, gpit.n_atoms, 3))
    for k in range(2, 6):
        members = np.stack([gpit.states[f"{b}_{k}"](x) for b in ("alphaR", "beta", "alphaL")])
        assert (members.sum(0) == 1).all()
    assert all(s.spec is not None for s in gpit.states.values())
    assert all(rc.spec == {"kind": "dihedral", "atoms": list(rc.atoms)} for rc in rcs.values())


@pytest.mark.parametrize("sequence, message", [
    ("AXB", "unknown residue letter(s) 'B', 'X'"),
    ("", "non-empty string"),
    ("A1", "'1'"),
])
def test_bad_sequences_refused(sequence, message):
    with pytest.raises(ValueError, match="one-letter") as err:
        bgs.peptide(sequence)
    assert message in str(err.value)
    assert "ACDEFGHIKLMNPQRSTVWY" in str(err.value) or sequence == ""


@pytest.mark.parametrize("options, message", [
    ({"solvent": "explicit"}, "solvent must be"),
    ({"constraints": "bonds"}, "constraints must be"),
    ({"caps": False}, "single uncapped"),
    ({"forcefield": 14}, "forcefield must be"),
    ({"forcefield": ["charmm36.xml"]}, "use an Amber force field"),
])
def test_bad_options_refused(options, message):
    with pytest.raises(ValueError, match=message):
        bgs.peptide("A", **options)


def test_proline_ring_closure_check_flags_a_broken_ring(gpit):
    (cd, n), = ring_closure_bonds(gpit.topology)
    assert {a.name for a in gpit.topology.atoms() if a.index in (cd, n)} == {"CD", "N"}
    x = np.repeat(gpit.positions[None], 3, axis=0)
    x[1, cd] += 0.2 * (x[1, cd] - x[1, n]) / np.linalg.norm(x[1, cd] - x[1, n])  # ring opened by 0.2 nm
    x[2, :] += 0.5  # a rigid translation keeps the ring
    dev = ring_closure_deviation(gpit, x)
    assert dev.shape == (3, 1) and dev[0, 0] < 1e-12 and dev[1, 0] == pytest.approx(0.2) and dev[2, 0] < 1e-9
    assert broken_rings(gpit, x).tolist() == [False, True, False]
    x[2, 0] = np.nan
    assert broken_rings(gpit, x).tolist() == [False, True, False]  # NaN off the ring: not a broken ring
    x[2, cd] = np.nan
    assert broken_rings(gpit, x).tolist() == [False, True, True]
    ala = bgs.peptide("A")
    assert ring_closure_deviation(ala, ala.positions[None]).shape == (1, 0)  # no proline: nothing to check
    with pytest.raises(ValueError, match=r"shape \[batch, 22, 3\]"):
        ring_closure_deviation(ala, x)


def test_samples_summary_reports_open_proline_rings(gpit):
    from openmm_bg.analysis.samples import Samples

    (cd, n), = ring_closure_bonds(gpit.topology)
    x = np.repeat(gpit.positions[None], 4, axis=0)
    x[1, cd] += 0.2 * (x[1, cd] - x[1, n]) / np.linalg.norm(x[1, cd] - x[1, n])
    x[3] = np.nan  # out of domain: not counted as an open ring
    samples = Samples(gpit, x, np.zeros(4), np.zeros(4), temperature=300.0)
    assert "1 raw samples have an open proline ring" in samples.summary()
    ala = bgs.peptide("A")
    assert "proline" not in Samples(ala, ala.positions[None], np.zeros(1), np.zeros(1), temperature=300.0).summary()
