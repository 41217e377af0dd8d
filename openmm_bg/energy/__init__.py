"""Energy layer: reduced energies u(x) = U(x)/kT of OpenMM systems as batched torch ops.

Public names:

- `OpenMMEnergy`: ``[batch, n_atoms, 3]`` positions (nm) -> ``[batch]`` reduced energies (kT,
  float64), differentiable (gradient ``-F/kT``), evaluated by OpenMM contexts in-process or in a
  pool of worker processes, or by the batched torch force field (``backend="torch"``).
- `select_platform`, `available_platforms`: OpenMM platform choice by timing.
- `ContextEvaluator`, `WorkerPool`: the numpy-level evaluators behind `OpenMMEnergy`.
- `WorkerError`, `PeriodicSystemError`, `TorchBackendError`: errors raised by this layer.

With ``n_workers > 1`` worker processes are started with the *spawn* method: protect a script's
entry point with ``if __name__ == "__main__":`` and close the energy (``close()`` or ``with``)
when done; a forgotten pool is stopped at interpreter exit.

Failed evaluations (non-finite input, OpenMM error) give ``+inf`` energy and zero force for
that configuration only.

Examples
--------
>>> import torch
>>> from openmm_bg.systems import load
>>> from openmm_bg.energy import OpenMMEnergy
>>> ala = load("alanine_dipeptide")
>>> energy = OpenMMEnergy(ala, platform="Reference")
>>> u = energy(torch.tensor(ala.positions[None]))
>>> u.dtype, u.shape
(torch.float64, torch.Size([1]))
>>> bool(torch.isfinite(u).all())
True
"""

from .context import ContextEvaluator
from .openmm_energy import OpenMMEnergy, PeriodicSystemError
from .platforms import PlatformChoice, available_platforms, select_platform
from .torch_backend import TorchBackendError
from .workers import WorkerError, WorkerPool

__all__ = ["OpenMMEnergy", "PeriodicSystemError", "select_platform",
           "available_platforms", "PlatformChoice", "ContextEvaluator", "WorkerPool", "WorkerError",
           "TorchBackendError"]


def __getattr__(name: str):
    # compatibility: the lin-log cut is a training concern and moved to openmm_bg.training
    if name in ("linlogcut", "LinLogCut"):
        from ..training import regularization

        return getattr(regularization, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
