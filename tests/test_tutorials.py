"""The tutorials (tutorials/0*.py) run end to end in smoke mode and write their plots.

Each runs in a subprocess, as a user would run it, with one OpenMP thread; smoke modes use tiny MD
and training, so only the plumbing is checked here (the science is checked by the library's tests).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TUTORIALS = {
    "01_double_well_and_mueller_brown": (["double_well_losses.png", "double_well_training.png",
                                          "mueller_brown_density.png"],
                                         ["exact (quadrature)", "ML, then KL + RC", "Mueller-Brown"]),
    "02_dimer_in_solvent": (["dimer_configurations.png", "dimer_free_energy.png", "dimer_training.png"],
                            ["MD: d in closed run", "samples at 300 K"]),
    "03_alanine_dipeptide": (["ramachandran.png", "profile_phi.png", "training.png"],
                             ["saved the generator", "samples at 300 K"]),
    "04_protein": (["energies.png", "rmsd.png", "rotamers.png", "training.png"],
                   ["MixedTransform", "valid samples:", "side-chain move: acceptance"]),
    "05_thermodynamic_states": (["temperature_change.png", "parameter_change.png"],
                                ["300 K -> 350 K", "tilt c = 1 -> 2", "two-generator"]),
}


def run_tutorial(name: str, output: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(ROOT / "tutorials" / f"{name}.py"), "--smoke", "--output",
                           str(output), *extra], capture_output=True, text=True, timeout=400, env=env,
                          cwd=output.parent)


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_smoke(name, tmp_path):
    output = tmp_path / name
    proc = run_tutorial(name, output)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs, phrases = TUTORIALS[name]
    for png in pngs:
        path = output / png
        assert path.is_file(), f"{name} did not write {png}; it wrote {sorted(p.name for p in output.iterdir())}"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000, f"{png} is not a real plot ({len(data)} bytes)"
    for phrase in phrases:
        assert phrase in proc.stdout, f"{phrase!r} missing from the output of {name}:\n{proc.stdout[-2000:]}"
    if name == "03_alanine_dipeptide":  # --model reuses the saved generator instead of training
        model = output / "model.bg"
        assert model.is_file()
        again = tmp_path / "with_model"
        proc = run_tutorial(name, again, "--model", str(model))
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"loaded generator {model}" in proc.stdout and "training:" not in proc.stdout
        assert (again / "ramachandran.png").is_file() and not (again / "training.png").exists()
