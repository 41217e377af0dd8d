"""The Fixman factor of bond constraints, the correction a move mixed with constrained MD needs.

Constrained Langevin dynamics samples ``exp(-u(x)) sqrt(det Z(x))`` with respect to the generator's
fixed-bond measure, with ``Z_ab = sum_i (1/m_i) grad_i g_a . grad_i g_b`` over the constraints ``g``
(``docs/design.md``, "Constraints"). The factor only varies where an atom carries two or more
constraints (CH3, NH3+).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FixmanFactor", "fixman_log_factor"]


class FixmanFactor:
    """The Fixman factor ``0.5 log det Z(x)`` of a set of distance constraints.

    ``Z_ab = sum_i (1/m_i) grad_i g_a . grad_i g_b`` with ``g_a = |x_j - x_i| - d_a``. Constrained
    Langevin dynamics samples ``exp(-u(x)) sqrt(det Z(x))`` with respect to the Cartesian measure
    with a delta function on each constrained length (the generator's fixed-bond measure). ``Z`` is
    block diagonal over groups of constraints that share atoms; groups of one constraint give a
    constant (``1/m_i + 1/m_j``) and are left out, so the factor is zero without shared atoms.

    Parameters
    ----------
    constraints : sequence of (int, int, float)
        ``(i, j, length_nm)`` as `MolecularSystem.constraints`.
    masses : array-like
        ``[n_atoms]`` particle masses in dalton.

    Attributes
    ----------
    active : bool
        Whether any atom carries two or more constraints (otherwise the factor is constant, 0 here).

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide", constraints="hbonds")
    >>> f = FixmanFactor(ala.constraints, ala.masses)
    >>> f.active, f(ala.positions[None]).shape
    (True, (1,))
    """

    def __init__(self, constraints, masses):
        masses = np.asarray(masses, dtype=np.float64)
        cons = [(int(i), int(j)) for i, j, *_ in constraints]
        if any(masses[i] == 0 or masses[j] == 0 for i, j in cons):
            raise ValueError("constraints on massless particles are not supported")
        count = np.zeros(len(masses), dtype=int)
        for i, j in cons:
            count[i] += 1
            count[j] += 1
        keep = [c for c in cons if count[c[0]] > 1 or count[c[1]] > 1]
        self.active = len(keep) > 0
        self._i = np.array([c[0] for c in keep], dtype=int)
        self._j = np.array([c[1] for c in keep], dtype=int)
        n = len(keep)
        self._diag = 1.0 / masses[self._i] + 1.0 / masses[self._j] if n else np.zeros(0)
        # off-diagonal entries: (a, b, shared atom, sign of the product of the two gradients)
        pairs = []
        for a in range(n):
            for b in range(a + 1, n):
                for ka, sa in ((self._i[a], -1.0), (self._j[a], 1.0)):
                    for kb, sb in ((self._i[b], -1.0), (self._j[b], 1.0)):
                        if ka == kb:
                            pairs.append((a, b, sa * sb / masses[ka]))
        self._pa = np.array([p[0] for p in pairs], dtype=int)
        self._pb = np.array([p[1] for p in pairs], dtype=int)
        self._pw = np.array([p[2] for p in pairs], dtype=np.float64)

    def __call__(self, positions) -> np.ndarray:
        """``0.5 log det Z`` ``[batch]`` (float64) of positions ``[batch, n_atoms, 3]`` (nm)."""
        x = np.asarray(positions, dtype=np.float64)
        x = x[None] if x.ndim == 2 else x
        if not self.active:
            return np.zeros(len(x))
        e = x[:, self._j] - x[:, self._i]
        e = e / np.linalg.norm(e, axis=-1, keepdims=True)
        n = len(self._i)
        z = np.zeros((len(x), n, n))
        z[:, np.arange(n), np.arange(n)] = self._diag
        dots = np.einsum("bpk,bpk->bp", e[:, self._pa], e[:, self._pb]) * self._pw
        z[:, self._pa, self._pb] = dots
        z[:, self._pb, self._pa] = dots
        sign, logdet = np.linalg.slogdet(z)
        return np.where(sign > 0, 0.5 * logdet, np.nan)


def fixman_log_factor(positions, constraints, masses) -> np.ndarray:
    """``0.5 log det Z(x)`` ``[batch]`` of distance constraints (see `FixmanFactor`).

    Parameters
    ----------
    positions : array-like
        ``[batch, n_atoms, 3]`` or ``[n_atoms, 3]`` in nm.
    constraints : sequence of (int, int, float)
        ``(i, j, length_nm)``.
    masses : array-like
        ``[n_atoms]`` in dalton.

    Returns
    -------
    numpy.ndarray
        ``[batch]`` float64; only the part from atoms with two or more constraints (the rest is a
        constant and left out).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 0, 0], [0.1, 0, 0], [0.0, 0.1, 0]])   # two constraints on atom 0 at 90 deg
    >>> round(float(fixman_log_factor(x, [(0, 1, 0.1), (0, 2, 0.1)], [1.0, 1.0, 1.0])[0]), 6)
    0.693147
    """
    return FixmanFactor(constraints, masses)(positions)
