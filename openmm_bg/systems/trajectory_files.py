"""Reading trajectory files completely, or saying clearly that they are damaged.

mdtraj decodes what it can of a damaged file: a DCD cut short loses its last frames with only a
note printed by the C reader, and a truncated HDF5 file fails with a long HDF5 traceback.
`read_trajectory` compares the frames read with what the file says it holds and refuses a
file that is incomplete:

- DCD: the header records the number of frames (``NSET``); fewer frames decoded -> `ValueError`
  with both numbers (a header of 0, left by some writers, cannot be checked);
- HDF5 (``.h5``, mdtraj's format): the stored ``coordinates`` array has one row per frame;
  a file HDF5 cannot open (truncated, or its writer killed before closing it) is refused with a
  one-line message;
- XTC, TRR and other formats have no frame count in their header: a file cut between two
  frames cannot be told from a shorter one; a file cut inside a frame fails to decode, and the
  message says how many frames are complete.

What the C readers print (the DCD reader's notes on every file) is captured and, where it is a
warning, turned into a `TrajectoryWarning` or into the refusal's message.

Examples
--------
>>> import tempfile, os
>>> from openmm_bg.systems import load
>>> ala = load("alanine_dipeptide")
>>> path = os.path.join(tempfile.mkdtemp(), "ala.dcd")
>>> ala.to_mdtraj().save(path)
>>> read_trajectory(path, ala.mdtraj_topology).n_frames
1
>>> dcd_header_frames(path)
1
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import mdtraj

from .data_checks import TrajectoryWarning

__all__ = ["read_trajectory", "dcd_header_frames", "hdf5_stored_frames", "TrajectoryFileError", "captured_c_output"]


class TrajectoryFileError(ValueError):
    """A trajectory file is damaged or incomplete (fewer frames decoded than it says it holds)."""


def dcd_header_frames(path) -> int | None:
    """Number of frames a DCD file's header records (``NSET``); None if the header is not DCD.

    Handles both byte orders and 32- and 64-bit record markers. 0 means the writer left the
    count unset.
    """
    with open(path, "rb") as fh:
        head = fh.read(24)
    for endian in "<>":
        for marker in (4, 8):
            if len(head) < marker + 8:
                continue
            first = struct.unpack(endian + ("i" if marker == 4 else "q"), head[:marker])[0]
            if first == 84 and head[marker:marker + 4] == b"CORD":
                return int(struct.unpack(endian + "i", head[marker + 4:marker + 8])[0])
    return None


def hdf5_stored_frames(path) -> int | None:
    """Rows of the ``coordinates`` array of an mdtraj HDF5 file; None if it has none.

    Raises `TrajectoryFileError` when HDF5 cannot open the file.
    """
    import tables

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with tables.open_file(str(path), "r") as h5:
                node = getattr(h5.root, "coordinates", None)
                return None if node is None else int(node.shape[0])
    except Exception as err:  # HDF5ExtError and friends, with a page of HDF5 internals
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TrajectoryFileError(
            f"{Path(path).name} is a damaged or incomplete HDF5 file ({Path(path).stat().st_size} bytes; HDF5: "
            f"{first}): a copy cut short, or written by a process killed before it closed the file. Copy it "
            "again or regenerate it; 'openmm-bg simulate' keeps a crash-safe DCD of every frame beside its "
            "output while it runs") from None


@contextmanager
def captured_c_output():
    """Collect what C code prints on file descriptors 1 and 2 (yields a list, filled on exit)."""
    lines: list[str] = []
    libc = ctypes.CDLL(None) if sys.platform != "win32" else None
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            if libc is not None:
                libc.fflush(None)
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def _c_warnings(lines: list[str]) -> str:
    """The DCD reader's warnings, without its notes on the file flavour."""
    text = " ".join(line.replace("dcdplugin)", "").strip() for line in lines
                    if "detected standard" not in line and "CHARMM format" not in line)
    return " ".join(text.split())


def read_trajectory(path, top, what: str = "") -> mdtraj.Trajectory:
    """Read all frames of a trajectory file, refusing files that decode only partly.

    Parameters
    ----------
    path : str or path
        ``.dcd``, ``.h5``, ``.xtc``, ``.pdb``, ... (mdtraj's formats, by suffix).
    top : mdtraj.Topology, str or None
        Topology for formats without one (ignored for ``.h5`` and ``.pdb``, which carry theirs).
    what : str
        What the file should hold, for messages (``"of alanine_dipeptide (22 atoms)"``).

    Returns
    -------
    mdtraj.Trajectory

    Raises
    ------
    TrajectoryFileError
        (a ``ValueError``) for a damaged or incomplete file, with the frame counts.
    ValueError
        For a file mdtraj cannot read as a trajectory of this topology.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    expected = None
    if suffix in (".h5", ".hdf5"):
        expected = hdf5_stored_frames(path)
    elif suffix == ".dcd":
        expected = dcd_header_frames(path)
    kwargs = {} if suffix in (".h5", ".hdf5", ".pdb") else {"top": top}
    printed: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if suffix == ".dcd":
                with captured_c_output() as printed:
                    traj = mdtraj.load(str(path), **kwargs)
            else:
                traj = mdtraj.load(str(path), **kwargs)
        except Exception as err:  # mdtraj raises many types for unreadable or mismatched files
            raise _read_error(path, err, _c_warnings(printed), what) from err
    note = _c_warnings(printed)
    if expected and traj.n_frames < expected:
        raise TrajectoryFileError(
            f"{path.name} is damaged or incomplete: it says it holds {expected} frames but only {traj.n_frames} "
            f"could be read ({path.stat().st_size} bytes){'; reader: ' + note if note else ''}. A copy cut "
            f"short, or a writer killed mid-file? Copy it again; to use the {traj.n_frames} complete frames "
            "anyway, load them with mdtraj.load and pass the Trajectory")
    if expected is not None and expected > 0 and traj.n_frames > expected:
        warnings.warn(f"{path.name}: the header records {expected} frames but {traj.n_frames} were read "
                      "(the writer did not update its header?)", TrajectoryWarning, stacklevel=3)
    elif note:
        warnings.warn(f"reading {path.name}: {note}", TrajectoryWarning, stacklevel=3)
    for w in caught:
        if "top= kwargs ignored" in str(w.message):
            continue
        warnings.warn(f"reading {path.name} (mdtraj): {w.message}", TrajectoryWarning, stacklevel=3)
    return traj


def _read_error(path: Path, err: Exception, note: str, what: str) -> ValueError:
    text = " ".join(str(err).split())[:300]
    if path.suffix.lower() in (".xtc", ".trr") and ("read error" in text.lower() or "xdr" in text.lower()):
        complete = _xtc_complete_frames(path) if path.suffix.lower() == ".xtc" else None
        where = f" after {complete} complete frames" if complete is not None else ""
        return TrajectoryFileError(
            f"{path.name} ends inside a frame{where} (damaged or cut short: {text}). {path.suffix.upper()[1:]} "
            "files have no frame count in their header, so a file cut exactly between frames cannot be "
            "detected; copy it again, or read the complete frames with mdtraj's XTCTrajectoryFile.read(n_frames=...)")
    return ValueError(f"could not read {path.name} as a trajectory{' ' + what if what else ''}: {text}"
                      f"{'; reader: ' + note if note else ''}")


def _xtc_complete_frames(path: Path) -> int | None:
    from mdtraj.formats import XTCTrajectoryFile

    try:
        with XTCTrajectoryFile(str(path)) as fh:
            return max(0, len(fh.offsets) - 1)
    except Exception:  # the index itself is unreadable: say nothing about counts
        return None
