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
raising, so that a caller can fall back to OpenMM contexts. The translations live in
`openmm_bg.energy.torchff.bonded`, `.nonbonded`, `.gb` and `.custom`; this module maps each force
class to its term (``_BUILDERS``), checks the system and sums the terms.

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

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .bonded import _HarmonicAngle, _HarmonicBond, _PeriodicTorsion, _RBTorsion
from .custom import _CustomBonded, _CustomCompoundBond, _CustomExternal, _CustomNonbonded
from .gb import _GBSAOBC, _CustomGB
from .nonbonded import _Nonbonded
from .terms import ONE_4PI_EPS0, _Term, _Unsupported

if TYPE_CHECKING:  # the evaluation needs no OpenMM (benchmarks/gpu_check.py runs it without)
    import openmm

__all__ = ["TorchForceField", "unsupported_forces", "ONE_4PI_EPS0"]

#: Forces that add no energy and are skipped.
IGNORED_FORCES = ("CMMotionRemover",)

#: Target number of pair interactions per chunk (batch x pairs) of the automatic chunk size.
_DEFAULT_PAIRS_PER_CHUNK = 1_000_000

#: The term class that translates each supported force class (keyed by the class name, so that this
#: module imports without OpenMM).
_BUILDERS: dict[str, Callable[[openmm.Force, torch.dtype], _Term]] = {
    "HarmonicBondForce": _HarmonicBond,
    "HarmonicAngleForce": _HarmonicAngle,
    "PeriodicTorsionForce": _PeriodicTorsion,
    "RBTorsionForce": _RBTorsion,
    "NonbondedForce": _Nonbonded,
    "GBSAOBCForce": _GBSAOBC,
    "CustomExternalForce": _CustomExternal,
    "CustomBondForce": _CustomBonded,
    "CustomAngleForce": _CustomBonded,
    "CustomTorsionForce": _CustomBonded,
    "CustomCompoundBondForce": _CustomCompoundBond,
    "CustomNonbondedForce": _CustomNonbonded,
    "CustomGBForce": _CustomGB,
}


def _build(force, dtype) -> _Term | None:
    name = type(force).__name__
    if name in IGNORED_FORCES:
        return None
    builder = _BUILDERS.get(name) if type(force).__module__.startswith("openmm") else None
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
        n_pairs = max([t.n_pairs() for t in terms] + [1])
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
