"""Rigid-body helpers: uniform random rotations, applying and re-drawing orientations.

Rotations are ``[batch, 3, 3]`` proper orthogonal matrices acting on column vectors; positions are
rows, so a rigid motion is ``x -> x R^T + t``. `random_rotation` samples the Haar (uniform) measure
on SO(3), whose total volume in the normalisation used by the transforms is `SO3_VOLUME` = 8 pi^2.

Examples
--------
>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> r = random_rotation(5, generator=g, dtype=torch.float64)
>>> bool(torch.allclose(r @ r.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand(5, 3, 3)))
True
"""

from __future__ import annotations

import torch

from .core import SO3_VOLUME

__all__ = ["random_rotation", "apply_rigid", "randomize_orientation", "SO3_VOLUME"]


def random_rotation(batch: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """Uniformly distributed (Haar) rotation matrices, ``[batch, 3, 3]``.

    Drawn from normalised 4D Gaussian quaternions (uniform on S^3, the double cover of SO(3)).

    Parameters
    ----------
    batch : int
    generator : torch.Generator, optional
        For reproducibility; must live on ``device`` (default CPU).
    dtype, device
        Of the result.

    Returns
    -------
    torch.Tensor
        ``[batch, 3, 3]`` proper rotations (det +1).

    Examples
    --------
    >>> random_rotation(2, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([2, 3, 3])
    """
    gen_device = generator.device if generator is not None else device
    q = torch.randn(batch, 4, generator=generator, dtype=torch.float64, device=gen_device)
    q = q / torch.linalg.norm(q, dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    rot = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(batch, 3, 3)
    return rot.to(dtype=dtype, device=device if device is not None else gen_device)


def apply_rigid(x: torch.Tensor, rotation: torch.Tensor | None = None,
                translation: torch.Tensor | None = None) -> torch.Tensor:
    """Apply ``x -> x R^T + t`` to ``[batch, n_atoms, 3]`` positions (nm).

    Parameters
    ----------
    x : torch.Tensor
        ``[batch, n_atoms, 3]``.
    rotation : torch.Tensor, optional
        ``[batch, 3, 3]`` or ``[3, 3]``.
    translation : torch.Tensor, optional
        ``[batch, 3]`` or ``[3]`` (nm).

    Returns
    -------
    torch.Tensor
        ``[batch, n_atoms, 3]`` (nm).

    Examples
    --------
    >>> x = torch.tensor([[[1.0, 0.0, 0.0]]])
    >>> rz = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    >>> apply_rigid(x, rz, torch.tensor([0.0, 0.0, 1.0])).tolist()
    [[[0.0, 1.0, 1.0]]]
    """
    if rotation is not None:
        x = x @ rotation.to(x).transpose(-1, -2)
    if translation is not None:
        t = translation.to(x)
        x = x + (t[:, None] if t.dim() == 2 else t)
    return x


def randomize_orientation(x: torch.Tensor, generator: torch.Generator | None = None,
                          masses: torch.Tensor | None = None, center: torch.Tensor | None = None):
    """Rotate each configuration uniformly at random about its centre (of mass), then move it.

    The proposal an MCMC move needs: the rotation is Haar-uniform and the centre (of mass) is kept or
    set to ``center``.

    Parameters
    ----------
    x : torch.Tensor
        ``[batch, n_atoms, 3]`` positions (nm).
    generator : torch.Generator, optional
    masses : torch.Tensor, optional
        ``[n_atoms]`` (dalton); default equal weights (geometric centre).
    center : torch.Tensor, optional
        ``[batch, 3]`` or ``[3]`` new centre (nm); default the old centre.

    Returns
    -------
    x_new : torch.Tensor
        ``[batch, n_atoms, 3]``.
    rotation : torch.Tensor
        ``[batch, 3, 3]`` the rotation applied.

    Examples
    --------
    >>> x = torch.randn(2, 5, 3, dtype=torch.float64)
    >>> x_new, rot = randomize_orientation(x, generator=torch.Generator().manual_seed(1))
    >>> bool(torch.allclose(x_new.mean(1), x.mean(1)))
    True
    """
    w = torch.ones(x.shape[1], dtype=x.dtype, device=x.device) if masses is None else \
        torch.as_tensor(masses).to(x)
    com = (x * w[:, None]).sum(1) / w.sum()
    rot = random_rotation(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
    new_center = com if center is None else torch.as_tensor(center).to(x).expand_as(com)
    return apply_rigid(x - com[:, None], rot, new_center), rot
