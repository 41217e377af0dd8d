"""The invertible-transform protocol, composition and permutation.

Direction convention (``docs/design.md``, "Directions and log-determinants"): ``forward`` maps
latent ``z`` to output ``y`` (the configuration side), ``inverse`` maps ``y`` to ``z``. Both take
``[batch, n_dof]`` and return ``(output, log_det)``, where ``log_det`` ``[batch]`` is
``log|det J|`` of the map just applied, so ``forward(z)[1] + inverse(forward(z)[0])[1] == 0``.

Examples
--------
>>> import torch
>>> t = Sequential(Permutation([1, 0]), Permutation([1, 0]))
>>> y, ld = t(torch.tensor([[1.0, 2.0]]))
>>> y.tolist(), ld.tolist()
([[1.0, 2.0]], [0.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Transform", "Sequential", "Permutation", "MLP"]


class Transform(nn.Module):
    """Base class of an invertible map on ``[batch, n_dof]`` with a tractable log-det.

    Subclasses implement :meth:`forward` (z -> y) and :meth:`inverse` (y -> z), each returning
    ``(output, log_det)`` with ``log_det`` ``[batch]`` the log absolute Jacobian determinant of
    the map it applies. Calling the module runs :meth:`forward`.
    """

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Map latent ``z`` ``[batch, n]`` to ``y``; return ``(y, log|det dy/dz|)``."""
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """Map ``y`` ``[batch, n]`` to latent ``z``; return ``(z, log|det dz/dy|)``."""
        raise NotImplementedError


class Sequential(Transform):
    """Composition ``y = t_n(...t_2(t_1(z)))``; the inverse runs the pieces in reverse order.

    Parameters
    ----------
    *transforms : Transform
        Applied in this order by :meth:`forward`.

    Examples
    --------
    >>> import torch
    >>> t = Sequential(Permutation([2, 0, 1]))
    >>> t.inverse(t(torch.arange(3.0)[None])[0])[0].tolist()
    [[0.0, 1.0, 2.0]]
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        if len(transforms) == 1 and isinstance(transforms[0], list | tuple):
            transforms = tuple(transforms[0])
        self.transforms = nn.ModuleList(transforms)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = z.new_zeros(z.shape[:-1])
        for t in self.transforms:
            z, ld = t(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        log_det = y.new_zeros(y.shape[:-1])
        for t in reversed(self.transforms):
            y, ld = t.inverse(y)
            log_det = log_det + ld
        return y, log_det

    def __len__(self) -> int:
        return len(self.transforms)


class Permutation(Transform):
    """Reorder dimensions: ``y[:, i] = z[:, perm[i]]``; log-det 0.

    Note that a permutation also permutes the dimensions' domains: only put one between
    layers that agree on the reordered domain (the builder uses coupling masks instead).

    Parameters
    ----------
    perm : sequence of int or LongTensor ``[n]``
        A permutation of ``range(n)``.
    """

    def __init__(self, perm: Sequence[int] | torch.Tensor):
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        if sorted(perm.tolist()) != list(range(len(perm))):
            raise ValueError("perm is not a permutation of range(n)")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return z.index_select(-1, self.perm), z.new_zeros(z.shape[:-1])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return y.index_select(-1, self.inv_perm), y.new_zeros(y.shape[:-1])


class MLP(nn.Module):
    """Conditioner network: ``Linear -> act -> ... -> Linear``, last layer zero-initialised.

    A zero last layer makes every coupling start as the identity map. With ``in_features = 0``
    the output is a learnable constant (an unconditional transform).

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    hidden : sequence of int
        Hidden widths.
    activation : type of nn.Module
        Hidden activation (default ``nn.SiLU``).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (64, 64),
                 activation: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        if in_features == 0:
            self.net = None
            self.const = nn.Parameter(torch.zeros(out_features))
            return
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), activation()]
            width = h
        last = nn.Linear(width, out_features)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        layers.append(last)
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[batch, in_features] -> [batch, out_features]``."""
        if self.net is None:
            return self.const.expand(*x.shape[:-1], self.out_features)
        return self.net(x)
