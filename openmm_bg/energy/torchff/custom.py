"""OpenMM's custom forces (``CustomExternalForce``, ``CustomBondForce``, ``CustomAngleForce``,
``CustomTorsionForce``, ``CustomCompoundBondForce``, ``CustomNonbondedForce``) and what all custom
forces share: global and per-item parameters, discrete tabulated functions, expression checks.

Energy expressions are compiled by `openmm_bg.energy.torchff.expressions` and evaluated on
per-item tensors: per-item parameters are columns ``[n_items, 1]``, geometric variables
(``r``, ``theta``, ``x``...) are ``[n_items, batch]``, and the terms sum over the items to
``[batch]``. Units are OpenMM's: nm, radians, kJ/mol; positions come in the internal
``[3, n_atoms, batch]`` layout (`TorchForceField` takes ``[batch, n_atoms, 3]``). Discrete
tabulated functions (``Discrete1DFunction`` ... ``Discrete3DFunction``) become lookups;
continuous ones, periodic boundary conditions, cutoffs and interaction groups raise
``_Unsupported``. ``CustomGBForce`` (in `openmm_bg.energy.torchff.gb`) builds on `_CustomTerm`.

Examples
--------
>>> import openmm, torch
>>> force = openmm.CustomExternalForce("k*x^2")
>>> _ = force.addGlobalParameter("k", 2.0)
>>> _ = force.addParticle(0, [])
>>> term = _CustomExternal(force, torch.float64)
>>> x = torch.tensor([[3.0], [0.0], [0.0]], dtype=torch.float64)[:, :, None]  # 1 atom, batch 1
>>> term.globals, term.energy(x, term.globals)  # kJ/mol
({'k': 2.0}, tensor([18.], dtype=torch.float64))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .expressions import Expression, ExpressionError
from .terms import (
    _all_pairs,
    _angle,
    _angle_vec,
    _atom_index,
    _dihedral,
    _dihedral_vec,
    _distance,
    _distance_vec,
    _exclusions,
    _gather,
    _require_no_cutoff,
    _sum_rows,
    _Term,
    _Unsupported,
)

if TYPE_CHECKING:  # the evaluation needs no OpenMM (benchmarks/gpu_check.py runs it without)
    import openmm

__all__: list[str] = []


# --------------------------------------------------------------------------------------------
# tabulated functions


def _tabulated(force, term: _Term, dtype) -> dict[str, tuple[int, Callable]]:
    """Discrete tabulated functions of a custom force as expression functions."""
    if not hasattr(force, "getNumTabulatedFunctions"):
        return {}
    table = {}
    for k in range(force.getNumTabulatedFunctions()):
        name = force.getTabulatedFunctionName(k)
        fn = force.getTabulatedFunction(k)
        kind = type(fn).__name__
        if kind == "Discrete1DFunction":
            values, sizes = fn.getFunctionParameters(), ()
        elif kind == "Discrete2DFunction":
            nx, ny, values = fn.getFunctionParameters()
            sizes = (nx,)
        elif kind == "Discrete3DFunction":
            nx, ny, nz, values = fn.getFunctionParameters()
            sizes = (nx, ny)
        else:
            raise _Unsupported(f"{type(force).__name__} (tabulated function {name!r} of type {kind}; only "
                               "Discrete1D/2D/3DFunction are supported)")
        buf = f"table_{k}"
        term._buf(buf, list(values), dtype, column=False)
        table[name] = (len(sizes) + 1, _DiscreteLookup(term, buf, sizes))
    return table


class _DiscreteLookup:
    """A discrete tabulated function of a term: ``lookup(*indices)`` reads the term's buffer ``buf``
    (a callable object rather than a closure, so that a force field pickles)."""

    def __init__(self, term: _Term, buf: str, sizes: tuple[int, ...]):
        self.term, self.buf, self.sizes = term, buf, tuple(sizes)

    def __call__(self, *args):
        values = getattr(self.term, self.buf)
        index = None
        stride = 1
        for n, arg in enumerate(args):
            a = torch.as_tensor(arg, device=values.device)
            a = torch.round(a.detach()).long() if a.is_floating_point() else a.long()
            index = a * stride if index is None else index + a * stride
            if n < len(self.sizes):
                stride *= self.sizes[n]
        return values[index]


# --------------------------------------------------------------------------------------------
# parameters


def _no_periodic(force) -> None:
    if force.usesPeriodicBoundaryConditions():
        raise _Unsupported(f"{type(force).__name__} (periodic boundary conditions are not supported)")


def _take_particles(value, index: torch.Tensor):
    """Per-particle ``value`` (float, [n, 1] or [n, batch]) at particles ``index``."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return value.index_select(0, index)


def _pair_names(names: Sequence[str]) -> list[str]:
    """The pair variables ``a1, a2, b1, b2...`` of per-particle ``names`` ``a, b...``."""
    return [f"{v}{s}" for v in names for s in "12"]


def _set_pair_values(env: dict, values: dict, first: torch.Tensor, second: torch.Tensor) -> None:
    """Put per-particle ``values`` of the pairs' first and second particles into ``env`` as ``name1, name2``."""
    for name, value in values.items():
        env[name + "1"] = _take_particles(value, first)
        env[name + "2"] = _take_particles(value, second)


class _CustomTerm(_Term):
    """What the custom forces share: global parameters (``globals``: name -> default), tabulated
    functions (``functions``), per-item parameters (``names`` with their buffers ``buffers_``).

    Subclasses check what they refuse (periodic boxes, cutoffs) before calling this constructor,
    which reads the tabulated functions (and refuses continuous ones)."""

    def __init__(self, force, dtype):
        super().__init__(type(force).__name__)
        self.globals = {force.getGlobalParameterName(k): float(force.getGlobalParameterDefaultValue(k))
                        for k in range(force.getNumGlobalParameters())}
        self.functions = _tabulated(force, self, dtype)
        self.names: list[str] = []
        self.buffers_: list[str] = []

    def _set_parameters(self, names: Sequence[str], rows: Sequence[Sequence[float]], dtype) -> None:
        """Register per-item parameter columns [n_items, 1] (``rows``: [n_items][len(names)])."""
        self.names = list(names)
        values = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
        self.buffers_ = []
        for k in range(len(names)):
            buf = f"p_{k}"
            self._buf(buf, values[:, k], dtype)
            self.buffers_.append(buf)

    def _set_particle_parameters(self, force, dtype) -> None:
        """Per-particle parameters of a CustomNonbondedForce / CustomGBForce."""
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        self._set_parameters(names, [list(force.getParticleParameters(p)) for p in range(force.getNumParticles())],
                             dtype)

    def _parameter_values(self) -> dict[str, torch.Tensor]:
        """Per-item parameters by name, [n_items, 1] each."""
        return {name: getattr(self, b) for name, b in zip(self.names, self.buffers_, strict=True)}

    def _expression(self, text: str, names: Sequence[str]) -> Expression:
        """``text`` compiled and checked against the variables ``names`` and ``self.functions``."""
        try:
            expression = Expression(text)
            expression.check(names, self.functions)
        except ExpressionError as err:
            raise _Unsupported(f"{self.name} ({err})") from err
        return expression


# --------------------------------------------------------------------------------------------
# forces summed over items (particles, bonds, angles, torsions, compound bonds)


class _CustomItems(_CustomTerm):
    """A custom force that sums its energy expression over items of a fixed number of atoms;
    subclasses give the items' atoms and geometric variables (`_geometry`)."""

    def _set_items(self, force, dtype, atoms: np.ndarray, names: Sequence[str],
                   rows: Sequence[Sequence[float]], variables: Sequence[str]) -> None:
        """``atoms`` [n_items, atoms per item]; ``rows`` the per-item parameter values;
        ``variables`` the geometric variable names of the energy expression."""
        self.count = int(atoms.shape[0])
        self._buf("idx", atoms, torch.long)
        self._set_parameters(names, rows, dtype)
        self.expression = self._expression(force.getEnergyFunction(), [*self.names, *self.globals, *variables])

    def _geometry(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError

    def energy(self, x, params):
        if self.count == 0:
            return x.new_zeros(x.shape[2])
        env = dict(params)
        env.update(self._parameter_values())
        env.update(self._geometry(x))
        return _sum_rows(self.expression.evaluate(env, self.functions), x.shape[2], self.count, x)


class _CustomExternal(_CustomItems):
    """CustomExternalForce: an expression of the particle's ``x, y, z``."""

    def __init__(self, force: openmm.CustomExternalForce, dtype):
        _no_periodic(force)
        super().__init__(force, dtype)
        names = [force.getPerParticleParameterName(k) for k in range(force.getNumPerParticleParameters())]
        rows = [force.getParticleParameters(p) for p in range(force.getNumParticles())]
        self._set_items(force, dtype, _atom_index(rows, 1), names, [list(r[1]) for r in rows], ["x", "y", "z"])

    def _geometry(self, x):
        pos = _gather(x, self.idx[:, 0])
        return {"x": pos[0], "y": pos[1], "z": pos[2]}


#: The getters' word, the atoms per item, the geometric variable and its function, per force.
_BONDED_KINDS = {
    "CustomBondForce": ("Bond", 2, "r", _distance),
    "CustomAngleForce": ("Angle", 3, "theta", _angle),
    "CustomTorsionForce": ("Torsion", 4, "theta", _dihedral),
}


class _CustomBonded(_CustomItems):
    """CustomBondForce (``r``), CustomAngleForce and CustomTorsionForce (``theta``)."""

    def __init__(self, force, dtype):
        _no_periodic(force)
        super().__init__(force, dtype)
        word, n_atoms, self.variable, self.geometry = _BONDED_KINDS[type(force).__name__]
        rows = [getattr(force, f"get{word}Parameters")(b) for b in range(getattr(force, f"getNum{word}s")())]
        names = [getattr(force, f"getPer{word}ParameterName")(k)
                 for k in range(getattr(force, f"getNumPer{word}Parameters")())]
        self._set_items(force, dtype, _atom_index(rows, n_atoms), names, [list(r[n_atoms]) for r in rows],
                        [self.variable])

    def _geometry(self, x):
        return {self.variable: self.geometry(x, *self.idx.T)}


class _CustomCompoundBond(_CustomItems):
    """CustomCompoundBondForce: ``x1 y1 z1 ...`` and ``distance(p1, p2)``, ``angle``, ``dihedral``."""

    def __init__(self, force: openmm.CustomCompoundBondForce, dtype):
        _no_periodic(force)
        super().__init__(force, dtype)
        self.n_atoms = n_atoms = force.getNumParticlesPerBond()
        rows = [force.getBondParameters(b) for b in range(force.getNumBonds())]
        names = [force.getPerBondParameterName(k) for k in range(force.getNumPerBondParameters())]
        self.functions.update(distance=(2, _distance_vec), angle=(3, _angle_vec), dihedral=(4, _dihedral_vec))
        variables = [f"{c}{k + 1}" for k in range(n_atoms) for c in "xyz"] + [f"p{k + 1}" for k in range(n_atoms)]
        self._set_items(force, dtype, _atom_index([r[0] for r in rows], n_atoms), names,
                        [list(r[1]) for r in rows], variables)

    def _geometry(self, x):
        env = {}
        for k in range(self.n_atoms):
            pos = _gather(x, self.idx[:, k])
            env[f"p{k + 1}"] = pos
            env[f"x{k + 1}"], env[f"y{k + 1}"], env[f"z{k + 1}"] = pos[0], pos[1], pos[2]
        return env


# --------------------------------------------------------------------------------------------
# pair forces


class _CustomNonbonded(_CustomTerm):
    """CustomNonbondedForce without cutoff or interaction groups; computed values supported."""

    def __init__(self, force: openmm.CustomNonbondedForce, dtype):
        _require_no_cutoff(force)
        if force.getNumInteractionGroups():
            raise _Unsupported("CustomNonbondedForce (interaction groups are not supported)")
        super().__init__(force, dtype)
        self._set_particle_parameters(force, dtype)
        self.computed = []
        known = [*self.names, *self.globals]
        for k in range(force.getNumComputedValues() if hasattr(force, "getNumComputedValues") else 0):
            cname, text = force.getComputedValueParameters(k)
            self.computed.append((cname, self._expression(text, known)))
            known.append(cname)
        i, j = _all_pairs(force.getNumParticles(), _exclusions(force))
        self._buf("i", i, torch.long)
        self._buf("j", j, torch.long)
        pair_names = _pair_names([*self.names, *(c for c, _ in self.computed)])
        self.expression = self._expression(force.getEnergyFunction(), [*pair_names, *self.globals, "r"])

    def n_pairs(self) -> int:
        return int(self.i.numel())

    def energy(self, x, params):
        if self.i.numel() == 0:
            return x.new_zeros(x.shape[2])
        per = dict(params)
        values = self._parameter_values()
        per.update(values)
        for cname, expression in self.computed:
            values[cname] = expression.evaluate(per, self.functions)
            per[cname] = values[cname]
        env = dict(params)
        _set_pair_values(env, values, self.i, self.j)
        env["r"] = _distance(x, self.i, self.j)
        return _sum_rows(self.expression.evaluate(env, self.functions), x.shape[2], self.i.numel(), x)
