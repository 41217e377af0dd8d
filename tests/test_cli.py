"""The openmm-bg command line: listings and one-line errors with exit codes."""

import subprocess
import sys

from openmm_bg.cli import main


def test_systems_lists_every_builtin(capsys):
    assert main(["systems"]) == 0
    out = capsys.readouterr().out
    for name in ("double_well", "mueller_brown", "dimer_in_solvent", "alanine_dipeptide", "trpzip2"):
        assert name in out
    assert "C7ax (0 < phi < 2.2 rad)" in out


def test_unknown_system_is_one_line_error():
    result = subprocess.run([sys.executable, "-m", "openmm_bg.cli", "systems", "alanin"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown system 'alanin'" in result.stderr and "Traceback" not in result.stderr
