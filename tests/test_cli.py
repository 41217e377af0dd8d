"""The openmm-bg command line: the train -> sample -> free-energy chain, listings, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from openmmtools.testsystems import get_data_filename

from openmm_bg.apps.cli import main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "openmm_bg.apps.cli", *args], capture_output=True, text=True)


def test_systems_lists_every_builtin(capsys):
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    for name in ("double_well", "mueller_brown", "dimer_in_solvent", "alanine_dipeptide", "trpzip2"):
        assert name in out
    assert "C7ax (0 < phi < 2.2 rad)" in out


def test_train_sample_free_energy_chain_on_toy_system(tmp_path, capsys):
    data, model = tmp_path / "md.h5", tmp_path / "model.bg"
    assert main(["simulate", "double_well", "-n", "400", "--stride", "20", "--friction", "10",
                 "-o", str(data)]) == 0
    config = tmp_path / "stages.toml"
    config.write_text('[[stage]]\nname = "ml"\nsteps = 60\nbatch_size = 128\n\n'
                      '[[stage]]\nsteps = 30\nkl = 0.5\nkl_batch_size = 128\nlr = 5e-4\n')
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "2",
                 "--hidden", "32", "-o", str(model)]) == 0
    assert model.exists() and (tmp_path / "model_training.csv").exists()
    assert (tmp_path / "model_training.png").stat().st_size > 1000
    samples = tmp_path / "samples.npz"
    assert main(["sample", str(model), "-n", "3000", "-o", str(samples), "--trajectory",
                 str(tmp_path / "samples.h5")]) == 0
    with np.load(samples) as stored:
        assert stored["positions"].shape == (3000, 1, 3) and np.isfinite(stored["log_weights"]).any()
    out_dir = tmp_path / "fe"
    assert main(["free-energy", str(model), "--states", "left,left", "-n", "3000", "--bootstrap", "20",
                 "-o", str(out_dir)]) == 0
    report = json.loads((out_dir / "free_energy.json").read_text())
    assert report["free_energy"]["delta_a_kT"] == pytest.approx(0.0, abs=1e-12)
    assert (out_dir / "profile_x1.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "A(left) - A(left)" in out and "ESS" in out
    # the training resumes from its checkpoint rather than starting over
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "2",
                 "--hidden", "32", "-o", str(model)]) == 0
    assert "resuming from" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["systems", "alanin"], "unknown system 'alanin'"),
    (["simulate", "nothing.pdb", "-o", "x.h5"], "PDB file not found"),
    (["simulate", "double_well", "-o", "x.txt"], "use one of the suffixes"),
    (["train", "double_well", "--data", "missing.h5", "-o", "m.bg"], "training data not found"),
    (["sample", "missing.bg", "-o", "s.npz"], "model file not found"),
    (["simulate", "alanine_dipeptide", "--option", "solvent", "-o", "x.h5"], "--option takes key=value"),
])
def test_errors_are_one_line_with_exit_code(args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_exit_code_from_the_console_script():
    result = _run("systems", "alanin")
    assert result.returncode == 2
    assert result.stderr.strip() == ("openmm-bg: error: unknown system 'alanin' (did you mean "
                                     "'alanine_dipeptide'?); built-in systems: double_well, mueller_brown, "
                                     "dimer_in_solvent, alanine_dipeptide, trpzip2")


def test_explicit_solvent_system_is_refused(tmp_path, capsys):
    folder = "data/alanine-dipeptide-explicit"
    prmtop = get_data_filename(f"{folder}/alanine-dipeptide.prmtop")
    crd = get_data_filename(f"{folder}/alanine-dipeptide.crd")
    assert main(["simulate", prmtop, "--coordinates", crd, "-n", "2", "-o", str(tmp_path / "x.h5")]) == 2
    err = capsys.readouterr().err
    assert "periodic" in err and "implicit solvent" in err


def test_model_of_another_system_and_unknown_state(tmp_path, capsys):
    data, model = tmp_path / "md.h5", tmp_path / "model.bg"
    assert main(["simulate", "double_well", "-n", "100", "--stride", "10", "-o", str(data)]) == 0
    config = tmp_path / "stages.toml"
    config.write_text('[[stage]]\nsteps = 2\n')
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model)]) == 0
    capsys.readouterr()
    assert main(["free-energy", str(model), "--states", "left,C7ax", "-n", "100"]) == 2
    assert "has no state 'C7ax'" in capsys.readouterr().err
    assert main(["train", "alanine_dipeptide", "--data", str(data), "-o", str(tmp_path / "m2.bg")]) == 2
    assert "has 1 atoms" in capsys.readouterr().err


def test_sample_at_another_temperature_draws_what_the_library_draws(tmp_path, capsys):
    """``sample --temperature`` scales the model's prior by T / T_train exactly as
    ``BoltzmannGenerator.sample(temperature=T)`` does: same seed, same samples."""
    import openmm_bg
    from openmm_bg.systems import load

    data, model, out = tmp_path / "md.h5", tmp_path / "model.bg", tmp_path / "hot.npz"
    assert main(["simulate", "double_well", "-n", "100", "--stride", "10", "-o", str(data)]) == 0
    config = tmp_path / "stages.toml"
    config.write_text('[[stage]]\nsteps = 3\n')
    assert main(["train", "double_well", "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model)]) == 0
    assert main(["sample", str(model), "-n", "400", "--temperature", "600", "--seed", "3", "-o", str(out)]) == 0
    gen = openmm_bg.BoltzmannGenerator.load(model, load("double_well"))
    library = gen.sample(400, temperature=600.0, seed=3)
    cli = openmm_bg.Samples.load(out, gen.system)
    assert cli.temperature == 600.0 and cli.provenance["training_temperature"] == 300.0
    np.testing.assert_array_equal(cli.positions, library.positions)
    np.testing.assert_array_equal(cli.log_weights, library.log_weights)
