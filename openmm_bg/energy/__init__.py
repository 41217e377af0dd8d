"""Energy layer: reduced energies u(x) = U(x)/kT of OpenMM systems as batched torch ops.

Public names (``__all__``; what users may rely on):

- `OpenMMEnergy`: ``[batch, n_atoms, 3]`` positions (nm) -> ``[batch]`` reduced energies (kT,
  float64), differentiable (gradient ``-F/kT``), evaluated by OpenMM contexts in-process or in a
  pool of worker processes, or by the batched torch force field (``backend="torch"``).
- `energy_for`: the shared, cached `OpenMMEnergy` of a system at a temperature (one set of
  contexts per system serves every temperature; the platform is timed once); `close_energies`
  closes the cached ones (done at exit).
- `select_platform`, `available_platforms`, `PlatformChoice`: OpenMM platform choice by timing.
- `WorkerError`, `PeriodicSystemError`, `TorchBackendError`: errors raised by this layer.

The numpy-level evaluators behind `OpenMMEnergy` (`openmm_bg.energy.context.ContextEvaluator`,
`openmm_bg.energy.workers.WorkerPool`) are internals, importable from their modules.

With ``n_workers > 1`` worker processes are started with the *spawn* method: protect a script's
entry point with ``if __name__ == "__main__":`` and close the energy (``close()`` or ``with``)
when done; a forgotten pool is stopped at interpreter exit.

Failed evaluations (non-finite input, OpenMM error) give ``+inf`` energy and zero force for
that configuration only.

Examples
--------
>>> import torch
>>> from openmm_bg.systems import load
>>> from openmm_bg.energy import energy_for
>>> ala = load("alanine_dipeptide")
>>> energy = energy_for(ala, platform="Reference")
>>> u = energy(torch.tensor(ala.positions[None]))
>>> u.dtype, u.shape
(torch.float64, torch.Size([1]))
>>> bool(torch.isfinite(u).all())
True
"""

from .context import ContextEvaluator  # noqa: F401 - internal, kept importable from here
from .openmm_energy import OpenMMEnergy, PeriodicSystemError
from .platforms import PlatformChoice, available_platforms, select_platform
from .service import close_energies, energy_for
from .torch_backend import TorchBackendError
from .workers import WorkerError, WorkerPool  # noqa: F401 - WorkerPool internal, kept importable

__all__ = ["OpenMMEnergy", "energy_for", "close_energies", "PeriodicSystemError", "WorkerError",
           "TorchBackendError", "select_platform", "available_platforms", "PlatformChoice"]


def __getattr__(name: str):
    # compatibility: the lin-log cut is a training concern and moved to openmm_bg.training
    if name in ("linlogcut", "LinLogCut"):
        from ..training import regularization

        return getattr(regularization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
