"""An OpenMM force field evaluated as batched torch tensor operations.

OpenMM evaluates one configuration per call. `TorchForceField` translates the forces of an
``openmm.System`` into tensor operations over a batch of configurations, so that energies
of ``[batch, n_atoms, 3]`` positions (nm) come out as ``[batch]`` (kJ/mol) in one pass, and
forces come from autograd. It runs in float64 or float32, on any torch device.

Supported forces
----------------
``HarmonicBondForce``, ``HarmonicAngleForce``, ``PeriodicTorsionForce``, ``RBTorsionForce``,
``NonbondedForce`` (``NoCutoff``; Coulomb + Lennard-Jones with Lorentz-Berthelot combination,
exceptions), ``GBSAOBCForce`` (``NoCutoff``; OBC2 with the ACE surface-area term, as OpenMM's
Reference platform), ``CustomGBForce`` (``NoCutoff``; any computed values / energy terms of the
types SingleParticle, ParticlePair, ParticlePairNoExclusions), ``CustomExternalForce``,
``CustomBondForce``, ``CustomAngleForce``, ``CustomTorsionForce``, ``CustomNonbondedForce``
(``NoCutoff``, no interaction groups), ``CustomCompoundBondForce`` (``x1 y1 z1 ...``,
``distance angle dihedral``). Custom expressions go through `openmm_bg.energy.torchff.expressions`;
discrete tabulated functions (``Discrete1DFunction`` ... ``Discrete3DFunction``) are supported,
continuous (spline) ones are not. ``CMMotionRemover`` is ignored (it adds no energy).
Anything else (cutoffs, PME, periodic boxes, CMAP, thermostats, barostats, virtual sites)
is refused with a ``ValueError`` naming the force; `unsupported_forces` lists them without
raising, so that a caller can fall back to OpenMM contexts.

Performance
-----------
Positions are laid out as ``[3, n_atoms, batch]`` internally (batch innermost), pair lists and
per-pair constants are precomputed, and there are no Python loops over atoms or pairs. On CPU
the cost is that of eager elementwise torch kernels (roughly 100 tensor passes per pair
interaction, forward + backward): it beats a one-configuration-at-a-time OpenMM loop for
small molecules (alanine dipeptide in OBC1: a few times faster in float32 on one core), not for
a few hundred atoms (trpzip2), where OpenMM's C++ pair loops win. ``compile=True`` fuses the
elementwise work (about 2x more on CPU). GPUs are where batching pays off most.

Examples
--------
>>> import torch
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> ff = TorchForceField(ala.system)
>>> x = torch.as_tensor(ala.positions)[None].repeat(4, 1, 1).requires_grad_()
>>> energy = ff(x)                                  # [4], kJ/mol
>>> forces = -torch.autograd.grad(energy.sum(), x)[0]  # [4, 22, 3], kJ/mol/nm
>>> energy.shape, forces.shape
(torch.Size([4]), torch.Size([4, 22, 3]))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import openmm
import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .expressions import Expression, ExpressionError

__all__ = ["TorchForceField", "unsupported_forces", "ONE_4PI_EPS0"]

#: Coulomb constant 1/(4 pi eps0) in kJ mol^-1 nm e^-2, as OpenMM's Reference platform.
ONE_4PI_EPS0 = 138.935456

#: Forces that add no energy and are skipped.
IGNORED_FORCES = ("CMMotionRemover",)

#: Target number of pair interactions per chunk (batch x pairs) of the automatic chunk size.
_DEFAULT_PAIRS_PER_CHUNK = 1_000_000


class _Unsupported(ValueError):
    """A force (or a feature of one) the torch force field cannot translate."""


# --------------------------------------------------------------------------------------------
# geometry on positions [3, n, batch] (batch innermost: gathers copy contiguous rows)


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[:, index]`` for positions ``x`` [3, n, batch] (batch innermost) and 1D ``index``."""
    return torch.index_select(x, 1, index)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(0)


def _norm(v: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((v * v).sum(0))


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.stack([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


def _distance(x: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    return _norm(_gather(x, j) - _gather(x, i))


def _angle_vec(p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor) -> torch.Tensor:
    v1 = p1 - p2
    v2 = p3 - p2
    return torch.atan2(_norm(_cross(v1, v2)), _dot(v1, v2))


def _dihedral_vec(p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, p4: torch.Tensor) -> torch.Tensor:
    b1 = p2 - p1
    b2 = p3 - p2
    b3 = p4 - p3
    n1 = _cross(b1, b2)
    n2 = _cross(b2, b3)
    y = _norm(b2) * _dot(b1, n2)
    return torch.atan2(y, _dot(n1, n2))


def _angle(x, i, j, k):
    return _angle_vec(_gather(x, i), _gather(x, j), _gather(x, k))


def _dihedral(x, i, j, k, l):
    return _dihedral_vec(_gather(x, i), _gather(x, j), _gather(x, k), _gather(x, l))


def _all_pairs(n: int, excluded: set[tuple[int, int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Pairs i < j of ``n`` particles, without the ``excluded`` ones (given as (min, max))."""
    i, j = np.triu_indices(n, k=1)
    if excluded:
        mask = np.ones((n, n), dtype=bool)
        ex = np.array(sorted(excluded), dtype=np.int64).reshape(-1, 2)
        mask[ex[:, 0], ex[:, 1]] = False
        keep = mask[i, j]
        i, j = i[keep], j[keep]
    return i.astype(np.int64), j.astype(np.int64)


def _sum_rows(value, batch: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """Sum a per-item value (float, [n, 1] or [n, batch]) over the items to [batch]."""
    if not isinstance(value, torch.Tensor):
        return torch.full((batch,), float(value) * n, dtype=like.dtype, device=like.device)
    if value.dim() < 2:
        value = value.reshape(-1, 1)
    return value.to(like.dtype).expand(n, batch).sum(0)


# --------------------------------------------------------------------------------------------
# terms


class _Term(nn.Module):
    """One translated force: ``energy(x, params) -> [batch]`` for positions ``x`` [3, n, batch]."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def _buf(self, name: str, value, dtype, column: bool = True) -> None:
        """Register a constant; 1D float arrays become columns [n, 1] (batch is the last axis)."""
        tensor = torch.as_tensor(np.asarray(value), dtype=dtype)
        if column and dtype.is_floating_point and tensor.dim() == 1:
            tensor = tensor[:, None]
        self.register_buffer(name, tensor, persistent=False)

    def energy(self, x: torch.Tensor, params: dict[str, float]) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


class _HarmonicBond(_Term):
    def __init__(self, force: openmm.HarmonicBondForce, dtype):
        super().__init__("HarmonicBondForce")
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        self._buf("i", [r[0] for r in rows], torch.long)
        self._buf("j", [r[1] for r in rows], torch.long)
        self._buf("r0", [_value(r[2]) for r in rows], dtype)
        self._buf("k", [0.5 * _value(r[3]) for r in rows], dtype)

    def energy(self, x, params):
        d = _distance(x, self.i, self.j) - self.r0
        return (self.k * d * d).sum(0)


class _HarmonicAngle(_Term):
    def __init__(self, force: openmm.HarmonicAngleForce, dtype):
        super().__init__("HarmonicAngleForce")
        rows = [force.getAngleParameters(a) for a in range(force.getNumAngles())]
        self._buf("idx", np.array([r[:3] for r in rows], dtype=np.int64).reshape(-1, 3), torch.long)
        self._buf("theta0", [_value(r[3]) for r in rows], dtype)
        self._buf("kf", [0.5 * _value(r[4]) for r in rows], dtype)

    def energy(self, x, params):
        if self.idx.numel() == 0:
            return x.new_zeros(x.shape[2])
        d = _angle(x, *self.idx.T) - self.theta0
        return (self.kf * d * d).sum(0)


class _PeriodicTorsion(_Term):
    def __init__(self, force: openmm.PeriodicTorsionForce, dtype):
        super().__init__("PeriodicTorsionForce")
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        self._buf("idx", np.array([r[:4] for r in rows], dtype=np.int64).reshape(-1, 4), torch.long)
        self._buf("n", [float(r[4]) for r in rows], dtype)
        self._buf("phase", [_value(r[5]) for r in rows], dtype)
        self._buf("kt", [_value(r[6]) for r in rows], dtype)

    def energy(self, x, params):
        if self.idx.numel() == 0:
            return x.new_zeros(x.shape[2])
        phi = _dihedral(x, *self.idx.T)
        return (self.kt * (1.0 + torch.cos(self.n * phi - self.phase))).sum(0)


class _RBTorsion(_Term):
    def __init__(self, force: openmm.RBTorsionForce, dtype):
        super().__init__("RBTorsionForce")
        rows = [force.getTorsionParameters(t) for t in range(force.getNumTorsions())]
        self._buf("idx", np.array([r[:4] for r in rows], dtype=np.int64).reshape(-1, 4), torch.long)
        self._buf("c", [[_value(c) for c in r[4:10]] for r in rows], dtype)

    def energy(self, x, params):
        if self.idx.numel() == 0:
            return x.new_zeros(x.shape[2])
        psi = _dihedral(x, *self.idx.T) - math.pi
        cos = torch.cos(psi)
        result = self.c[:, 5:6]
        for n in range(4, -1, -1):  # Horner
            result = result * cos + self.c[:, n:n + 1]
        return result.sum(0)


class _Nonbonded(_Term):
    """Coulomb + Lennard-Jones without cutoff; per-pair constants precomputed."""

    def __init__(self, force: openmm.NonbondedForce, dtype):
        super().__init__("NonbondedForce")
        method = force.getNonbondedMethod()
        if method != openmm.NonbondedForce.NoCutoff:
            raise _Unsupported(f"NonbondedForce (nonbondedMethod {_method_name(force, method)}; only "
                               "NoCutoff is supported)")
        if force.getNumParticleParameterOffsets() or force.getNumExceptionParameterOffsets():
            raise _Unsupported("NonbondedForce (parameter offsets are not supported)")
        n = force.getNumParticles()
        q, sig, eps = (np.array(a, dtype=np.float64) for a in zip(*[
            [_value(v) for v in force.getParticleParameters(p)] for p in range(n)], strict=True)) \
            if n else (np.zeros(0),) * 3
        exc = [force.getExceptionParameters(e) for e in range(force.getNumExceptions())]
        excluded = {(min(e[0], e[1]), max(e[0], e[1])) for e in exc}
        i, j = _all_pairs(n, excluded)
        qq = q[i] * q[j]
        s = 0.5 * (sig[i] + sig[j])
        e = np.sqrt(eps[i] * eps[j])
        ei = np.array([[a, b] for a, b, *_ in exc], dtype=np.int64).reshape(-1, 2)
        eqq = np.array([_value(x[2]) for x in exc], dtype=np.float64)
        es = np.array([_value(x[3]) for x in exc], dtype=np.float64)
        ee = np.array([_value(x[4]) for x in exc], dtype=np.float64)
        i = np.concatenate([i, ei[:, 0]])
        j = np.concatenate([j, ei[:, 1]])
        qq = np.concatenate([qq, eqq])
        s = np.concatenate([s, es])
        e = np.concatenate([e, ee])
        keep = (qq != 0) | (e != 0)
        i, j, qq, s, e = i[keep], j[keep], qq[keep], s[keep], e[keep]
        s6 = s ** 6
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        self._buf("kqq", ONE_4PI_EPS0 * qq, dtype)
        self._buf("a", 4.0 * e * s6 * s6, dtype)
        self._buf("c", 4.0 * e * s6, dtype)

    def energy(self, x, params):
        d = _gather(x, self.j) - _gather(x, self.i)
        r2 = _dot(d, d)
        inv_r2 = 1.0 / r2
        inv_r6 = inv_r2 * inv_r2 * inv_r2
        return (self.kqq * torch.sqrt(inv_r2) + (self.a * inv_r6 - self.c) * inv_r6).sum(0)


class _GBSAOBC(_Term):
    """OBC2 generalized Born with the ACE surface term, as OpenMM's ``ReferenceObc``."""

    def __init__(self, force: openmm.GBSAOBCForce, dtype):
        super().__init__("GBSAOBCForce")
        if force.getNonbondedMethod() != openmm.GBSAOBCForce.NoCutoff:
            raise _Unsupported("GBSAOBCForce (nonbondedMethod with a cutoff; only NoCutoff is supported)")
        n = force.getNumParticles()
        rows = [force.getParticleParameters(p) for p in range(n)]
        q = np.array([_value(r[0]) for r in rows])
        radius = np.array([_value(r[1]) for r in rows])
        scale = np.array([float(r[2]) for r in rows])
        offset = 0.009
        ro = radius - offset
        eps_in, eps_out = force.getSoluteDielectric(), force.getSolventDielectric()
        prefactor = -ONE_4PI_EPS0 * (1.0 / eps_in - 1.0 / eps_out) if eps_in != 0 and eps_out != 0 else 0.0
        self.sa = 4.0 * math.pi * _value(force.getSurfaceAreaEnergy())
        i, j = _all_pairs(n)
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        # directed pairs (a = atom whose radius is computed, b = the other)
        a = np.concatenate([i, j])
        b = np.concatenate([j, i])
        self._buf("a", a, torch.long)
        self._buf("ro_a", ro[a], dtype)
        self._buf("sr_b", (ro * scale)[b], dtype)
        self._buf("sr_b2", ((ro * scale) ** 2)[b], dtype)
        self._buf("inv_ro_a", 1.0 / ro[a], dtype)
        self._buf("ro", ro, dtype)
        self._buf("radius", radius, dtype)
        self._buf("qq", prefactor * q[i] * q[j], dtype)
        self._buf("qself", 0.5 * prefactor * q * q, dtype)
        self._buf("sa_coef", self.sa * (radius + 0.14) ** 2 * radius ** 6, dtype)

    def energy(self, x, params):
        n, batch = x.shape[1], x.shape[2]
        d = _gather(x, self.j) - _gather(x, self.i)
        r2 = _dot(d, d)
        r = torch.sqrt(r2)
        rd = torch.cat([r, r], dim=0)  # directed pairs
        ro_a, sr_b = self.ro_a, self.sr_b
        rs = rd + sr_b
        active = ro_a < rs
        inv_r = 1.0 / rd
        l = 1.0 / torch.maximum(torch.abs(rd - sr_b), ro_a)
        u = 1.0 / rs
        l2, u2 = l * l, u * u
        term = (l - u + 0.25 * rd * (u2 - l2) + 0.5 * inv_r * torch.log(u / l)
                + 0.25 * self.sr_b2 * inv_r * (l2 - u2))
        term = term + torch.where(ro_a < sr_b - rd, 2.0 * (self.inv_ro_a - l), torch.zeros_like(l))
        term = torch.where(active, term, torch.zeros_like(term))
        total = torch.zeros(n, batch, dtype=x.dtype, device=x.device).index_add_(0, self.a, term)
        psi = 0.5 * self.ro * total
        psi2 = psi * psi
        born = 1.0 / (1.0 / self.ro - torch.tanh(psi - 0.8 * psi2 + 4.85 * psi2 * psi) / self.radius)
        bi = born.index_select(0, self.i)
        bj = born.index_select(0, self.j)
        bb = bi * bj
        f = torch.sqrt(r2 + bb * torch.exp(-r2 / (4.0 * bb)))
        energy = (self.qq / f).sum(0) + (self.qself / born).sum(0)
        if self.sa != 0.0:
            inv_b = 1.0 / born
            inv_b3 = inv_b * inv_b * inv_b
            sa = self.sa_coef * inv_b3 * inv_b3
            energy = energy + torch.where(born > 0, sa, torch.zeros_like(sa)).sum(0)
        return energy


# --------------------------------------------------------------------------------------------
# custom forces


def _global_defaults(force) -> dict[str, float]:
    return {force.getGlobalParameterName(k): float(force.getGlobalParameterDefaultValue(k))
            for k in range(force.getNumGlobalParameters())}


def _tabulated(force, term: _Term, dtype) -> dict[str, tuple[int, Callable]]:
    """Discrete tabulated functions of a custom force as expression functions."""
    if not hasattr(force, "getNumTabulatedFunctions"):
        return {}
    table = {}
    for k in range(force.getNumTabulatedFunctions()):
        name = force.getTabulatedFunctionName(k)
        fn = force.getTabulatedFunction(k)
        kind = type(fn).__name__
        if isinstance(fn, openmm.Discrete1DFunction):
            values, sizes = fn.getFunctionParameters(), ()
        elif isinstance(fn, openmm.Discrete2DFunction):
            nx, ny, values = fn.getFunctionParameters()
            sizes = (nx,)
        elif isinstance(fn, openmm.Discrete3DFunction):
            nx, ny, nz, values = fn.getFunctionParameters()
            sizes = (nx, ny)
        else:
            raise _Unsupported(f"{type(force).__name__} (tabulated function {name!r} of type {kind}; only "
                               "Discrete1D/2D/3DFunction are supported)")
        buf = f"table_{k}"
        term._buf(buf, list(values), dtype, column=False)
        table[name] = (len(sizes) + 1, _discrete_lookup(term, buf, sizes))
    return table


def _discrete_lookup(term: _Term, buf: str, sizes: tuple[int, ...]) -> Callable:
    def lookup(*args):
        values = getattr(term, buf)
        index = None
        stride = 1
        for n, arg in enumerate(args):
            a = torch.as_tensor(arg, device=values.device)
            a = torch.round(a.detach()).long() if a.is_floating_point() else a.long()
            index = a * stride if index is None else index + a * stride
            if n < len(sizes):
                stride *= sizes[n]
        return values[index]
    return lookup


def _checked(text: str, names: Sequence[str], functions: dict, force_name: str) -> Expression:
    try:
        expression = Expression(text)
        expression.check(names, functions)
    except ExpressionError as err:
        raise _Unsupported(f"{force_name} ({err})") from err
    return expression


def _per_item_parameters(names: Sequence[str], rows: Sequence[Sequence[float]], term: _Term,
                         prefix: str, dtype) -> list[str]:
    """Register per-item parameter columns as buffers; returns buffer names."""
    buffers = []
    values = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
    for k, _name in enumerate(names):
        buf = f"{prefix}_{k}"
        term._buf(buf, values[:, k], dtype)
        buffers.append(buf)
    return buffers


def _per_particle_parameters(force, term: _Term, dtype) -> tuple[list[str], list[str]]:
    """Per-particle parameter names of a CustomNonbondedForce / CustomGBForce and their buffers."""
    names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
    rows = [list(force.getParticleParameters(p)) for p in range(force.getNumParticles())]
    return names, _per_item_parameters(names, rows, term, "p", dtype)


def _no_periodic(force) -> None:
    if force.usesPeriodicBoundaryConditions():
        raise _Unsupported(f"{type(force).__name__} (periodic boundary conditions are not supported)")


class _CustomExternal(_Term):
    def __init__(self, force: openmm.CustomExternalForce, dtype):
        super().__init__("CustomExternalForce")
        _no_periodic(force)
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        self.globals = _global_defaults(force)
        self.names = names
        rows = [force.getParticleParameters(p) for p in range(force.getNumParticles())]
        self._buf("idx", [r[0] for r in rows], torch.long)
        self.buffers_ = _per_item_parameters(names, [list(r[1]) for r in rows], self, "p", dtype)
        self.functions = _tabulated(force, self, dtype)
        self.expression = _checked(force.getEnergyFunction(), [*names, *self.globals, "x", "y", "z"],
                                   self.functions, self.name)

    def energy(self, x, params):
        pos = _gather(x, self.idx)
        env = dict(params)
        env.update({name: getattr(self, b) for name, b in zip(self.names, self.buffers_, strict=True)})
        env.update(x=pos[0], y=pos[1], z=pos[2])
        return _sum_rows(self.expression.evaluate(env, self.functions), x.shape[2], self.idx.numel(), x)


class _CustomBonded(_Term):
    """CustomBondForce / CustomAngleForce / CustomTorsionForce / CustomCompoundBondForce."""

    def __init__(self, force, dtype):
        name = type(force).__name__
        super().__init__(name)
        _no_periodic(force)
        self.globals = _global_defaults(force)
        if isinstance(force, openmm.CustomBondForce):
            count, get, n_atoms = force.getNumBonds(), force.getBondParameters, 2
            per, pname = force.getNumPerBondParameters, force.getPerBondParameterName
            geometry = ["r"]
        elif isinstance(force, openmm.CustomAngleForce):
            count, get, n_atoms = force.getNumAngles(), force.getAngleParameters, 3
            per, pname = force.getNumPerAngleParameters, force.getPerAngleParameterName
            geometry = ["theta"]
        elif isinstance(force, openmm.CustomTorsionForce):
            count, get, n_atoms = force.getNumTorsions(), force.getTorsionParameters, 4
            per, pname = force.getNumPerTorsionParameters, force.getPerTorsionParameterName
            geometry = ["theta"]
        else:  # CustomCompoundBondForce
            count, get, n_atoms = force.getNumBonds(), force.getBondParameters, force.getNumParticlesPerBond()
            per, pname = force.getNumPerBondParameters, force.getPerBondParameterName
            geometry = [f"{c}{k + 1}" for k in range(n_atoms) for c in "xyz"]
            geometry += [f"p{k + 1}" for k in range(n_atoms)]
        self.kind = name
        self.n_atoms = n_atoms
        self.names = [pname(k) for k in range(per())]
        rows = [get(b) for b in range(count)]
        if name == "CustomCompoundBondForce":
            atoms = [list(r[0]) for r in rows]
            values = [list(r[1]) for r in rows]
        else:
            atoms = [list(r[:n_atoms]) for r in rows]
            values = [list(r[n_atoms]) for r in rows]
        self._buf("idx", np.array(atoms, dtype=np.int64).reshape(count, n_atoms), torch.long)
        self.count = count
        self.buffers_ = _per_item_parameters(self.names, values, self, "p", dtype)
        self.functions = _tabulated(force, self, dtype)
        if name == "CustomCompoundBondForce":
            self.functions.update(distance=(2, lambda a, b: _norm(b - a)), angle=(3, _angle_vec),
                                  dihedral=(4, _dihedral_vec))
        self.expression = _checked(force.getEnergyFunction(), [*self.names, *self.globals, *geometry],
                                   self.functions, name)

    def energy(self, x, params):
        if self.count == 0:
            return x.new_zeros(x.shape[2])
        env = dict(params)
        env.update({name: getattr(self, b) for name, b in zip(self.names, self.buffers_, strict=True)})
        idx = self.idx
        if self.kind == "CustomBondForce":
            env["r"] = _distance(x, idx[:, 0], idx[:, 1])
        elif self.kind == "CustomAngleForce":
            env["theta"] = _angle(x, idx[:, 0], idx[:, 1], idx[:, 2])
        elif self.kind == "CustomTorsionForce":
            env["theta"] = _dihedral(x, idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3])
        else:
            for k in range(self.n_atoms):
                pos = _gather(x, idx[:, k])
                env[f"p{k + 1}"] = pos
                env[f"x{k + 1}"], env[f"y{k + 1}"], env[f"z{k + 1}"] = pos[0], pos[1], pos[2]
        return _sum_rows(self.expression.evaluate(env, self.functions), x.shape[2], self.count, x)


class _CustomNonbonded(_Term):
    def __init__(self, force: openmm.CustomNonbondedForce, dtype):
        super().__init__("CustomNonbondedForce")
        method = force.getNonbondedMethod()
        if method != openmm.CustomNonbondedForce.NoCutoff:
            raise _Unsupported(f"CustomNonbondedForce (nonbondedMethod {_method_name(force, method)}; "
                               "only NoCutoff is supported)")
        if force.getNumInteractionGroups():
            raise _Unsupported("CustomNonbondedForce (interaction groups are not supported)")
        self.globals = _global_defaults(force)
        n = force.getNumParticles()
        self.names, self.buffers_ = _per_particle_parameters(force, self, dtype)
        self.functions = _tabulated(force, self, dtype)
        self.computed = []
        known = [*self.names, *self.globals]
        for k in range(force.getNumComputedValues() if hasattr(force, "getNumComputedValues") else 0):
            cname, text = force.getComputedValueParameters(k)
            self.computed.append((cname, _checked(text, known, self.functions, self.name)))
            known.append(cname)
        excluded = set()
        for e in range(force.getNumExclusions()):
            a, b = force.getExclusionParticles(e)
            excluded.add((min(a, b), max(a, b)))
        i, j = _all_pairs(n, excluded)
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        pair_names = [f"{v}{s}" for v in known[:len(self.names)] + [c for c, _ in self.computed]
                      for s in "12"]
        self.expression = _checked(force.getEnergyFunction(), [*pair_names, *self.globals, "r"],
                                   self.functions, self.name)

    def energy(self, x, params):
        if self.i.numel() == 0:
            return x.new_zeros(x.shape[2])
        per = dict(params)
        per.update({name: getattr(self, b) for name, b in zip(self.names, self.buffers_, strict=True)})
        values = {name: per[name] for name in self.names}
        for cname, expression in self.computed:
            values[cname] = expression.evaluate(per, self.functions)
            per[cname] = values[cname]
        env = dict(params)
        for name, value in values.items():
            env[name + "1"] = _take_particles(value, self.i)
            env[name + "2"] = _take_particles(value, self.j)
        env["r"] = _distance(x, self.i, self.j)
        return _sum_rows(self.expression.evaluate(env, self.functions), x.shape[2], self.i.numel(), x)


def _take_particles(value, index: torch.Tensor):
    """Per-particle ``value`` (float, [n, 1] or [n, batch]) at particles ``index``."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value.index_select(0, index)


class _CustomGB(_Term):
    """CustomGBForce: computed values and energy terms of single-particle and pair types."""

    SINGLE = openmm.CustomGBForce.SingleParticle
    PAIR = openmm.CustomGBForce.ParticlePair
    PAIR_NOEX = openmm.CustomGBForce.ParticlePairNoExclusions

    def __init__(self, force: openmm.CustomGBForce, dtype):
        super().__init__("CustomGBForce")
        method = force.getNonbondedMethod()
        if method != openmm.CustomGBForce.NoCutoff:
            raise _Unsupported(f"CustomGBForce (nonbondedMethod {_method_name(force, method)}; only NoCutoff "
                               "is supported)")
        self.globals = _global_defaults(force)
        n = force.getNumParticles()
        self.n = n
        self.names, self.buffers_ = _per_particle_parameters(force, self, dtype)
        self.functions = _tabulated(force, self, dtype)
        excluded = set()
        for e in range(force.getNumExclusions()):
            a, b = force.getExclusionParticles(e)
            excluded.add((min(a, b), max(a, b)))
        i, j = _all_pairs(n)
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        self._buf("a2", np.concatenate([i, j]), torch.long)
        self._buf("b2", np.concatenate([j, i]), torch.long)
        self.has_exclusions = bool(excluded)
        if excluded:
            keep = np.ones((n, n), dtype=bool)
            ex = np.array(sorted(excluded)).reshape(-1, 2)
            keep[ex[:, 0], ex[:, 1]] = False
            sel = np.flatnonzero(keep[i, j])
            self._buf("sel", sel, torch.long)
            self._buf("sel2", np.concatenate([sel, sel + len(i)]), torch.long)
            self._buf("ei", i[sel], torch.long)
            self._buf("ej", j[sel], torch.long)
            self._buf("ea2", np.concatenate([i[sel], j[sel]]), torch.long)
        per_particle = [*self.names]
        single_vars = [*self.globals, "x", "y", "z"]
        self.computed = []
        for k in range(force.getNumComputedValues()):
            cname, text, kind = force.getComputedValueParameters(k)
            if kind == self.SINGLE:
                names = [*per_particle, *single_vars]
            elif kind in (self.PAIR, self.PAIR_NOEX):
                names = [f"{v}{s}" for v in per_particle for s in "12"] + [*self.globals, "r"]
            else:  # pragma: no cover - OpenMM has no other type
                raise _Unsupported(f"CustomGBForce (computed value {cname!r} of unknown type {kind})")
            self.computed.append((cname, _checked(text, names, self.functions, self.name), kind))
            per_particle.append(cname)
        self.terms = []
        for k in range(force.getNumEnergyTerms()):
            text, kind = force.getEnergyTermParameters(k)
            if kind == self.SINGLE:
                names = [*per_particle, *single_vars]
            elif kind in (self.PAIR, self.PAIR_NOEX):
                names = [f"{v}{s}" for v in per_particle for s in "12"] + [*self.globals, "r"]
            else:  # pragma: no cover
                raise _Unsupported(f"CustomGBForce (energy term of unknown type {kind})")
            self.terms.append((_checked(text, names, self.functions, self.name), kind))

    def energy(self, x, params):
        batch = x.shape[2]
        values = {name: getattr(self, b) for name, b in zip(self.names, self.buffers_, strict=True)}
        d = _gather(x, self.j) - _gather(x, self.i)
        r_all = torch.sqrt(_dot(d, d))
        cache: dict[str, torch.Tensor] = {}

        def r_for(kind, directed):
            key = f"{kind}{directed}"
            if key not in cache:
                r = r_all
                if kind == self.PAIR and self.has_exclusions:
                    r = r.index_select(0, self.sel)
                cache[key] = torch.cat([r, r], dim=0) if directed else r
            return cache[key]

        def pair_env(kind, directed):
            env = dict(params)
            excl = kind == self.PAIR and self.has_exclusions
            if directed:
                first, second = (self.ea2, None) if excl else (self.a2, self.b2)
                if excl:
                    second = torch.cat([self.ej, self.ei])
            else:
                first, second = (self.ei, self.ej) if excl else (self.i, self.j)
            for name, value in values.items():
                env[name + "1"] = _take_particles(value, first)
                env[name + "2"] = _take_particles(value, second)
            env["r"] = r_for(kind, directed)
            return env, first

        def single_env():
            env = dict(params)
            env.update(values)
            env.update(x=x[0], y=x[1], z=x[2])
            return env

        for cname, expression, kind in self.computed:
            if kind == self.SINGLE:
                value = expression.evaluate(single_env(), self.functions)
            else:
                env, first = pair_env(kind, True)
                v = expression.evaluate(env, self.functions)
                v = _broadcast(v, first.numel(), batch, x)
                value = torch.zeros(self.n, batch, dtype=x.dtype, device=x.device).index_add_(0, first, v)
            values[cname] = value
        energy = x.new_zeros(batch)
        for expression, kind in self.terms:
            if kind == self.SINGLE:
                value = expression.evaluate(single_env(), self.functions)
                energy = energy + _sum_rows(value, batch, self.n, x)
            else:
                env, first = pair_env(kind, False)
                energy = energy + _sum_rows(expression.evaluate(env, self.functions), batch, first.numel(), x)
        return energy


def _broadcast(value, n: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(float(value), dtype=like.dtype, device=like.device)
    return value.to(like.dtype).expand(n, batch)


# --------------------------------------------------------------------------------------------


def _value(quantity) -> float:
    """Strip OpenMM units (MD unit system) from a scalar."""
    if hasattr(quantity, "value_in_unit_system"):
        return float(quantity.value_in_unit_system(openmm.unit.md_unit_system))
    return float(quantity)


def _method_name(force, method: int) -> str:
    for name in ("NoCutoff", "CutoffNonPeriodic", "CutoffPeriodic", "Ewald", "PME", "LJPME"):
        if getattr(type(force), name, None) == method:
            return name
    return str(method)


_BUILDERS: dict[type, Callable] = {
    openmm.HarmonicBondForce: _HarmonicBond,
    openmm.HarmonicAngleForce: _HarmonicAngle,
    openmm.PeriodicTorsionForce: _PeriodicTorsion,
    openmm.RBTorsionForce: _RBTorsion,
    openmm.NonbondedForce: _Nonbonded,
    openmm.GBSAOBCForce: _GBSAOBC,
    openmm.CustomExternalForce: _CustomExternal,
    openmm.CustomBondForce: _CustomBonded,
    openmm.CustomAngleForce: _CustomBonded,
    openmm.CustomTorsionForce: _CustomBonded,
    openmm.CustomCompoundBondForce: _CustomBonded,
    openmm.CustomNonbondedForce: _CustomNonbonded,
    openmm.CustomGBForce: _CustomGB,
}


def _build(force, dtype) -> _Term | None:
    name = type(force).__name__
    if name in IGNORED_FORCES:
        return None
    builder = _BUILDERS.get(type(force))
    if builder is None:
        raise _Unsupported(f"{name} (no torch translation)")
    return builder(force, dtype)


def _system_problems(system: openmm.System) -> list[str]:
    problems = []
    virtual = [p for p in range(system.getNumParticles()) if system.isVirtualSite(p)]
    if virtual:
        problems.append(f"virtual sites (particles {virtual[:5]}{'...' if len(virtual) > 5 else ''})")
    return problems


def unsupported_forces(system: openmm.System) -> list[str]:
    """Forces (and system features) of ``system`` that `TorchForceField` cannot translate.

    Parameters
    ----------
    system : openmm.System

    Returns
    -------
    list of str
        One entry per problem, starting with the force's class name and saying why, e.g.
        ``"NonbondedForce (nonbondedMethod PME; only NoCutoff is supported)"``; empty when the
        whole system is supported.

    Examples
    --------
    >>> import openmm
    >>> system = openmm.System()
    >>> _ = system.addParticle(1.0)
    >>> _ = system.addForce(openmm.AndersenThermostat(300.0, 1.0))
    >>> unsupported_forces(system)
    ['AndersenThermostat (no torch translation)']
    """
    problems = _system_problems(system)
    for force in system.getForces():
        try:
            _build(force, torch.float64)
        except _Unsupported as err:
            problems.append(str(err))
    return problems


class TorchForceField(nn.Module):
    """Potential energy of an ``openmm.System`` for a batch of configurations, in torch.

    Parameters
    ----------
    system : openmm.System
        Non-periodic system whose forces are all supported (see the module docstring);
        bond constraints are ignored (they do not change the energy).
    dtype : torch.dtype
        ``torch.float64`` (default; matches OpenMM's Reference platform to ~1e-10 relative)
        or ``torch.float32``.
    device : str or torch.device
        Where the parameters live and the computation runs.
    chunk_size : int, optional
        Largest number of configurations evaluated at once; larger batches are split into
        chunks so that memory stays bounded. With gradients required, a larger batch computes its
        forces chunk by chunk during the forward pass and hands them to autograd (first
        derivatives only; double backward needs batches within one chunk). Default: about a million pair
        interactions per chunk (e.g. ~720 implicit-solvent alanine-dipeptide or ~20 trpzip2
        configurations; memory then stays below a few hundred MB).
    compile : bool
        Wrap the evaluation in ``torch.compile`` (fuses the elementwise arithmetic of forward and
        backward; typically 2-3x faster on CPU). Costs a one-off compilation of about a minute
        per dtype and batch shape class on the first call, and needs a C++ compiler on CPU.

    Raises
    ------
    ValueError
        If the system has forces that cannot be translated; the message names them.

    Notes
    -----
    ``forward(x)`` maps positions ``[batch, n_atoms, 3]`` (nm) to energies ``[batch]``
    (kJ/mol); forces are ``-dE/dx`` by autograd, or from `energy_and_forces`. Rows are
    independent: a non-finite row gives a non-finite energy (and gradient) for that row only.
    Global parameters start at the System's defaults; change them with `set_parameter`.

    Examples
    --------
    >>> import torch
    >>> import openmm_bg.systems as bgs
    >>> mb = bgs.load("mueller_brown")
    >>> ff = TorchForceField(mb.system)
    >>> x = torch.as_tensor(mb.positions)[None]
    >>> e, f = ff.energy_and_forces(x)
    >>> e.shape, f.shape
    (torch.Size([1]), torch.Size([1, 1, 3]))
    """

    def __init__(self, system: openmm.System, dtype: torch.dtype = torch.float64,
                 device: str | torch.device = "cpu", chunk_size: int | None = None, compile: bool = False):
        super().__init__()
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        problems = _system_problems(system)
        terms = []
        for force in system.getForces():
            try:
                term = _build(force, dtype)
            except _Unsupported as err:
                problems.append(str(err))
                continue
            if term is not None:
                terms.append(term)
        if problems:
            raise ValueError("TorchForceField cannot translate: " + "; ".join(problems)
                             + " (use OpenMM contexts for this system)")
        self.terms = nn.ModuleList(terms)
        self.dtype = dtype
        self.n_atoms = system.getNumParticles()
        self.parameters_: dict[str, float] = {}
        for term in terms:
            for name, value in getattr(term, "globals", {}).items():
                self.parameters_.setdefault(name, value)
        n_pairs = max([_n_pairs(t) for t in terms] + [1])
        self.chunk_size = int(chunk_size) if chunk_size else max(1, _DEFAULT_PAIRS_PER_CHUNK // n_pairs)
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.to(device)
        # torch.compile fuses the elementwise pair arithmetic (forward and backward) into loops;
        # costs a one-off compilation (about a minute on CPU) and a C++ compiler.
        self._compiled = torch.compile(self._energy, dynamic=True) if compile else None

    @property
    def device(self) -> torch.device:
        """Device of the parameters."""
        for buf in self.buffers():
            return buf.device
        return torch.device("cpu")

    def set_parameter(self, name: str, value: float) -> None:
        """Set a global parameter (as ``Context.setParameter``), e.g. ``set_parameter("kT", 2.5)``."""
        if name not in self.parameters_:
            raise KeyError(f"no global parameter {name!r}; known: {sorted(self.parameters_)}")
        self.parameters_[name] = float(value)

    def get_parameter(self, name: str) -> float:
        """Current value of a global parameter."""
        return self.parameters_[name]

    def _evaluate(self, x: torch.Tensor) -> torch.Tensor:
        if self._compiled is not None:
            return self._compiled(x)
        return self._energy(x)

    def _energy(self, x: torch.Tensor) -> torch.Tensor:
        # [3, n, batch]: batch innermost, so gathers copy contiguous rows and vector ops are cheap
        xt = x.permute(2, 1, 0).contiguous()
        energy = xt.new_zeros(xt.shape[2])
        for term in self.terms:
            energy = energy + term.energy(xt, self.parameters_)
        return energy

    def _prepare(self, x) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.dim() != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape [batch, {self.n_atoms}, 3], got {tuple(x.shape)}")
        return x.to(dtype=self.dtype, device=self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Potential energy of a batch of configurations.

        Parameters
        ----------
        x : torch.Tensor
            Positions ``[batch, n_atoms, 3]`` in nm (any float dtype; cast to ``self.dtype``).

        Returns
        -------
        torch.Tensor
            ``[batch]`` in kJ/mol; differentiable with respect to ``x`` (forces ``-dE/dx``).
        """
        x = self._prepare(x)
        if x.shape[0] <= self.chunk_size:
            return self._evaluate(x)
        if torch.is_grad_enabled() and x.requires_grad:
            return _ChunkedEnergy.apply(x, self)
        return torch.cat([self._evaluate(chunk) for chunk in x.split(self.chunk_size)])

    def energy_and_forces(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies and forces, chunk by chunk, without keeping a graph.

        Parameters
        ----------
        x : torch.Tensor
            Positions ``[batch, n_atoms, 3]`` in nm.

        Returns
        -------
        energy : torch.Tensor
            ``[batch]`` in kJ/mol (``self.dtype``).
        forces : torch.Tensor
            ``[batch, n_atoms, 3]`` in kJ/mol/nm, ``-dE/dx``.
        """
        x = self._prepare(x).detach()
        energies, forces = [], []
        with torch.enable_grad():
            for chunk in x.split(self.chunk_size):
                chunk = chunk.clone().requires_grad_(True)
                energy = self._evaluate(chunk)
                (grad,) = torch.autograd.grad(energy.sum(), chunk)
                energies.append(energy.detach())
                forces.append(-grad)
        return torch.cat(energies), torch.cat(forces)


class _ChunkedEnergy(torch.autograd.Function):
    """Energy of a batch larger than one chunk: forces are computed chunk by chunk in the forward
    pass (no graph is kept, so memory stays bounded) and used by the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, forcefield: TorchForceField) -> torch.Tensor:
        energy, forces = forcefield.energy_and_forces(x)
        ctx.save_for_backward(forces)
        return energy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_energy: torch.Tensor):
        (forces,) = ctx.saved_tensors
        return -grad_energy[:, None, None] * forces, None


def _n_pairs(term: _Term) -> int:
    if isinstance(term, _GBSAOBC | _CustomGB):
        return 2 * int(term.i.numel()) * (1 + len(getattr(term, "computed", ())))
    if isinstance(term, _Nonbonded | _CustomNonbonded):
        return int(term.i.numel())
    return 0
