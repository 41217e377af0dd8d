"""`CartesianTransform`: whitened Cartesian coordinates of the free dimensions.

For systems without a bond graph or with external potentials (toy and particle systems) the
coordinates are the free Cartesian components (``free_dims``; 2D systems drop the confined z), whitened
by a full-rank linear map fitted on training frames. No rigid-body removal. ``forward`` sets the
confined components to 0; its log-det is that of the free components only,
``log|det d(x_free)/dy| = sum log s`` (``s`` the whitening scales).

Examples
--------
>>> import torch, openmm_bg.systems as bgs
>>> mb = bgs.load("mueller_brown")
>>> t = CartesianTransform.from_system(mb, torch.randn(100, 1, 3))
>>> t.n_dof
2
>>> x, ld = t.forward(torch.zeros(4, 2))
>>> x.shape, float(x[0, 0, 2])
(torch.Size([4, 1, 3]), 0.0)
"""

from __future__ import annotations

import numpy as np
import torch

from ..geometry import as_tensor
from .core import Whitening
from .dims import DimInfo

__all__ = ["CartesianTransform"]


class CartesianTransform(torch.nn.Module):
    """Positions ``[batch, n_atoms, 3]`` <-> whitened free Cartesian coordinates ``[batch, n_dof]``.

    Parameters
    ----------
    n_atoms : int
    data : array-like, optional
        Training frames ``[n_frames, n_atoms, 3]`` (nm) to fit the whitening; ``None`` gives the
        identity map (y = free coordinates in nm).
    free_dims : numpy.ndarray, optional
        ``[n_atoms, 3]`` bool mask of free components; ``None`` means all.
    ridge : float
        Regularisation of the whitening (see `Whitening`).

    Attributes
    ----------
    n_dof : int
        Number of free components.
    dims : DimInfo
        All dimensions are ``"cartesian"`` (unbounded, not circular).

    Examples
    --------
    >>> t = CartesianTransform(2, torch.randn(50, 2, 3), free_dims=[[True, True, False]] * 2)
    >>> y, log_det = t.inverse(torch.randn(3, 2, 3))
    >>> y.shape
    torch.Size([3, 4])
    """

    def __init__(self, n_atoms: int, data=None, free_dims: np.ndarray | None = None, ridge: float = 1e-4):
        super().__init__()
        self.n_atoms = int(n_atoms)
        mask = np.ones((self.n_atoms, 3), dtype=bool) if free_dims is None else \
            np.asarray(free_dims, dtype=bool)
        if mask.shape != (self.n_atoms, 3):
            raise ValueError(f"free_dims must have shape ({self.n_atoms}, 3), got {mask.shape}")
        flat = np.flatnonzero(mask.ravel())
        self.register_buffer("_free", torch.as_tensor(flat, dtype=torch.long), persistent=False)
        self.n_dof = len(flat)
        if data is None:
            self.whitening = Whitening.identity(self.n_dof)
        else:
            x = as_tensor(data, dtype=torch.float64).detach().cpu()
            x = x[None] if x.dim() == 2 else x
            if x.shape[1:] != (self.n_atoms, 3):
                raise ValueError(f"expected data [n_frames, {self.n_atoms}, 3] (nm), got {tuple(x.shape)}")
            self.whitening = Whitening(x.reshape(len(x), -1)[:, flat], ridge=ridge)
        comp = "xyz"
        self.dims = DimInfo.build(["cartesian"] * self.n_dof, [()] * self.n_dof,
                                  [f"whitened {comp[f % 3]}{f // 3}" for f in flat])

    #: Positions are absolute (external potentials): no rigid-body motion to carry (see `MixedTransform`).
    rotation_invariant = False

    @classmethod
    def from_system(cls, system, data=None, ridge: float = 1e-4) -> CartesianTransform:
        """Transform for a `MolecularSystem`, using its ``free_dims``; ``data`` as in the constructor."""
        return cls(system.n_atoms, data, free_dims=system.free_dims, ridge=ridge)

    @property
    def circular_mask(self) -> torch.Tensor:
        """``[n_dof]`` bool, all False."""
        return self.dims.circular_mask

    def in_domain(self, y: torch.Tensor) -> torch.Tensor:
        """``[batch]`` bool: all finite."""
        return self.dims.in_domain(y)

    def forward(self, y: torch.Tensor):
        """Whitened ``[batch, n_dof]`` -> positions ``[batch, n_atoms, 3]`` (nm, confined components 0).

        Returns ``(x, log_det)`` with ``log_det [batch]`` the log|det| of ``y -> x_free``.
        """
        if y.dim() != 2 or y.shape[1] != self.n_dof:
            raise ValueError(f"expected y of shape [batch, {self.n_dof}], got {tuple(y.shape)}")
        free, log_det = self.whitening.forward(y)
        x = y.new_zeros(y.shape[0], self.n_atoms * 3).index_copy(1, self._free.to(y.device), free)
        return x.reshape(-1, self.n_atoms, 3), log_det

    def _free_mask(self, like: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(self.n_atoms * 3, dtype=torch.bool, device=like.device)
        mask[self._free.to(like.device)] = True
        return mask.reshape(self.n_atoms, 3)

    def frame(self, x: torch.Tensor) -> torch.Tensor:
        """What ``y`` does not describe: the confined components of ``x`` ``[batch, n_atoms, 3]`` (free
        components 0), for `place`."""
        return torch.where(self._free_mask(x), torch.zeros_like(x), x)

    def place(self, x: torch.Tensor, frame: torch.Tensor) -> torch.Tensor:
        """Configurations ``[batch, n_atoms, 3]`` from ``forward`` with the confined components of ``frame``."""
        return torch.where(self._free_mask(x), x, frame.to(x))

    def inverse(self, x: torch.Tensor):
        """Positions ``[batch, n_atoms, 3]`` -> ``(y [batch, n_dof], log_det [batch])``; confined ignored."""
        if x.dim() != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"expected x of shape [batch, {self.n_atoms}, 3] (nm), got {tuple(x.shape)}")
        free = x.reshape(x.shape[0], -1)[:, self._free.to(x.device)]
        return self.whitening.inverse(free)
