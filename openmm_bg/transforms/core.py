"""Body-fixed frame of the Cartesian core and its whitening.

The frame (rigid-body removal, exact)
-------------------------------------
For core positions ``p_0 ... p_{m-1}`` (``m >= 3``) the frame has its origin at ``p_0``, its x axis
along ``p_1 - p_0`` and ``p_2`` in its xy plane with positive y. With rotation ``R`` (columns = frame
axes) and translation ``t = p_0``, the local coordinates ``q_a = R^T (p_a - t)`` are
``q_0 = 0``, ``q_1 = (r_1, 0, 0)``, ``q_2 = (x_2, y_2, 0)`` and ``q_a`` free for ``a >= 3``, so the
core has ``3 m - 6`` internal coordinates ``c = (r_1, x_2, y_2, q_3, ..., q_{m-1})`` with
``r_1 > 0, y_2 > 0``. The volume element is

    dp_0 ... dp_{m-1} = r_1^2 y_2 dt dR dc,

where ``dR`` is the Haar measure on SO(3) normalised so that at the identity the three generators
are unit-speed rotations ``x -> omega_k x x`` (total volume ``8 pi^2``; see `SO3_VOLUME`). So the map
``c -> p`` has log|det J| = ``2 log r_1 + log y_2`` in that measure.

Whitening
---------
`Whitening` is a full-rank affine map ``c -> (c - mu) V / s`` fitted on training frames: ``V`` the
eigenvectors and ``s^2`` the (ridge-regularised) eigenvalues of the covariance of ``c``. All
``3 m - 6`` directions are kept.

Examples
--------
>>> import torch
>>> p = torch.randn(4, 5, 3, dtype=torch.float64)
>>> c, rot, trans, ld = frame_coordinates(p)
>>> q, ld2 = frame_positions(c, 5)
>>> bool(torch.allclose(q @ rot.transpose(-1, -2) + trans[:, None], p)), bool(torch.allclose(ld, -ld2))
(True, True)
"""

from __future__ import annotations

import math
import warnings

import torch

__all__ = ["frame_coordinates", "frame_positions", "Whitening", "Float64Buffers", "SO3_VOLUME"]

#: Volume of SO(3) in the Haar measure used for the rotation part, ``8 pi^2``.
SO3_VOLUME = 8.0 * math.pi**2


def frame_coordinates(p: torch.Tensor):
    """Core positions -> (internal core coordinates, rotation, translation, log|det| of p -> c).

    Parameters
    ----------
    p : torch.Tensor
        ``[batch, m, 3]`` core positions (nm), ``m >= 3``.

    Returns
    -------
    c : torch.Tensor
        ``[batch, 3 m - 6]`` (nm).
    rotation : torch.Tensor
        ``[batch, 3, 3]``, columns are the frame axes (``x = q R^T + t``).
    translation : torch.Tensor
        ``[batch, 3]`` = ``p_0`` (nm).
    log_det : torch.Tensor
        ``[batch]``, ``-(2 log r_1 + log y_2)`` (the log|det| of the inverse map p -> (c, R, t)).
        Collinear frame atoms give NaN/inf.
    """
    t = p[:, 0]
    d = p - t[:, None]
    r1 = torch.linalg.norm(d[:, 1], dim=-1)
    e1 = d[:, 1] / r1[:, None]
    u = d[:, 2]
    x2 = (u * e1).sum(-1)
    perp = u - x2[:, None] * e1
    y2 = torch.linalg.norm(perp, dim=-1)
    e2 = perp / y2[:, None]
    e3 = torch.linalg.cross(e1, e2)
    rot = torch.stack([e1, e2, e3], dim=-1)
    q = d[:, 3:] @ rot
    c = torch.cat([r1[:, None], x2[:, None], y2[:, None], q.reshape(len(p), -1)], dim=1)
    return c, rot, t, -(2.0 * torch.log(r1) + torch.log(y2))


def frame_positions(c: torch.Tensor, n_core: int):
    """Internal core coordinates -> core positions in the body frame, and log|det| of c -> p.

    Parameters
    ----------
    c : torch.Tensor
        ``[batch, 3 n_core - 6]`` (nm).
    n_core : int

    Returns
    -------
    q : torch.Tensor
        ``[batch, n_core, 3]`` positions in the body frame (nm).
    log_det : torch.Tensor
        ``[batch]``, ``2 log r_1 + log y_2``; NaN where ``r_1 < 0`` or ``y_2 < 0`` (outside the
        domain), -inf where zero.
    """
    b = c.shape[0]
    zero = c.new_zeros(b, 1)
    q0 = c.new_zeros(b, 1, 3)
    q1 = torch.cat([c[:, :1], zero, zero], dim=1)[:, None]
    q2 = torch.cat([c[:, 1:3], zero], dim=1)[:, None]
    q = torch.cat([q0, q1, q2, c[:, 3:].reshape(b, n_core - 3, 3)], dim=1)
    return q, 2.0 * torch.log(c[:, 0]) + torch.log(c[:, 2])


class Float64Buffers(torch.nn.Module):
    """A module whose float buffers named in ``_float64_buffers`` stay float64.

    ``.to(device)`` moves them; ``.float()`` / ``.half()`` / ``.to(dtype)`` leave them float64
    (unrounded), since the maps cast them to the dtype of their input on the fly.
    """

    _float64_buffers: tuple = ()

    def _apply(self, fn, *args, **kwargs):
        saved = {name: getattr(self, name) for name in self._float64_buffers}
        super()._apply(fn, *args, **kwargs)
        for name, old in saved.items():
            new = getattr(self, name)
            if new.dtype != torch.float64 and new.device.type != "mps":
                setattr(self, name, old.to(device=new.device, dtype=torch.float64))
        return self


class Whitening(Float64Buffers):
    """Full-rank whitening ``w = (c - mu) V / s`` of ``d`` coordinates, fitted on data.

    Parameters
    ----------
    data : torch.Tensor
        ``[n_frames, d]`` training values (any unit; nm for the core).
    ridge : float
        Added to the covariance eigenvalues as ``ridge * mean eigenvalue`` (plus a tiny absolute
        floor) so the map stays invertible when ``n_frames <= d`` or directions do not fluctuate.

    Attributes
    ----------
    mean : torch.Tensor
        ``[d]`` float64.
    vectors : torch.Tensor
        ``[d, d]`` float64 orthogonal.
    scale : torch.Tensor
        ``[d]`` float64 standard deviations (same unit as the data).

    Examples
    --------
    >>> import torch
    >>> w = Whitening(torch.randn(100, 3, dtype=torch.float64))
    >>> z, ld = w.inverse(torch.zeros(2, 3))
    >>> c, ld2 = w.forward(z)
    >>> bool(torch.allclose(ld + ld2, torch.zeros(2)))
    True
    """

    _float64_buffers = ("mean", "vectors", "scale")

    def __init__(self, data: torch.Tensor, ridge: float = 1e-4):
        super().__init__()
        data = torch.as_tensor(data, dtype=torch.float64).detach().cpu()
        n, d = data.shape
        if n < 2:
            raise ValueError(f"whitening needs at least 2 training frames, got {n}")
        if not torch.isfinite(data).all():
            raise ValueError("training data for the whitening contain NaN or inf")
        if n <= d:
            warnings.warn(f"whitening {d} coordinates from only {n} frames: the covariance is singular "
                          f"and regularised (ridge={ridge}); pass more than {d} frames for a good fit",
                          stacklevel=3)
        mean = data.mean(0)
        cov = (data - mean).T @ (data - mean) / (n - 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0.0) + ridge * evals.clamp_min(0.0).mean() + 1e-12
        self.register_buffer("mean", mean)
        self.register_buffer("vectors", evecs)
        self.register_buffer("scale", evals.sqrt())

    @classmethod
    def identity(cls, dim: int) -> Whitening:
        """The identity map on ``dim`` coordinates (zero mean, unit scale)."""
        w = cls.__new__(cls)
        torch.nn.Module.__init__(w)
        w.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        w.register_buffer("vectors", torch.eye(dim, dtype=torch.float64))
        w.register_buffer("scale", torch.ones(dim, dtype=torch.float64))
        return w

    @property
    def dim(self) -> int:
        """Number of coordinates ``d``."""
        return len(self.mean)

    def log_det_forward(self) -> torch.Tensor:
        """log|det| of ``w -> c`` (a float64 scalar), ``sum log s``."""
        return torch.log(self.scale).sum()

    def forward(self, w: torch.Tensor):
        """Whitened ``[batch, d]`` -> coordinates ``[batch, d]``; returns ``(c, log_det [batch])``."""
        s, v, mu = (b.to(device=w.device, dtype=w.dtype) for b in (self.scale, self.vectors, self.mean))
        c = (w * s) @ v.T + mu
        return c, self.log_det_forward().to(device=w.device, dtype=w.dtype).expand(w.shape[0])

    def inverse(self, c: torch.Tensor):
        """Coordinates ``[batch, d]`` -> whitened ``[batch, d]``; returns ``(w, log_det [batch])``."""
        s, v, mu = (b.to(device=c.device, dtype=c.dtype) for b in (self.scale, self.vectors, self.mean))
        w = ((c - mu) @ v) / s
        return w, -self.log_det_forward().to(device=c.device, dtype=c.dtype).expand(c.shape[0])
