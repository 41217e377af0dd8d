"""OpenMM's ``NonbondedForce`` without cutoff: Coulomb plus Lennard-Jones over all pairs.

Pairs use Lorentz-Berthelot combination (``sigma = (sigma_i + sigma_j) / 2``,
``epsilon = sqrt(epsilon_i epsilon_j)``); exceptions replace the combined parameters of their
pair (an exclusion is an exception with zero charge product and epsilon); pairs with both zero
are dropped.
Energy ``ONE_4PI_EPS0 q_i q_j / r + 4 epsilon ((sigma/r)^12 - (sigma/r)^6)`` in kJ/mol for
charges in e and lengths in nm, per pair constants precomputed. Only ``NoCutoff`` without
parameter offsets is translated; anything else raises ``_Unsupported``. The term maps positions
``[3, n_atoms, batch]`` (internal layout) to ``[batch]``.

Examples
--------
>>> import openmm, torch
>>> force = openmm.NonbondedForce()
>>> for q in (1.0, -1.0):
...     _ = force.addParticle(q, 0.3, 0.0)  # charge e, sigma nm, epsilon kJ/mol
>>> x = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)[:, :, None]
>>> _Nonbonded(force, torch.float64).energy(x, {})  # -ONE_4PI_EPS0 at 1 nm
tensor([-138.9355], dtype=torch.float64)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from .terms import ONE_4PI_EPS0, _all_pairs, _dot, _gather, _rebuild, _require_no_cutoff, _Term, _Unsupported, _value

if TYPE_CHECKING:  # the evaluation needs no OpenMM (benchmarks/gpu_check.py runs it without)
    import openmm

__all__: list[str] = []


class _Nonbonded(_Term):
    """Coulomb + Lennard-Jones without cutoff; per-pair constants precomputed."""

    def __init__(self, force: openmm.NonbondedForce, dtype):
        super().__init__("NonbondedForce")
        _require_no_cutoff(force)
        if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
            raise _Unsupported("NonbondedForce (parameter offsets are not supported)")
        n = force.getNumParticles()
        q, sig, eps = (np.array(a, dtype=np.float64) for a in zip(*[
            [_value(v) for v in force.getParticleParameters(p)] for p in range(n)], strict=True)) \
            if n else (np.zeros(0),) * 3
        exc = [force.getExceptionParameters(e) for e in range(force.getNumExceptions())]
        spec = {"q": q, "sigma": sig, "epsilon": eps,
                "exception_pairs": np.array([[a, b] for a, b, *_ in exc], dtype=np.int64).reshape(-1, 2),
                "exception_qq": np.array([_value(x[2]) for x in exc], dtype=np.float64),
                "exception_sigma": np.array([_value(x[3]) for x in exc], dtype=np.float64),
                "exception_epsilon": np.array([_value(x[4]) for x in exc], dtype=np.float64)}
        self._setup(spec, dtype)

    def _setup(self, spec: dict, dtype) -> None:
        """The per-pair buffers from the per-particle parameters and exceptions in ``spec``."""
        self.spec, self.spec_dtype = spec, dtype
        q, sig, eps, ei = spec["q"], spec["sigma"], spec["epsilon"], spec["exception_pairs"]
        excluded = {(int(min(a, b)), int(max(a, b))) for a, b in ei}
        i, j = _all_pairs(len(q), excluded)
        i = np.concatenate([i, ei[:, 0]])
        j = np.concatenate([j, ei[:, 1]])
        n_all = len(i) - len(ei)
        qq = np.concatenate([q[i[:n_all]] * q[j[:n_all]], spec["exception_qq"]])
        s = np.concatenate([0.5 * (sig[i[:n_all]] + sig[j[:n_all]]), spec["exception_sigma"]])
        e = np.concatenate([np.sqrt(eps[i[:n_all]] * eps[j[:n_all]]), spec["exception_epsilon"]])
        keep = (qq != 0) | (e != 0)
        i, j, qq, s, e = i[keep], j[keep], qq[keep], s[keep], e[keep]
        s6 = s ** 6
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        self._buf("kqq", ONE_4PI_EPS0 * qq, dtype)
        self._buf("a", 4.0 * e * s6 * s6, dtype)
        self._buf("c", 4.0 * e * s6, dtype)

    def __reduce__(self):
        # pickled as its per-particle parameters (the pair buffers grow as n_atoms^2: ~0.2 GB for 2600 atoms)
        return _rebuild, (type(self), "NonbondedForce", self.spec, self.spec_dtype)

    def n_pairs(self) -> int:
        return int(self.i.numel())

    def energy(self, x, params):
        d = _gather(x, self.j) - _gather(x, self.i)
        r2 = _dot(d, d)
        inv_r2 = 1.0 / r2
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        return (self.kqq * torch.sqrt(inv_r2) + (self.a * inv_r6 - self.c) * inv_r6).sum(0)
