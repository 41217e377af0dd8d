"""Training data from several starts (`simulate_starts`, `torsion_starts`, ``simulate --starts``)."""

import json
import math

import mdtraj
import numpy as np
import pytest

import openmm_bg
from openmm_bg.apps.cli import main
from openmm_bg.md import read_origins, simulate_starts, torsion_starts
from openmm_bg.md.multistart import origins_path
from openmm_bg.systems import load, peptide
from openmm_bg.systems.backbone import l_amino_acid_centres

MD = {"platform": "Reference", "progress": False}


@pytest.fixture(scope="module")
def gpa():
    return peptide("GPA")


def test_frames_of_each_start_equal_a_plain_run_and_origins_are_recorded(dw, tmp_path):
    starts = np.array([[[-1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]], [[0.2, 0.5, 0.0]]])
    out = tmp_path / "md.h5"
    traj, origins = simulate_starts(dw, starts, n_frames=6, stride=5, temperature=[300.0, 300.0, 600.0], seed=4,
                                    output=out, **MD)
    assert traj.n_frames == 18 and origins.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    for k in range(3):
        alone = openmm_bg.simulate(dw, 6, 5, temperature=600.0 if k == 2 else 300.0, seed=4 + k,
                                   positions=starts[k], **MD)
        np.testing.assert_array_equal(traj.xyz[origins == k], alone.xyz)
    stored, entries = read_origins(out)
    np.testing.assert_array_equal(stored, origins)
    assert [e["temperature"] for e in entries] == [300.0, 300.0, 600.0] and entries[2]["seed"] == 6
    np.testing.assert_allclose(mdtraj.load(str(out)).xyz, traj.xyz)
    assert not (tmp_path / "md.h5.starts").exists() and not list(tmp_path.glob("*.writing*"))


def test_a_stopped_run_resumes_keeping_finished_starts(dw, tmp_path):
    starts = np.array([[[-1.0, 0.0, 0.0]], [[1.0, 0.0, 0.0]]])
    out = tmp_path / "md.h5"
    full, _ = simulate_starts(dw, starts, n_frames=5, stride=5, seed=1, **MD)
    # a run stopped after its first start: that start's finished part is on disk
    parts = tmp_path / "md.h5.starts"
    parts.mkdir()
    first = openmm_bg.simulate(dw, 5, 5, seed=1, positions=starts[0], output=parts / "start_000.h5", **MD)
    info = {"index": 0, "label": "positions[0]", "temperature": 300.0, "seed": 1, "first_frame": 0, "n_frames": 5,
            "stride": 5, "start": openmm_bg.md.partial.fingerprint(starts[0])}
    (parts / "start_000.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="resume=True"):
        simulate_starts(dw, starts, n_frames=5, stride=5, seed=1, output=out, **MD)
    mdtraj.Trajectory(first.xyz * 0 + 7.0, first.topology).save(str(parts / "start_000.h5"))  # marks it as kept
    traj, _ = simulate_starts(dw, starts, n_frames=5, stride=5, seed=1, output=out, resume=True, **MD)
    assert (traj.xyz[:5] == 7.0).all()  # read back, not run again
    np.testing.assert_array_equal(traj.xyz[5:], full.xyz[5:])


@pytest.mark.parametrize("starts, temperature, message", [
    (np.zeros((2, 3)), None, r"shape \[1, 2, 3\]; every start must be \[1, 3\]"),
    ([np.full((1, 3), np.nan)], None, "NaN"),
    ([np.zeros((1, 3))] * 2, [300.0], "one per start"),
    ([np.zeros((1, 3))], -5.0, "temperature"),
    (["/nonexistent/start.pdb"], None, "start structure not found"),
])
def test_bad_starts_refused_before_md(dw, starts, temperature, message):
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        simulate_starts(dw, starts, n_frames=2, stride=2, temperature=temperature, **MD)


def test_torsion_starts_put_residues_in_several_basins(gpa):
    # 20 starts: a residue misses one of its 3 basins with probability 3 (2/3)^20 < 0.1 %; with 6
    # (~26 %), a fresh install of the dependencies changed which draws were redrawn and beta_4 was missed
    xs = torsion_starts(gpa, 20, seed=0)
    assert xs.shape == (20, gpa.n_atoms, 3)
    assert not l_amino_acid_centres(gpa.topology).inverted(xs).any()
    energies = openmm_bg.energy.energy_for(gpa, platform="Reference")(xs).numpy()
    assert np.isfinite(energies).all()
    visited = {name for name, state in gpa.states.items() if state(xs).any()}
    assert {"alphaR_4", "beta_4", "alphaL_4"} <= visited and {"alphaL_2", "beta_2"} <= visited
    # proline's phi (in its ring) is left alone: near its reference value
    phi_pro = gpa.reaction_coordinates["phi_3"]
    assert np.all(np.abs(phi_pro(xs) - phi_pro(gpa.positions[None])) < math.radians(40))
    with pytest.raises(ValueError, match="not a peptide"):
        torsion_starts(load("double_well"), 2)
    with pytest.raises(ValueError, match="basins must be"):
        torsion_starts(gpa, 2, basins=("helix",))


def test_cli_simulate_from_torsion_starts_of_a_peptide(tmp_path, capsys):
    out = tmp_path / "md.h5"
    assert main(["simulate", "peptide:GA", "--torsion-starts", "2", "-n", "3", "--stride", "5", "--platform",
                 "Reference", "-o", str(out)]) == 0
    assert "from 3 starts" in capsys.readouterr().out
    origins, entries = read_origins(out)
    assert origins.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and len(entries) == 3
    assert mdtraj.load(str(out)).n_frames == 9 and origins_path(out).is_file()
    starts = tmp_path / "starts.pdb"
    mdtraj.load(str(out))[[0, 4]].save(str(starts))
    out2 = tmp_path / "md2.h5"
    assert main(["simulate", "peptide:GA", "--starts", str(starts), "-n", "2", "--stride", "5", "--platform",
                 "Reference", "-o", str(out2)]) == 0
    assert read_origins(out2)[0].tolist() == [0, 0, 1, 1]
