"""Checks of output paths before any work: the file or folder can be written, else one `ValueError`.

A run that fails only when it writes its result, after minutes of work, loses that work. These
checks run first: the folder exists (or, for an output folder, can be created), it accepts a new
file (tested by creating and removing an empty temporary file, which also catches read-only
file systems and, for root, folders whose permissions alone would not stop it), and the path is
not a folder where a file is expected or a file where a folder is expected.

Examples
--------
>>> import tempfile
>>> folder = tempfile.mkdtemp()
>>> output_file("output", f"{folder}/model.bg").name
'model.bg'
>>> output_file("output", folder)  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: output ... is a folder; give a file name
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["output_file", "output_folder", "write_text_atomic"]


def _accepts_files(name: str, folder: Path) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".openmm-bg-write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"{name} folder {str(folder)!r} is not writable ({err.strerror or err}); "
                         "choose another location") from None


def output_file(name: str, path: str | os.PathLike) -> Path:
    """``path`` as a `Path` after checking that a file can be written there (nothing is created).

    Parameters
    ----------
    name : str
        The argument's name for the message (``"output"``, ``"--checkpoint"``).
    path : str or path-like
        File to be written; an existing file is allowed (it will be replaced).

    Raises
    ------
    ValueError
        ``path`` is a folder, its folder does not exist, or the folder is not writable.
    """
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{name} {str(p)!r} is a folder; give a file name")
    folder = p.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ValueError(f"{name} folder {str(folder)!r} {what}; create it first")
    _accepts_files(name, folder)
    return p


def output_folder(name: str, path: str | os.PathLike, create: bool = False) -> Path:
    """``path`` as a `Path` after checking that it is, or can be made, a folder that accepts files.

    Parameters
    ----------
    name : str
        The argument's name for the message (``"--output"``).
    path : str or path-like
        Output folder; missing folders (and parents) are allowed.
    create : bool
        Create it now (default: only check, so that a command failing later leaves nothing behind).

    Raises
    ------
    ValueError
        ``path`` or a parent exists and is not a folder, or the nearest existing folder does not
        accept files (or ``path`` cannot be created).

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> output_folder("--output", f"{folder}/results/run1").exists()
    False
    """
    p = Path(path)
    existing = p
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "" if existing == p else f" (its parent {str(existing)!r} is a file)"
        raise ValueError(f"{name} {str(p)!r} is not a folder{where}; give a folder name (it is created "
                         "if missing)")
    _accepts_files(name, existing)
    if create:
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ValueError(f"{name} folder {str(p)!r} cannot be created ({err.strerror or err}); choose "
                             "another location") from None
    return p


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically: a temporary file beside it, then a rename.

    A reader (or a run killed mid-write) sees the old file or the new one, never half of one.

    Examples
    --------
    >>> import tempfile
    >>> p = write_text_atomic(f"{tempfile.mkdtemp()}/numbers.json", "{}\\n")
    >>> p.read_text()
    '{}\\n'
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
