"""The model file format: what `BoltzmannGenerator.save` writes and `read_model_file` checks.

A model file is a torch pickle (load only files you trust). The **payload**, a dictionary, holds

- ``magic`` (``"openmm-bg generator"``), ``format_version``, ``package_version``;
- ``system_name``, ``fingerprint`` (`openmm_bg.model.fingerprint.system_fingerprint`);
- ``training_temperature`` (K; from format 2 on);
- ``config`` (build options), ``transform``, ``standardize``, ``flow_domain``, ``flow_state`` (weights);
- ``extra`` (free-form metadata, e.g. the command line's ``system_spec``);
- ``system_record`` (from format 4 on): the system itself, gzip-compressed JSON of
  `openmm_bg.systems.record.system_record` (serialized ``openmm.System``, topology, reference
  positions, temperature, the coordinates and states that have a spec), so that the file alone
  rebuilds its system (`stored_system`; ``BoltzmannGenerator.load(path)`` without a system).

From format 3 on, the file is an **envelope** ``{"magic", "format_version", "package_version",
"sha256", "payload"}`` whose ``payload`` is the payload serialised by ``torch.save`` (its bytes, as a
1-D ``uint8`` tensor, stored verbatim) and ``sha256`` the hex SHA-256 digest of those bytes;
`read_model_file` verifies the digest before it unpickles the payload, so damaged bytes anywhere in
it (weights included) are refused instead of loading a generator that samples garbage.

Versions: 1 (first), 2 (adds ``training_temperature``; version-1 files take it from the system they
are loaded with), 3 (the checksummed envelope), 4 (adds ``system_record``). Files of versions 1 to 3
(the shipped demo model is version 1) still load, with the system given to them; versions 1 and 2
carry no checksum, which is logged at INFO level. Files are written atomically (temporary file,
then rename). Every damaged or malformed file (unreadable, checksum mismatch, missing or ill-typed
entries) is one ``ValueError`` line saying "corrupt or truncated".

Examples
--------
>>> FORMAT_VERSION, MAGIC
(4, 'openmm-bg generator')
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .._validation import one_line
from .._version import __version__
from ..flows import Domain, Standardize
from ..flows.builder import check_flow_arguments
from ..systems import MolecularSystem
from ..systems.record import decode_record, encode_record, system_from_record, system_record
from .fingerprint import system_fingerprint

__all__ = ["FORMAT_VERSION", "MAGIC", "model_payload", "write_model_file", "read_model_file", "stored_system"]

logger = logging.getLogger(__name__)

#: Version of the file format written by `BoltzmannGenerator.save`.
FORMAT_VERSION = 4
#: First entry of every model file.
MAGIC = "openmm-bg generator"
#: First version whose files carry a checksum of their payload.
CHECKSUM_VERSION = 3
#: First version whose files carry their system (``system_record``).
SYSTEM_RECORD_VERSION = 4

_FINGERPRINT_TYPES = {"n_atoms": int, "atoms": str, "masses": str, "constraints": str, "n_constraints": int,
                      "forces": str}


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
        "extra": dict(extra or {}), "system_record": encode_record(system_record(system)),
    }


def write_model_file(path: str | os.PathLike, payload: dict) -> Path:
    """Write ``payload`` (from `model_payload`) to ``path`` atomically, in the checksummed envelope of
    format 3 and later; returns the path. A failed write leaves any earlier file at ``path`` untouched."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    envelope = {"magic": MAGIC, "format_version": FORMAT_VERSION, "package_version": __version__,
                "sha256": hashlib.sha256(data).hexdigest(),
                "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(envelope, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


class _Corrupt(ValueError):
    """Internal: what is wrong with a file's content (turned into the one-line "corrupt" error)."""


def _version(value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise _Corrupt(f"format_version must be an integer >= 1, got {value!r}")
    return int(value)


def _unpack(outer: dict, version: int, path: Path) -> dict:
    """The payload of an envelope (format >= 3), its checksum verified; older files are their payload."""
    if version < CHECKSUM_VERSION:
        logger.info("%s: model file format %d carries no checksum of its contents; re-save it "
                    "(BoltzmannGenerator.save) to add one", path, version)
        return outer
    data, digest = outer.get("payload"), outer.get("sha256")
    if not (isinstance(data, torch.Tensor) and data.dtype == torch.uint8 and data.dim() == 1) \
            or not isinstance(digest, str):
        raise _Corrupt("the envelope has no payload bytes or no sha256 checksum")
    data = data.numpy().tobytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise _Corrupt(f"checksum mismatch (sha256 stored {digest[:12]}..., computed {actual[:12]}...): the "
                       "contents were damaged after saving")
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as err:  # the checksum matched, so this is a file written wrongly
        raise _Corrupt(f"the payload does not unpickle ({one_line(err)})") from err
    if not isinstance(payload, dict) or payload.get("magic") != MAGIC:
        raise _Corrupt("the payload is not a generator")
    if payload.get("format_version") != version:
        raise _Corrupt(f"the payload says format {payload.get('format_version')!r}, the envelope {version}")
    return payload


def _check_payload(payload: dict, version: int) -> None:
    """Types and presence of every entry `BoltzmannGenerator.load` uses; `_Corrupt` naming the first bad one."""
    required = ["system_name", "fingerprint", "config", "transform", "standardize", "flow_domain", "flow_state"]
    missing = [k for k in required if k not in payload]
    if missing:
        raise _Corrupt(f"missing entries {missing}")
    if not isinstance(payload["system_name"], str):
        raise _Corrupt(f"system_name must be a string, got {type(payload['system_name']).__name__}")
    fp = payload["fingerprint"]
    if not isinstance(fp, dict):
        raise _Corrupt(f"fingerprint must be a dict, got {type(fp).__name__}")
    for key, kind in _FINGERPRINT_TYPES.items():
        if not isinstance(fp.get(key), kind) or isinstance(fp.get(key), bool):
            raise _Corrupt(f"fingerprint[{key!r}] must be {kind.__name__}, got {fp.get(key)!r}")
    t0 = payload.get("training_temperature")
    if version >= 2 or t0 is not None:
        if (isinstance(t0, bool) or not isinstance(t0, numbers.Real) or not math.isfinite(t0) or not t0 > 0):
            raise _Corrupt(f"training_temperature must be a positive number of K, got {t0!r}")
    cfg = payload["config"]
    if not isinstance(cfg, dict):
        raise _Corrupt(f"config must be a dict, got {type(cfg).__name__}")
    for key in ("flow", "n_blocks", "hidden", "seed"):
        if key not in cfg:
            raise _Corrupt(f"config has no {key!r}")
    dtype = cfg.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise _Corrupt(f"config['dtype'] must be 'float32' or 'float64', got {dtype!r}")
    options = cfg.get("flow_options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        raise _Corrupt(f"config['flow_options'] must be a dict of keyword arguments, got {options!r}")
    try:
        check_flow_arguments(cfg["flow"], cfg["n_blocks"], cfg["hidden"], seed=cfg["seed"],
                             dtype=getattr(torch, dtype), **options)
    except (TypeError, ValueError) as err:
        raise _Corrupt(f"config: {one_line(err)}") from err
    transform = payload["transform"]
    if not isinstance(transform, nn.Module) or not isinstance(getattr(transform, "n_dof", None), int):
        raise _Corrupt(f"transform must be a coordinate transform module, got {type(transform).__name__}")
    if not isinstance(payload["standardize"], Standardize):
        raise _Corrupt(f"standardize must be a Standardize module, got {type(payload['standardize']).__name__}")
    domain = payload["flow_domain"]
    if not isinstance(domain, Domain) or domain.n_dof != transform.n_dof:
        raise _Corrupt(f"flow_domain must be a Domain of {transform.n_dof} dimensions, got {domain!r}")
    state = payload["flow_state"]
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise _Corrupt("flow_state must map parameter names to tensors")
    if not isinstance(payload.get("extra", {}), dict):
        raise _Corrupt(f"extra must be a dict, got {type(payload['extra']).__name__}")
    if version >= SYSTEM_RECORD_VERSION and not isinstance(payload.get("system_record"), bytes):
        raise _Corrupt(f"system_record must be bytes, got {type(payload.get('system_record')).__name__}")


def read_model_file(path: str | os.PathLike) -> dict:
    """Load and validate the payload of a saved generator (see `BoltzmannGenerator.load`).

    From format 3 on the payload's SHA-256 checksum is verified; files of formats 1 and 2 carry
    none (logged at INFO level). Every entry `BoltzmannGenerator.load` uses is checked for presence
    and type.

    Returns
    -------
    dict
        The payload (see the module docstring); ``training_temperature`` is None for format 1.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a model file; corrupt or truncated (unreadable, checksum mismatch, missing or ill-typed
        entries), in one line naming the file; or written by a newer file format.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {str(path)!r}")
    try:  # the envelope of format 3 holds plain data only: no code runs before the checksum is verified
        outer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # formats 1 and 2 pickle modules
        try:
            outer = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # truncated or foreign files raise many different errors
            raise ValueError(f"{path}: not a readable openmm-bg model file (corrupt or truncated?): "
                             f"{one_line(err)}") from err
    if not isinstance(outer, dict) or outer.get("magic") != MAGIC:
        raise ValueError(f"{path}: not an openmm-bg generator file")
    try:
        version = _version(outer.get("format_version"))
        if version > FORMAT_VERSION:
            raise ValueError(f"{path}: written by a newer openmm-bg (file format {version}, this "
                             f"version reads {FORMAT_VERSION}); upgrade openmm-bg")
        payload = _unpack(outer, version, path)
        _check_payload(payload, version)
    except _Corrupt as err:
        raise ValueError(f"{path}: not a readable openmm-bg model file (corrupt or truncated?): {err}") from None
    payload.setdefault("training_temperature", None)  # format 1: the system's
    payload.setdefault("extra", {})
    payload.setdefault("system_record", None)  # formats 1 to 3: the system is given to load
    return payload


def stored_system(payload: dict, path: str | os.PathLike = "the model file") -> MolecularSystem:
    """The system a model file of format 4 or later carries (``payload`` from `read_model_file`).

    Raises
    ------
    ValueError
        For a file of format 1 to 3 (no stored system: give the system), or a record that does not
        rebuild (corrupt).
    """
    data = payload.get("system_record")
    if data is None:
        raise ValueError(f"{path} (model file format {payload.get('format_version')}) does not carry its system; "
                         f"pass the system it was trained for (BoltzmannGenerator.load(path, system)), or re-save "
                         f"it with this version (format {FORMAT_VERSION} stores the system)")
    try:
        return system_from_record(decode_record(data))
    except ValueError:
        raise
    except Exception as err:  # damaged JSON, XML or topology: the checksum matched, so written wrongly
        raise ValueError(f"{path}: not a readable openmm-bg model file (corrupt or truncated?): its stored "
                         f"system does not rebuild ({one_line(err)})") from err
