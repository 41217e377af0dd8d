"""Crash-safe output of a running simulation: frames on disk as they come, and a checkpoint to continue.

While `openmm_bg.simulate` runs with ``output="md.h5"`` it keeps two files beside the output:

- ``md.h5.partial.dcd``: every frame so far, written as it is made. A DCD file is a header and
  raw frames, written without buffering, with the frame count in its header updated after each
  frame: after ``kill -9`` the file holds every frame written before the kill, and any DCD
  reader (mdtraj, VMD, ``check_trajectory``) reads them;
- ``md.h5.partial.chk``: an OpenMM checkpoint (positions, velocities, the integrator's random
  state) with the number of frames it follows and the run's settings, replaced atomically
  every few seconds.

``simulate(..., resume=True)`` (``openmm-bg simulate ... --resume``) continues from the
checkpoint: the frames it covers are kept, later ones are made again. On the platform the
checkpoint was made on, the result is the one an uninterrupted run would have given. When the
run completes, the requested file is written (to a temporary name, then renamed) and both
partial files are removed.

Examples
--------
>>> import tempfile, os
>>> run = PartialRun(os.path.join(tempfile.mkdtemp(), "md.h5"))
>>> os.path.basename(run.frames_path), run.exists()
('md.h5.partial.dcd', False)
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["PartialRun", "CHECKPOINT_OVERHEAD"]

#: Checkpoints are written so that they take at most about this share of the run time.
CHECKPOINT_OVERHEAD = 0.02
_MAX_CHECKPOINT_INTERVAL = 60.0  # s
_FORMAT = "openmm-bg simulate checkpoint 1"


def fingerprint(*arrays_or_text) -> str:
    """Short hash of strings and arrays (the System XML, start positions) to recognise a run."""
    h = hashlib.sha256()
    for item in arrays_or_text:
        h.update(item.encode() if isinstance(item, str) else np.ascontiguousarray(item).tobytes())
    return h.hexdigest()[:16]


class PartialRun:
    """The partial files of one output path: frames (DCD) and the checkpoint to continue from.

    Parameters
    ----------
    output : path
        The file the finished run is written to (any trajectory format).
    """

    def __init__(self, output):
        self.output = Path(output)
        self.frames_path = self.output.with_name(self.output.name + ".partial.dcd")
        self.checkpoint_path = self.output.with_name(self.output.name + ".partial.chk")
        self._writer = None
        self._last_checkpoint = 0.0
        self._checkpoint_cost = 0.0

    # ------------------------------------------------------------------ state on disk
    def exists(self) -> bool:
        """True if a stopped run left a checkpoint for this output."""
        return self.checkpoint_path.is_file()

    def describe(self) -> str:
        """One line on what a stopped run left behind (for messages)."""
        frames = self.frames_on_disk()
        return (f"a stopped run of {self.output.name} left {frames} frames in {self.frames_path} and a checkpoint "
                f"in {self.checkpoint_path.name}")

    def frames_on_disk(self) -> int:
        """Frames in the partial DCD (0 if there is none)."""
        from ..systems.trajectory_files import dcd_header_frames

        if not self.frames_path.is_file():
            return 0
        return dcd_header_frames(self.frames_path) or 0

    def load(self) -> dict:
        """The checkpoint's record: ``frames``, ``settings`` and ``state`` (OpenMM checkpoint bytes)."""
        try:
            record = json.loads(self.checkpoint_path.read_text())
            if record.get("format") != _FORMAT:
                raise ValueError(f"unknown format {record.get('format')!r}")
            record["state"] = base64.b64decode(record["state"])
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"cannot continue from {self.checkpoint_path}: {err}; delete it and "
                             f"{self.frames_path.name} to start over") from err
        return record

    def kept_frames(self, n_frames: int, n_atoms: int) -> np.ndarray:
        """The first ``n_frames`` frames of the partial DCD, ``[n_frames, n_atoms, 3]`` float32 nm."""
        from mdtraj.formats import DCDTrajectoryFile

        if n_frames == 0:
            return np.zeros((0, n_atoms, 3), dtype=np.float32)
        on_disk = self.frames_on_disk()
        if on_disk < n_frames:
            raise ValueError(f"cannot continue: {self.frames_path} holds {on_disk} frames but the checkpoint "
                             f"follows {n_frames}; delete {self.frames_path.name} and {self.checkpoint_path.name} "
                             "to start over")
        from ..systems.trajectory_files import captured_c_output

        with captured_c_output(), DCDTrajectoryFile(str(self.frames_path), "r") as fh:
            xyz = fh.read(n_frames=n_frames)[0]
        if xyz.shape != (n_frames, n_atoms, 3):
            raise ValueError(f"cannot continue: {self.frames_path} holds frames of shape {xyz.shape[1:]}, "
                             f"not ({n_atoms}, 3)")
        return (xyz / 10.0).astype(np.float32)  # DCD stores Angstrom

    # ------------------------------------------------------------------ writing
    def start(self, kept: np.ndarray) -> None:
        """Open the partial DCD holding the ``kept`` frames (``[k, n_atoms, 3]`` nm) and ready for more."""
        from mdtraj.formats import DCDTrajectoryFile

        if len(kept) == 0:  # the writer creates the file with its first frame
            self._writer = DCDTrajectoryFile(str(self.frames_path), "w")
            return
        fresh = self.frames_path.with_name(self.frames_path.name + ".new.dcd")
        writer = DCDTrajectoryFile(str(fresh), "w")
        writer.write(10.0 * kept)
        os.replace(fresh, self.frames_path)  # POSIX: the open file follows the rename
        self._writer = writer

    def write(self, frame: np.ndarray) -> None:
        """Append one frame ``[n_atoms, 3]`` (nm); on disk when this returns."""
        self._writer.write(10.0 * np.asarray(frame, dtype=np.float32)[None])

    def checkpoint_due(self) -> bool:
        """True when a checkpoint is due (their cost kept to `CHECKPOINT_OVERHEAD` of the run)."""
        since = time.monotonic() - self._last_checkpoint
        return since >= min(_MAX_CHECKPOINT_INTERVAL, self._checkpoint_cost / CHECKPOINT_OVERHEAD)

    def save_checkpoint(self, state: bytes, frames: int, settings: dict) -> None:
        """Replace the checkpoint atomically: ``state`` follows ``frames`` frames of a run with ``settings``."""
        started = time.monotonic()
        record = {"format": _FORMAT, "frames": int(frames), "settings": settings,
                  "state": base64.b64encode(state).decode()}
        tmp = self.checkpoint_path.with_name(self.checkpoint_path.name + ".new")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.checkpoint_path)
        self._last_checkpoint = time.monotonic()
        self._checkpoint_cost = self._last_checkpoint - started

    def close(self) -> None:
        """Close the partial DCD (the files stay: the run can be continued)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self, traj) -> None:
        """Write the finished ``traj`` to the output (atomically) and remove the partial files."""
        self.close()
        writing = self.output.with_name(f"{self.output.stem}.writing{self.output.suffix}")
        traj.save(str(writing))
        os.replace(writing, self.output)
        for path in (self.checkpoint_path, self.frames_path):
            path.unlink(missing_ok=True)
