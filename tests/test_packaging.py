"""The data in forcefields/ and systems/ ships in the wheel and is found from a plain install."""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import openmm_bg
from openmm_bg.data import forcefield_path, structure_path

ROOT = Path(__file__).resolve().parents[1]


def test_data_found_from_this_install():
    assert forcefield_path("particles_2d.xml").is_file()
    assert structure_path("trpzip2/trpzip2.prmtop").is_file()
    with pytest.raises(FileNotFoundError, match="not found in openmm_bg.data.forcefields"):
        forcefield_path("nonexistent.xml")


def test_every_subpackage_is_listed_in_setup_cfg():
    """setup.cfg lists packages by name: a new folder left out is missing from every wheel (`pip install .`)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "openmm_bg").rglob("__init__.py")
             if "__pycache__" not in p.parts}
    assert found <= listed, f"add to setup.cfg [options] packages: {sorted(found - listed)}"


def test_wheel_install_finds_data(tmp_path):
    """Build the wheel, install it with --no-deps into a fresh venv and load data-backed systems."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("openmm_bg", "forcefields", "systems"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("openmm_bg-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True)
    python = venv / "bin" / "python"
    # the dependencies (openmm, torch, ...) come from the environment running the tests; a plain
    # path entry does not process that environment's .pth files, so an editable openmm_bg stays out
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q",
                    str(wheel)], check=True)
    script = (
        "import openmm_bg, openmm_bg.systems as s, openmm_bg.training, openmm_bg.energy, openmm_bg.sampling\n"
        "print(openmm_bg.__file__)\n"
        "print(s.load('dimer_in_solvent').n_atoms, s.load('trpzip2').n_atoms,"
        " s.load('alanine_dipeptide', forcefield='amber14').n_atoms)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", script], check=True, capture_output=True, text=True,
                         cwd=tmp_path, env=env).stdout.split("\n")
    assert out[0].startswith(str(venv)), f"imported {out[0]} instead of the wheel in {venv}"
    assert out[1].split() == ["38", "218", "22"]
    assert openmm_bg.__version__ in wheel.name

