"""The ``device=`` choice: where flows and energies run (``"cpu"`` by default, ``"cuda"`` / ``"cuda:N"``,
``"auto"``).

One code path for CPU and GPU: `resolve_device` checks the user's choice once, before any work, and
every layer receives the resulting ``torch.device``. The energy layer maps it to its backends: the
torch force field runs on that device; OpenMM contexts use the ``CUDA`` platform (``DeviceIndex`` =
the CUDA index) when the device is a GPU and no platform was named (`openmm_platform_for`), the
platform chosen by timing otherwise. ``"auto"`` is the current GPU where both torch and OpenMM can
use one (torch sees a CUDA device and OpenMM has its ``CUDA`` platform), else the CPU.

Examples
--------
>>> resolve_device(None)
device(type='cpu')
>>> resolve_device("cpu")
device(type='cpu')
>>> resolve_device("gpu")
Traceback (most recent call last):
...
ValueError: device must be 'cpu', 'cuda' or 'cuda:N' (a torch device), or 'auto', got 'gpu'
>>> resolve_device("auto").type in ("cpu", "cuda")
True
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device", "openmm_platform_for"]

#: The ``device`` value that picks the GPU where torch and OpenMM can both use one, else the CPU.
AUTO = "auto"


def _auto() -> torch.device:
    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:  # this module is also imported without OpenMM (benchmarks/gpu_check.py on a bare GPU machine)
        from .platforms import available_platforms
    except ImportError:
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device()) if "CUDA" in available_platforms() else torch.device("cpu")


def resolve_device(device: str | torch.device | None, argument: str = "device") -> torch.device:
    """The checked ``torch.device`` for a ``device=`` argument.

    Parameters
    ----------
    device : str, torch.device or None
        ``None`` or ``"cpu"`` (the default everywhere), ``"cuda"`` (the current GPU), ``"cuda:N"``, or
        ``"auto"``: the current GPU where torch sees one and OpenMM has its ``CUDA`` platform, else the
        CPU.
    argument : str
        The argument's name, for the error message.

    Returns
    -------
    torch.device
        ``cpu`` or ``cuda:N`` (``"cuda"`` resolves to the current CUDA device's index).

    Raises
    ------
    ValueError
        For any other string or device type, a CUDA device when torch has no CUDA (not compiled with
        it or no GPU visible), or a CUDA index beyond the visible GPUs; the message says what to pass.

    Examples
    --------
    >>> resolve_device(torch.device("cpu"))
    device(type='cpu')
    """
    if device is None:
        return torch.device("cpu")
    if not isinstance(device, (str, torch.device)):
        raise ValueError(f"{argument} must be a string or torch.device ('cpu', 'cuda', 'cuda:N', 'auto'), got "
                         f"{type(device).__name__}")
    if isinstance(device, str) and device.strip().lower() == AUTO:
        return _auto()
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"{argument} must be 'cpu', 'cuda' or 'cuda:N' (a torch device), or 'auto', got "
                         f"{str(device)!r}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{argument}={str(device)!r}: torch sees no CUDA GPU here (not compiled with CUDA, or "
                         f"no device visible); use {argument}='cpu' (or '{AUTO}': a GPU only where there is one)")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"{argument}={str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) are "
                         f"visible (cuda:0 ... cuda:{torch.cuda.device_count() - 1})")
    return torch.device("cuda", index)


def openmm_platform_for(device: torch.device) -> tuple[str, dict[str, str]] | None:
    """The OpenMM platform and properties that put contexts on ``device``.

    Parameters
    ----------
    device : torch.device
        A device from `resolve_device`.

    Returns
    -------
    tuple of (str, dict) or None
        ``("CUDA", {"DeviceIndex": "N"})`` for ``cuda:N``; ``None`` for the CPU (the platform is then
        chosen by timing, as without a device).

    Examples
    --------
    >>> openmm_platform_for(torch.device("cpu")) is None
    True
    >>> openmm_platform_for(torch.device("cuda", 1))
    ('CUDA', {'DeviceIndex': '1'})
    """
    if device.type != "cuda":
        return None
    return "CUDA", {"DeviceIndex": str(0 if device.index is None else device.index)}
