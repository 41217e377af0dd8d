"""`MolecularSystem`: an OpenMM System with the metadata a Boltzmann Generator needs.

A `MolecularSystem` bundles an ``openmm.System``, its ``openmm.app.Topology`` (and the
``mdtraj.Topology``), reference positions in nm, the temperature in K, and, where the system
has them, named reaction coordinates and metastable states.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> ala.n_atoms, ala.temperature
(22, 300.0)
>>> sorted(ala.states)
['C7ax', 'C7eq']
>>> bool(ala.states["C7eq"](ala.positions[None])[0])
True
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch

from .._validation import temperature_kelvin
from ..constants import MOLAR_GAS_CONSTANT, kT_kJ_per_mol  # noqa: F401  (re-exported: old home)
from ..geometry import as_tensor

__all__ = ["MolecularSystem", "ReactionCoordinate", "State", "PeriodicSystemError", "require_nonperiodic",
           "kT_kJ_per_mol", "interval_state", "intervals_state", "dihedral_coordinate"]

@dataclass(frozen=True)
class ReactionCoordinate:
    """A named collective variable R(x).

    Parameters
    ----------
    name : str
        Name, e.g. ``"phi"``.
    function : callable
        Maps positions ``[batch, n_atoms, 3]`` (nm; torch tensor, differentiable) to ``[batch]``.
    atoms : tuple of int
        Atoms the coordinate depends on (informative).
    periodic : bool
        Whether the coordinate is an angle on the circle (period 2 pi).
    bounds : (float, float)
        Range used for histograms, profiles and the RC loss.
    unit : str
        Unit of the value (``"rad"``, ``"nm"``).
    description : str
        Human-readable definition.
    spec : dict, optional
        A JSON-able recipe that rebuilds the coordinate (`openmm_bg.systems.record`), e.g.
        ``{"kind": "dihedral", "atoms": [4, 6, 8, 14]}``; None where the coordinate is only a
        function (then model files cannot carry it).

    Calling the coordinate accepts a torch tensor (returns a tensor, keeps the graph), a numpy
    array, an OpenMM Quantity or an ``mdtraj.Trajectory`` (returns numpy).
    """

    name: str
    function: Callable[[torch.Tensor], torch.Tensor]
    atoms: tuple[int, ...] = ()
    periodic: bool = False
    bounds: tuple[float, float] = (-np.pi, np.pi)
    unit: str = "rad"
    description: str = ""
    spec: dict | None = field(default=None, compare=False, hash=False)

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            return self.function(x)
        with torch.no_grad():
            return self.function(as_tensor(x, dtype=torch.float64)).numpy()


@dataclass(frozen=True)
class State:
    """A metastable state: a named boolean indicator of configurations.

    Parameters
    ----------
    name : str
        Name, e.g. ``"C7ax"``.
    indicator : callable
        Maps positions ``[batch, n_atoms, 3]`` (nm, torch) to a boolean tensor ``[batch]``.
    description : str
        Human-readable definition, e.g. ``"0 < phi < 2.2 rad"``.
    spec : dict, optional
        A JSON-able recipe that rebuilds the state from the system's coordinates
        (`openmm_bg.systems.record`); None where the state is only a function.
    """

    name: str
    indicator: Callable[[torch.Tensor], torch.Tensor]
    description: str = ""
    spec: dict | None = field(default=None, compare=False, hash=False)

    def __call__(self, x) -> np.ndarray:
        """Boolean numpy array ``[batch]``: which configurations lie in the state."""
        with torch.no_grad():
            t = x if isinstance(x, torch.Tensor) else as_tensor(x, dtype=torch.float64)
            return np.asarray(self.indicator(t).cpu().numpy(), dtype=bool)


def interval_state(name: str, rc: ReactionCoordinate, low: float, high: float,
                   complement: bool = False) -> State:
    """State ``low < rc < high`` (or its complement)."""
    return intervals_state(name, [(rc, low, high, complement)])


def intervals_state(name: str, terms) -> State:
    """State where every term holds: a term ``(rc, low, high, complement)`` is ``low < rc < high``
    (``complement=True``: its negation).

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> ala = bgs.load("alanine_dipeptide")
    >>> phi, psi = ala.reaction_coordinates["phi"], ala.reaction_coordinates["psi"]
    >>> s = intervals_state("ext", [(phi, 0.0, 2.2, True), (psi, -2.2, 1.0, True)])
    >>> s.description
    'not (0 < phi < 2.2 rad) and not (-2.2 < psi < 1 rad)'
    """
    terms = [(rc, float(low), float(high), bool(complement)) for rc, low, high, complement in terms]
    if not terms:
        raise ValueError("intervals_state needs at least one (coordinate, low, high, complement) term")

    def indicator(x):
        result = None
        for rc, low, high, complement in terms:
            v = rc.function(x)
            inside = (v > low) & (v < high)
            inside = ~inside if complement else inside
            result = inside if result is None else result & inside
        return result

    texts = []
    for rc, low, high, complement in terms:
        text = f"{low:g} < {rc.name} < {high:g} {rc.unit}"
        texts.append(f"not ({text})" if complement else text)
    spec = None
    if all(rc.spec is not None for rc, *_ in terms):
        spec = {"kind": "intervals", "terms": [{"coordinate": rc.name, "low": low, "high": high,
                                                "complement": complement} for rc, low, high, complement in terms]}
    return State(name, indicator, " and ".join(texts), spec=spec)


def dihedral_coordinate(name: str, atoms, description: str | None = None) -> ReactionCoordinate:
    """The dihedral angle (rad, in ``(-pi, pi]``) of four atoms, serialisable in model files.

    Examples
    --------
    >>> rc = dihedral_coordinate("phi", (4, 6, 8, 14))
    >>> rc.spec, rc.periodic
    ({'kind': 'dihedral', 'atoms': [4, 6, 8, 14]}, True)
    """
    from ..geometry import dihedral

    i, j, k, l = (int(a) for a in atoms)
    return ReactionCoordinate(name, lambda x: dihedral(x, i, j, k, l), atoms=(i, j, k, l), periodic=True,
                              bounds=(-np.pi, np.pi), unit="rad",
                              description=description or f"dihedral {(i, j, k, l)}",
                              spec={"kind": "dihedral", "atoms": [i, j, k, l]})


@dataclass
class MolecularSystem:
    """An OpenMM system ready for Boltzmann-Generator work.

    Parameters
    ----------
    name : str
        Short name (built-in name or file stem).
    system : openmm.System
        The potential; energies are in kJ/mol as OpenMM computes them.
    topology : openmm.app.Topology
        Topology matching ``system`` atom by atom.
    positions : numpy.ndarray
        Reference positions, ``[n_atoms, 3]`` float64, nm.
    temperature : float
        Temperature in K.
    reaction_coordinates : dict of str -> ReactionCoordinate
        Named coordinates (may be empty).
    states : dict of str -> State
        Named metastable states (may be empty).
    rotation_invariant : bool
        True where the energy is invariant to rigid-body motion (molecules in vacuum or
        implicit solvent); False for systems with external potentials (toy systems).
    free_dims : numpy.ndarray or None
        Boolean ``[n_atoms, 3]`` mask of Cartesian coordinates that move freely; ``None``
        means all. 2D toy systems confine z with a harmonic term and mark it not free.
    analytic_energy : callable or None
        Optional torch function ``[batch, n_atoms, 3] -> [batch]`` giving the reduced energy (kT)
        without OpenMM, for fast tests of toy systems.
    description : str
        One line for listings.
    hydrogen_mass : float or None
        Dalton: the hydrogen mass ``system`` was repartitioned to (`with_hydrogen_mass`), or None
        (the force field's masses). Informative (the System's masses are what MD uses); model files
        carry it.
    """

    name: str
    system: openmm.System
    topology: app.Topology
    positions: np.ndarray
    temperature: float
    reaction_coordinates: dict[str, ReactionCoordinate] = field(default_factory=dict)
    states: dict[str, State] = field(default_factory=dict)
    rotation_invariant: bool = True
    free_dims: np.ndarray | None = None
    analytic_energy: Callable[[torch.Tensor], torch.Tensor] | None = None
    description: str = ""
    hydrogen_mass: float | None = None

    def __post_init__(self):
        pos = self.positions
        if hasattr(pos, "value_in_unit"):
            pos = pos.value_in_unit(unit.nanometer)
        pos = np.asarray(pos, dtype=np.float64)
        if pos.ndim != 2 or pos.shape[1] != 3:
            raise ValueError(f"positions must have shape [n_atoms, 3] in nm, got {pos.shape}")
        n_sys, n_top = self.system.getNumParticles(), self.topology.getNumAtoms()
        if not (n_sys == n_top == pos.shape[0]):
            raise ValueError(
                f"atom counts disagree: System has {n_sys} particles, Topology {n_top} atoms, "
                f"positions {pos.shape[0]} rows; load positions and topology from the same "
                "structure the System was built from"
            )
        if not np.all(np.isfinite(pos)):
            raise ValueError("reference positions contain NaN or inf; check the coordinate file")
        self.positions = pos
        self.temperature = temperature_kelvin("temperature", self.temperature)  # K; a Quantity is converted
        if self.free_dims is not None:
            self.free_dims = np.asarray(self.free_dims, dtype=bool)
            if self.free_dims.shape != pos.shape:
                raise ValueError(f"free_dims must have shape {pos.shape}, got {self.free_dims.shape}")

    # ------------------------------------------------------------------ properties
    @property
    def n_atoms(self) -> int:
        """Number of atoms (particles)."""
        return self.system.getNumParticles()

    @property
    def kT(self) -> float:
        """Thermal energy at ``temperature`` in kJ/mol."""
        return kT_kJ_per_mol(self.temperature)

    @property
    def periodic(self) -> bool:
        """True for periodic (explicit-solvent) systems, which a Boltzmann Generator refuses."""
        return bool(self.system.usesPeriodicBoundaryConditions())

    @property
    def masses(self) -> np.ndarray:
        """Particle masses in dalton, ``[n_atoms]``."""
        return np.array([self.system.getParticleMass(i).value_in_unit(unit.dalton)
                         for i in range(self.n_atoms)])

    @property
    def constraints(self) -> list[tuple[int, int, float]]:
        """Distance constraints ``(i, j, length_nm)`` of the System."""
        out = []
        for k in range(self.system.getNumConstraints()):
            i, j, d = self.system.getConstraintParameters(k)
            out.append((int(i), int(j), float(d.value_in_unit(unit.nanometer))))
        return out

    @cached_property
    def mdtraj_topology(self):
        """The topology as an ``mdtraj.Topology``."""
        import mdtraj

        return mdtraj.Topology.from_openmm(self.topology)

    # ------------------------------------------------------------------ helpers
    def to_mdtraj(self, positions=None):
        """An ``mdtraj.Trajectory`` of ``positions`` (``[n_frames, n_atoms, 3]`` nm) or the reference."""
        import mdtraj

        xyz = self.positions[None] if positions is None else np.asarray(
            as_tensor(positions, dtype=torch.float64).detach().cpu().numpy())
        if xyz.ndim == 2:
            xyz = xyz[None]
        return mdtraj.Trajectory(xyz.astype(np.float32), self.mdtraj_topology)

    def reduced_energy(self, positions=None, platform: str = "Reference") -> np.ndarray:
        """Deprecated: use ``openmm_bg.energy.energy_for(system, platform=...)(x)``.

        Reduced potential energy u = U/kT of each configuration at ``temperature`` (float64, kT),
        from the shared energy of `openmm_bg.energy.energy_for` (contexts built once per system).

        Parameters
        ----------
        positions : array-like, optional
            ``[n_atoms, 3]`` or ``[batch, n_atoms, 3]`` in nm; default the reference positions.
        platform : str
            OpenMM platform name.

        Returns
        -------
        numpy.ndarray
            ``[batch]`` float64, in kT; ``+inf`` for failed configurations.
        """
        import warnings

        from ..energy import energy_for  # compat: upward import (systems sits below energy)

        warnings.warn("MolecularSystem.reduced_energy is deprecated; use "
                      "openmm_bg.energy.energy_for(system, platform=...)(x)", DeprecationWarning, stacklevel=2)
        x = self.positions if positions is None else positions
        x = as_tensor(x, torch.float64).reshape(-1, self.n_atoms, 3)
        return energy_for(self, platform=platform)(x).numpy()

    def with_temperature(self, temperature: float) -> MolecularSystem:
        """A copy at another temperature (same System object, new ``temperature``)."""
        other = copy.copy(self)
        other.temperature = temperature_kelvin("temperature", temperature)
        return other

    def with_hydrogen_mass(self, hydrogen_mass: float) -> MolecularSystem:
        """A copy whose System has hydrogen mass repartitioning (same energies, heavier hydrogens).

        Every hydrogen gets ``hydrogen_mass`` (dalton) and its bonded heavy atom loses the difference
        (`openmm_bg.systems.hydrogen_mass.repartition_hydrogen_mass`); with ``constraints="hbonds"``
        MD then runs at 4 fs. Energies, forces and the Boltzmann distribution are unchanged; the
        dynamics (and the constraints' Fixman factor) are those of the new masses.

        Examples
        --------
        >>> import openmm_bg.systems as bgs
        >>> ala = bgs.load("alanine_dipeptide", constraints="hbonds")
        >>> hmr = ala.with_hydrogen_mass(1.5)
        >>> hmr.hydrogen_mass, bool(abs(hmr.masses.sum() - ala.masses.sum()) < 1e-12)
        (1.5, True)
        """
        from .hydrogen_mass import repartition_hydrogen_mass

        other = copy.copy(self)
        other.system = repartition_hydrogen_mass(self.system, self.topology, hydrogen_mass)
        other.hydrogen_mass = float(hydrogen_mass)
        return other

    def atom_indices(self, selection: str) -> np.ndarray:
        """Atom indices of an mdtraj selection string, e.g. ``"backbone"``."""
        return self.mdtraj_topology.select(selection)

    def summary(self) -> str:
        """One line: name, atoms, temperature, states."""
        states = ", ".join(f"{k} ({v.description})" for k, v in self.states.items()) or "none"
        flag = " [periodic]" if self.periodic else ""
        return (f"{self.name}: {self.n_atoms} atoms, {self.temperature:g} K{flag}; "
                f"states: {states}")

    def require_nonperiodic(self, what: str = "a Boltzmann Generator") -> None:
        """Raise `PeriodicSystemError` if the system is periodic (see `require_nonperiodic`)."""
        require_nonperiodic(self, what)


class PeriodicSystemError(ValueError):
    """A periodic (explicit-solvent) system was given where a Boltzmann Generator needs a molecule."""


def require_nonperiodic(system: MolecularSystem | openmm.System, what: str = "a Boltzmann Generator",
                        remedy: str | None = None) -> None:
    """Refuse a periodic system (explicit solvent or a periodic box) with one clear message.

    The one periodic check of openmm-bg: Boltzmann Generators model single molecules in vacuum or
    implicit solvent; every layer that needs that calls this function.

    Parameters
    ----------
    system : MolecularSystem or openmm.System
        The system to check.
    what : str
        What refuses it, as the subject of the message (e.g. ``"openmm_bg.simulate"``).
    remedy : str, optional
        A further way out, appended to the message (e.g. an ``allow_periodic=True`` option).

    Raises
    ------
    PeriodicSystemError
        If ``system`` uses periodic boundary conditions.

    Examples
    --------
    >>> import openmm
    >>> box = openmm.System()
    >>> box.setDefaultPeriodicBoxVectors(openmm.Vec3(2, 0, 0), openmm.Vec3(0, 2, 0), openmm.Vec3(0, 0, 2))
    >>> _ = box.addParticle(1.0)
    >>> nb = openmm.NonbondedForce(); nb.setNonbondedMethod(openmm.NonbondedForce.PME)
    >>> _ = nb.addParticle(0.0, 0.3, 0.0); _ = box.addForce(nb)
    >>> try:
    ...     require_nonperiodic(box, "the demo")
    ... except PeriodicSystemError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    the System is periodic (explicit solvent or a periodic box); the demo supports single molecules ...
    """
    if isinstance(system, MolecularSystem):
        omm, label = system.system, f"system {system.name!r}"
    else:
        omm, label = system, "the System"
    if not omm.usesPeriodicBoundaryConditions():
        return
    message = (f"{label} is periodic (explicit solvent or a periodic box); {what} supports single molecules "
               "in vacuum or implicit solvent only. Rebuild the System without solvent (vacuum, or "
               "implicitSolvent=OBC2 with nonbondedMethod=NoCutoff)")
    if remedy:
        message += f", or {remedy}"
    raise PeriodicSystemError(message)

