"""Data shipped with openmm-bg: force-field XML files and structures.

The files live in the repository's top-level ``forcefields/`` and ``systems/`` folders and are
installed as the packages ``openmm_bg.data.forcefields`` and ``openmm_bg.data.systems``, so they
are found from an editable install and from a wheel alike.

Examples
--------
>>> from openmm_bg.data import forcefield_path
>>> forcefield_path("particles_2d.xml").name
'particles_2d.xml'
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["forcefield_path", "structure_path"]


def _resource(package: str, name: str) -> Path:
    root = importlib.resources.files(package)
    path = root.joinpath(*name.split("/"))
    if not path.is_file():
        available = sorted(p.name for p in root.iterdir() if not p.name.startswith("__"))
        raise FileNotFoundError(
            f"openmm-bg data file {name!r} not found in {package} (available: {available}); "
            "reinstall the package (pip install openmm-bg) if files are missing"
        )
    return Path(str(path))


def forcefield_path(name: str) -> Path:
    """Path of a force-field XML file shipped in ``forcefields/``.

    Parameters
    ----------
    name : str
        File name, e.g. ``"particles_2d.xml"``.

    Returns
    -------
    pathlib.Path
    """
    return _resource("openmm_bg.data.forcefields", name)


def structure_path(name: str) -> Path:
    """Path of a structure file shipped in ``systems/`` (``"folder/file"`` allowed).

    Parameters
    ----------
    name : str
        File name relative to ``systems/``, e.g. ``"alanine_dipeptide/alanine-dipeptide.pdb"``.

    Returns
    -------
    pathlib.Path
    """
    return _resource("openmm_bg.data.systems", name)
