"""The model file format: what `BoltzmannGenerator.save` writes and `read_model_file` checks.

A model file is a torch pickle (load only files you trust) of a dictionary with

- ``magic`` (``"openmm-bg generator"``), ``format_version``, ``package_version``;
- ``system_name``, ``fingerprint`` (`openmm_bg.model.fingerprint.system_fingerprint`);
- ``training_temperature`` (K; from format 2 on);
- ``config`` (build options), ``transform``, ``standardize``, ``flow_domain``, ``flow_state`` (weights);
- ``extra`` (free-form metadata, e.g. the command line's ``system_spec``).

Versions: 1 (first), 2 (adds ``training_temperature``; version-1 files take it from the system they
are loaded with). Files are written atomically (temporary file, then rename).

Examples
--------
>>> FORMAT_VERSION, MAGIC
(2, 'openmm-bg generator')
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .._version import __version__
from ..systems import MolecularSystem
from .fingerprint import system_fingerprint

__all__ = ["FORMAT_VERSION", "MAGIC", "model_payload", "write_model_file", "read_model_file"]

#: Version of the file format written by `BoltzmannGenerator.save`.
FORMAT_VERSION = 2
#: First entry of every model file.
MAGIC = "openmm-bg generator"


def model_payload(system: MolecularSystem, config: dict, transform: torch.nn.Module, standardize: torch.nn.Module,
                  flow: torch.nn.Module, training_temperature: float, extra: dict | None = None) -> dict:
    """The dictionary a model file holds (tensors on the CPU; the modules themselves are not moved)."""
    import copy

    return {
        "magic": MAGIC, "format_version": FORMAT_VERSION, "package_version": __version__,
        "system_name": system.name, "fingerprint": system_fingerprint(system),
        "training_temperature": float(training_temperature),
        "config": config, "transform": copy.deepcopy(transform).cpu(), "standardize": copy.deepcopy(standardize).cpu(),
        "flow_domain": flow.domain, "flow_state": {k: v.detach().cpu() for k, v in flow.state_dict().items()},
        "extra": dict(extra or {}),
    }


def write_model_file(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (from `model_payload`) to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read_model_file(path: str | os.PathLike) -> dict:
    """Load and validate the payload of a saved generator (see `BoltzmannGenerator.load`).

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a model file, corrupt or truncated, or written by a newer file format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files raise many different errors
        raise ValueError(f"{path}: not a readable openmm-bg model file (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("magic") != MAGIC:
        raise ValueError(f"{path}: not an openmm-bg generator file")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer openmm-bg (file format {payload['format_version']}, this "
                         f"version reads {FORMAT_VERSION}); upgrade openmm-bg")
    payload.setdefault("training_temperature", None)  # format 1: the system's
    payload.setdefault("extra", {})
    return payload
