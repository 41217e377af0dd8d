"""Implicit solvent: OpenMM's ``GBSAOBCForce`` and ``CustomGBForce``, both without cutoff.

``GBSAOBCForce`` is the OBC2 generalized Born model with the ACE surface-area term, written as
OpenMM's Reference platform (``ReferenceObc``) computes it: Born radii from the pairwise
descreening integrals (dielectric offset 0.009 nm, probe radius 0.14 nm), then the GB pair and
self energies with ``ONE_4PI_EPS0 (1/eps_solute - 1/eps_solvent)``. ``CustomGBForce`` evaluates
any computed values and energy terms of the types ``SingleParticle``, ``ParticlePair`` and
``ParticlePairNoExclusions`` (pair values are summed over both orderings of each pair).
Units: nm, e, kJ/mol. The terms map positions ``[3, n_atoms, batch]`` (internal layout) to
energies ``[batch]``; their pair work is over all ``n (n - 1) / 2`` pairs.

Examples
--------
>>> import openmm, torch
>>> force = openmm.GBSAOBCForce()
>>> _ = force.addParticle(1.0, 0.15, 0.8)  # charge e, radius nm, scale
>>> force.setSurfaceAreaEnergy(0.0)
>>> x = torch.zeros(3, 1, 1, dtype=torch.float64)
>>> e = _GBSAOBC(force, torch.float64).energy(x, {})  # Born self energy of one ion, kJ/mol
>>> round(float(e), 2)
-486.39
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from .custom import _CustomTerm, _pair_names, _set_pair_values
from .terms import (
    ONE_4PI_EPS0,
    _all_pairs,
    _dot,
    _exclusions,
    _gather,
    _kept,
    _rebuild,
    _require_no_cutoff,
    _sum_rows,
    _Term,
    _Unsupported,
    _value,
)

if TYPE_CHECKING:  # the evaluation needs no OpenMM (benchmarks/gpu_check.py runs it without)
    import openmm

__all__: list[str] = []


class _GBSAOBC(_Term):
    """OBC2 generalized Born with the ACE surface term, as OpenMM's ``ReferenceObc``."""

    def __init__(self, force: openmm.GBSAOBCForce, dtype):
        super().__init__("GBSAOBCForce")
        if force.getNonbondedMethod() != type(force).NoCutoff:
            raise _Unsupported("GBSAOBCForce (nonbondedMethod with a cutoff; only NoCutoff is supported)")
        rows = [force.getParticleParameters(p) for p in range(force.getNumParticles())]
        spec = {"q": np.array([_value(r[0]) for r in rows], dtype=np.float64),
                "radius": np.array([_value(r[1]) for r in rows], dtype=np.float64),
                "scale": np.array([float(r[2]) for r in rows], dtype=np.float64),
                "solute_dielectric": float(force.getSoluteDielectric()),
                "solvent_dielectric": float(force.getSolventDielectric()),
                "surface_area_energy": _value(force.getSurfaceAreaEnergy())}
        self._setup(spec, dtype)

    def _setup(self, spec: dict, dtype) -> None:
        """The per-pair buffers from the per-particle parameters in ``spec``."""
        self.spec, self.spec_dtype = spec, dtype
        q, radius, scale = spec["q"], spec["radius"], spec["scale"]
        n = len(q)
        offset = 0.009
        ro = radius - offset
        eps_in, eps_out = spec["solute_dielectric"], spec["solvent_dielectric"]
        prefactor = -ONE_4PI_EPS0 * (1.0 / eps_in - 1.0 / eps_out) if eps_in != 0 and eps_out != 0 else 0.0
        self.sa = 4.0 * math.pi * spec["surface_area_energy"]
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

    def __reduce__(self):
        # pickled as its per-particle parameters (the pair buffers grow as n_atoms^2)
        return _rebuild, (type(self), "GBSAOBCForce", self.spec, self.spec_dtype)

    def n_pairs(self) -> int:
        return 2 * int(self.i.numel())

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



def _broadcast(value, n: int, batch: int, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        value = torch.as_tensor(float(value), dtype=like.dtype, device=like.device)
    return value.to(like.dtype).expand(n, batch)


class _CustomGB(_CustomTerm):
    """CustomGBForce: computed values and energy terms of single-particle and pair types."""

    def __init__(self, force: openmm.CustomGBForce, dtype):
        _require_no_cutoff(force)
        super().__init__(force, dtype)
        # OpenMM's computation types, read from the force (instance attributes: no OpenMM needed to evaluate)
        self.SINGLE, self.PAIR = type(force).SingleParticle, type(force).ParticlePair
        self.PAIR_NOEX = type(force).ParticlePairNoExclusions
        n = force.getNumParticles()
        self.n = n
        self._set_particle_parameters(force, dtype)
        excluded = _exclusions(force)
        i, j = _all_pairs(n)
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        self._buf("a2", np.concatenate([i, j]), torch.long)
        self._buf("b2", np.concatenate([j, i]), torch.long)
        self.has_exclusions = bool(excluded)
        if excluded:
            sel = np.flatnonzero(_kept(n, i, j, excluded))
            self._buf("sel", sel, torch.long)
            self._buf("ei", i[sel], torch.long)
            self._buf("ej", j[sel], torch.long)
            self._buf("ea2", np.concatenate([i[sel], j[sel]]), torch.long)
        per_particle = [*self.names]

        def variables(kind, what: str) -> list[str]:
            if kind == self.SINGLE:
                return [*per_particle, *self.globals, "x", "y", "z"]
            if kind in (self.PAIR, self.PAIR_NOEX):
                return [*_pair_names(per_particle), *self.globals, "r"]
            raise _Unsupported(f"CustomGBForce ({what} of unknown type {kind})")  # pragma: no cover

        self.computed = []
        for k in range(force.getNumComputedValues()):
            cname, text, kind = force.getComputedValueParameters(k)
            self.computed.append((cname, self._expression(text, variables(kind, f"computed value {cname!r}")),
                                  kind))
            per_particle.append(cname)
        self.terms = []
        for k in range(force.getNumEnergyTerms()):
            text, kind = force.getEnergyTermParameters(k)
            self.terms.append((self._expression(text, variables(kind, "energy term")), kind))

    def n_pairs(self) -> int:
        return 2 * int(self.i.numel()) * (1 + len(self.computed))

    def energy(self, x, params):
        batch = x.shape[2]
        values = self._parameter_values()
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
            _set_pair_values(env, values, first, second)
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
