"""Model files carry the user's coordinates and states (distance, angle, RMSD with its reference, conditions)."""

import shutil

import numpy as np
import pytest

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.analysis.free_energy import state_free_energy
from openmm_bg.apps.cli import main
from openmm_bg.data import structure_path
from openmm_bg.model import read_model_file
from openmm_bg.systems import define, from_pdb
from openmm_bg.systems.record import decode_record, encode_record, system_from_record, system_record

STATES = ('[coordinates]\nends = "distance:1/C,3/N"\nbend = "angle:2/N,2/CA,2/C"\n\n'
          '[states]\nB = "bend > 1.93 and ends > 0.1"\n')


@pytest.fixture()
def work(tmp_path):
    """A folder with alanine dipeptide's PDB, an RMSD reference structure and a state file."""
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(structure_path("alanine_dipeptide.pdb"), work / "ala.pdb")
    shutil.copy(structure_path("alanine_dipeptide.pdb"), work / "ref.pdb")
    (work / "states.toml").write_text(STATES)
    return work


def _defined(work):
    return define(from_pdb(work / "ala.pdb"),
                  coordinates={"fit": f"rmsd:{work / 'ref.pdb'}[backbone]"},
                  states={"A": "bend < 1.93 and fit < 5 and phi:2 < 0"}, files=[work / "states.toml"])


def test_user_coordinates_and_states_survive_save_move_load_without_their_files(work, tmp_path):
    system = _defined(work)
    data = openmm_bg.simulate(system, n_frames=40, stride=10, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(system, data, n_blocks=1, hidden=(8,), seed=0)
    before = gen.sample(400, seed=3)
    f_before = state_free_energy(before, "A", "B", n_bootstrap=20, seed=0, min_ess=1, warn=False)
    path = gen.save(work / "model.bg")
    assert system_record(system)["not_stored"] == []  # every definition has a recipe
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(path, elsewhere / "model.bg")
    shutil.rmtree(work)  # the PDB, the RMSD reference and the state file are gone
    again = BoltzmannGenerator.load(elsewhere / "model.bg")
    x = data.xyz.astype(np.float64)
    for name in ("fit", "bend", "ends", "phi_2"):
        a, b = again.system.reaction_coordinates[name], system.reaction_coordinates[name]
        np.testing.assert_allclose(a(x), b(x), rtol=0, atol=1e-12)
        assert (a.bounds, a.unit, a.periodic) == (b.bounds, b.unit, b.periodic)
    assert again.system.reaction_coordinates["fit"].spec["file"] == "ref.pdb"
    for name in ("A", "B"):
        x_s = before.positions
        np.testing.assert_array_equal(again.system.states[name](x_s), system.states[name](x_s))
        assert again.system.states[name].description == system.states[name].description
    after = again.sample(400, seed=3)
    f_after = state_free_energy(after, "A", "B", n_bootstrap=20, seed=0, min_ess=1, warn=False)
    assert f_after.delta_a_kT == f_before.delta_a_kT and np.isfinite(f_before.delta_a_kT)


def test_old_records_without_the_new_kinds_still_rebuild(work):
    """A record of format 4 as the previous version wrote it (dihedrals and intervals only) still loads; a
    record holding a kind this version does not know rebuilds without it and says so."""
    import openmm_bg.systems as bgs

    record = system_record(bgs.load("alanine_dipeptide"))
    assert {c["spec"]["kind"] for c in record["coordinates"]} == {"dihedral"}
    assert sorted(system_from_record(record).states) == ["C7ax", "C7eq"]
    record = system_record(_defined(work))
    record["coordinates"][0]["spec"] = {"kind": "from the future"}
    record["states"][0]["spec"] = {"kind": "from the future"}
    with pytest.warns(UserWarning, match="kinds this version does not know"):
        rebuilt = system_from_record(decode_record(encode_record(record)))
    assert len(rebuilt.reaction_coordinates) == len(record["coordinates"]) - 1


def _free_energy_outcome(model, out, capsys):
    """``free-energy --states A,B`` of a barely trained model: it evaluates both states, then stops on their
    few effective samples (the CLI has no --min-ess); the message counts the samples in the state."""
    capsys.readouterr()
    code = main(["free-energy", str(model), "--states", "A,B", "-n", "300", "--seed", "1", "-o", str(out)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("openmm-bg: error")]
    return code, errors


def test_cli_states_given_to_train_work_after_the_files_are_gone(work, tmp_path, capsys):
    data, model = work / "md.h5", work / "model.bg"
    assert main(["simulate", str(work / "ala.pdb"), "-n", "40", "--stride", "10", "--platform", "Reference",
                 "-o", str(data)]) == 0
    config = work / "stages.toml"
    config.write_text('[[stage]]\nsteps = 2\nbatch_size = 16\n')
    definitions = ["--coordinate", f"fit:rmsd:{work / 'ref.pdb'}[backbone]",
                   "--state", "A:bend < 1.93 and fit < 5 and phi:2 < 0", "--states", str(work / "states.toml")]
    assert main(["train", str(work / "ala.pdb"), "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model), *definitions]) == 0
    before = _free_energy_outcome(model, tmp_path / "before", capsys)
    assert before[0] == 2 and len(before[1]) == 1 and "effective samples (Kish ESS; " in before[1][0], before
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(model, elsewhere / "model.bg")
    shutil.rmtree(work)
    after = _free_energy_outcome(elsewhere / "model.bg", tmp_path / "after", capsys)
    assert after == before  # the same states, the same samples in them
    stored = BoltzmannGenerator.load(elsewhere / "model.bg").system
    assert {"A", "B"} <= set(stored.states) and {"fit", "ends", "bend"} <= set(stored.reaction_coordinates)
    assert main(["sample", str(elsewhere / "model.bg"), "-n", "100", "-o", str(tmp_path / "s.npz")]) == 0


def test_cli_states_given_to_train_on_a_builtin_system_are_kept(tmp_path, capsys):
    """A built-in system is rebuilt by name; the states given to train come from the model file."""
    from openmm_bg.apps.cli import _load_model

    data, model, config = tmp_path / "md.h5", tmp_path / "model.bg", tmp_path / "stages.toml"
    config.write_text('[[stage]]\nsteps = 2\nbatch_size = 16\n')
    assert main(["simulate", "alanine_dipeptide", "-n", "40", "--stride", "10", "--platform", "Reference",
                 "-o", str(data)]) == 0
    assert main(["train", "alanine_dipeptide", "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model), "--coordinate", "ends:distance:1/C,3/N",
                 "--state", "neg:phi:2 < 0 and ends > 0.1"]) == 0
    assert read_model_file(model)["extra"]["system_spec"]["name"] == "alanine_dipeptide"
    system = _load_model(str(model)).system
    assert {"neg", "C7eq", "C7ax"} <= set(system.states) and "ends" in system.reaction_coordinates
    x = openmm_bg.systems.load("alanine_dipeptide").positions[None]
    assert bool(system.states["neg"](x)[0]) and system.states["neg"].description == "phi:2 < 0 and ends > 0.1"
