"""The MCMC tutorial runs end to end in smoke mode (tiny MD, tiny generator)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_add_bg_move_to_md_smoke(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    model = tmp_path / "model.pt"
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / "add_bg_move_to_md.py"), "--smoke",
                           "--model", str(model)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "plain MD:" in proc.stdout and "MD + BG move:" in proc.stdout
    assert "BG move acceptance:" in proc.stdout and "of 15)" in proc.stdout  # 5 iterations x 3 proposals
    assert model.is_file()  # the trained generator was saved for reuse
