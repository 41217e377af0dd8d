"""Model files carry their system (format 4): they load and sample without the input files."""

import hashlib
import io
import shutil
import warnings

import numpy as np
import pytest
import torch

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.apps.cli import main
from openmm_bg.data import structure_path
from openmm_bg.model import read_model_file
from openmm_bg.model.fileformat import MAGIC
from openmm_bg.model.fingerprint import system_fingerprint
from openmm_bg.systems import peptide


def _write_format_3(path, payload):
    """A file as openmm-bg wrote it before format 4: the checksummed envelope, no stored system."""
    payload = {k: v for k, v in payload.items() if k != "system_record"}
    payload["format_version"] = 3
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    torch.save({"magic": MAGIC, "format_version": 3, "package_version": "0", "sha256": hashlib.sha256(data).hexdigest(),
                "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}, path)


def test_a_saved_generator_loads_without_its_system(dw_gen, tmp_path):
    path = dw_gen.save(tmp_path / "dw.bg")
    gen = BoltzmannGenerator.load(path)
    assert gen.system.name == "double_well" and gen.system.temperature == dw_gen.system.temperature
    assert system_fingerprint(gen.system) == system_fingerprint(dw_gen.system)
    np.testing.assert_array_equal(gen.system.positions, dw_gen.system.positions)
    a, b = gen.sample(200, seed=2), dw_gen.sample(200, seed=2)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_allclose(a.log_weights, b.log_weights, rtol=1e-12)


def test_a_peptide_model_keeps_its_coordinates_and_states(tmp_path):
    pep = peptide("A")
    data = openmm_bg.simulate(pep, n_frames=40, stride=10, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(pep, data, n_blocks=1, hidden=(8,), seed=0)
    path = gen.save(tmp_path / "pep.bg")
    assert path.stat().st_size < 200_000  # the stored system is compressed
    again = BoltzmannGenerator.load(path)
    assert sorted(again.system.reaction_coordinates) == ["phi_2", "psi_2"]
    assert sorted(again.system.states) == ["alphaL_2", "alphaR_2", "beta_2"]
    x = data.xyz.astype(np.float64)
    for name, state in pep.states.items():
        np.testing.assert_array_equal(again.system.states[name](x), state(x))
        assert again.system.states[name].description == state.description
    np.testing.assert_array_equal(again.system.reaction_coordinates["phi_2"](x), pep.reaction_coordinates["phi_2"](x))
    samples = again.sample(100, seed=0)
    assert np.isfinite(samples.energies).any()


def test_files_of_format_3_load_with_their_system_and_say_what_is_missing_without(dw_gen, dw, tmp_path):
    path = dw_gen.save(tmp_path / "dw.bg")
    _write_format_3(tmp_path / "v3.bg", read_model_file(path))
    payload = read_model_file(tmp_path / "v3.bg")
    assert payload["format_version"] == 3 and payload["system_record"] is None
    gen = BoltzmannGenerator.load(tmp_path / "v3.bg", dw)
    np.testing.assert_array_equal(gen.sample(20, seed=1).positions, dw_gen.sample(20, seed=1).positions)
    with pytest.raises(ValueError, match="does not carry its system; pass the system"):
        BoltzmannGenerator.load(tmp_path / "v3.bg")


def test_a_damaged_system_record_is_refused_as_corrupt(dw_gen, tmp_path):
    from openmm_bg.model.fileformat import write_model_file

    payload = read_model_file(dw_gen.save(tmp_path / "dw.bg"))
    payload["system_record"] = b"not gzip"
    write_model_file(tmp_path / "bad.bg", payload)
    with pytest.raises(ValueError, match="corrupt or truncated.*stored system does not rebuild"):
        BoltzmannGenerator.load(tmp_path / "bad.bg")
    payload["system_record"] = "text"
    write_model_file(tmp_path / "bad.bg", payload)
    with pytest.raises(ValueError, match="system_record must be bytes"):
        BoltzmannGenerator.load(tmp_path / "bad.bg")


def test_cli_model_of_a_pdb_samples_after_the_pdb_is_moved_away(tmp_path, capsys):
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    pdb = work / "ala.pdb"
    shutil.copy(structure_path("alanine_dipeptide.pdb"), pdb)
    data, model = work / "md.h5", work / "model.bg"
    assert main(["simulate", str(pdb), "-n", "40", "--stride", "10", "--platform", "Reference", "-o", str(data)]) == 0
    config = work / "stages.toml"
    config.write_text('[[stage]]\nsteps = 2\nbatch_size = 16\n')
    assert main(["train", str(pdb), "--data", str(data), "--config", str(config), "--n-blocks", "1",
                 "--hidden", "8", "-o", str(model)]) == 0
    assert read_model_file(model)["extra"]["system_spec"]["files"]["structure"] == str(pdb.resolve())
    shutil.move(model, elsewhere / "model.bg")
    pdb.unlink()
    shutil.rmtree(work)
    capsys.readouterr()
    out = elsewhere / "samples.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the stored system is the trained one: no fingerprint warning
        assert main(["sample", str(elsewhere / "model.bg"), "-n", "200", "-o", str(out)]) == 0
    assert out.is_file() and "200 samples" in capsys.readouterr().out
