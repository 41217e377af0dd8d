"""Hydrogen mass repartitioning (HMR): heavier hydrogens, lighter heavy atoms, same energies.

`repartition_hydrogen_mass` returns a copy of an ``openmm.System`` in which every hydrogen gets
the mass ``hydrogen_mass`` (dalton) and the heavy atom it is bonded to loses what the hydrogen
gained, so the total mass is unchanged. The forces are not touched: energies and forces are those
of the original System, bit for bit, and so is the configurational Boltzmann distribution
``exp(-u(x))``, which does not depend on masses. What changes is the dynamics: the fastest
vibrations (bond angles around hydrogen, once the bonds to hydrogen are constrained) slow down, so
Langevin MD with ``constraints="hbonds"`` runs stably at 4 fs instead of 2 fs (OpenMM's
``createSystem(hydrogenMass=1.5 * amu)`` convention). Kinetics (rates, diffusion) are those of the
heavier-hydrogen molecule, and the Fixman factor of the constraints, which contains the masses, is
that of the repartitioned System (moves mixed with such MD take the masses of the System the MD
runs).

Bonds are read from the topology: each hydrogen must be bonded to exactly one atom that is not a
hydrogen (a water's H-H constraint is fine: it is not a topology bond). Massless particles
(virtual sites) are left alone.

Examples
--------
>>> import openmm_bg.systems as bgs
>>> ala = bgs.load("alanine_dipeptide")
>>> hmr = repartition_hydrogen_mass(ala.system, ala.topology, 1.5)
>>> round(hmr.getParticleMass(0)._value, 6), round(ala.system.getParticleMass(1)._value, 3)
(1.5, 12.01)
>>> round(hmr.getParticleMass(1)._value, 3)  # a methyl carbon gives 3 x 0.492 Da to its hydrogens
10.534
"""

from __future__ import annotations

import copy
import math

import openmm
import openmm.app as app
import openmm.unit as unit

from .. import _validation as check

__all__ = ["repartition_hydrogen_mass", "check_hydrogen_mass", "lightest_hydrogen_mass", "group_masses"]

#: Hydrogen mass (Da) from which the default MD time step with H-bond constraints is 4 fs.
HMR_4FS_MASS = 1.5


def _is_hydrogen(atom: app.topology.Atom) -> bool:
    return atom.element is not None and atom.element.atomic_number == 1


def _label(atom: app.topology.Atom) -> str:
    return f"atom {atom.index} ({atom.residue.name}{atom.residue.id}:{atom.name})"


def check_hydrogen_mass(value, name: str = "hydrogen_mass") -> float:
    """``value`` as a hydrogen mass in dalton: a finite number > 0 (ValueError naming the fix otherwise).

    Examples
    --------
    >>> check_hydrogen_mass(1.5)
    1.5
    >>> check_hydrogen_mass(0)
    Traceback (most recent call last):
    ...
    ValueError: hydrogen_mass must be positive and finite (dalton), got 0; the usual value for 4 fs steps is 1.5
    """
    try:
        return check.positive(name, value, "dalton")
    except ValueError as err:
        raise ValueError(f"{err}; the usual value for 4 fs steps is 1.5") from None


def _heavy_partners(topology: app.Topology) -> dict[int, list[app.topology.Atom]]:
    """Hydrogen index -> the atoms it is bonded to in the topology."""
    partners: dict[int, list[app.topology.Atom]] = {a.index: [] for a in topology.atoms() if _is_hydrogen(a)}
    for bond in topology.bonds():
        a, b = bond[0], bond[1]
        if a.index in partners:
            partners[a.index].append(b)
        if b.index in partners:
            partners[b.index].append(a)
    return partners


def repartition_hydrogen_mass(system: openmm.System, topology: app.Topology, hydrogen_mass: float) -> openmm.System:
    """A copy of ``system`` with every hydrogen at ``hydrogen_mass`` and the difference taken from its heavy atom.

    Parameters
    ----------
    system : openmm.System
        The System; it is not modified.
    topology : openmm.app.Topology
        Its topology (atom for atom), whose bonds say which heavy atom each hydrogen belongs to.
    hydrogen_mass : float
        New mass of every hydrogen, dalton (1.5 is OpenMM's usual choice for 4 fs steps with
        H-bond constraints).

    Returns
    -------
    openmm.System
        The repartitioned copy: same forces and constraints, the same total mass.

    Raises
    ------
    ValueError
        For a mass that is not a finite number > 0, a topology without hydrogens, a hydrogen that
        is not bonded to exactly one non-hydrogen atom, a hydrogen bonded to a massless particle,
        or a repartition that would leave a heavy atom no heavier than ``hydrogen_mass``; all
        before the System is copied.
    """
    hydrogen_mass = check_hydrogen_mass(hydrogen_mass)
    if system.getNumParticles() != topology.getNumAtoms():
        raise ValueError(f"hydrogen mass repartitioning: the System has {system.getNumParticles()} particles, the "
                         f"topology {topology.getNumAtoms()} atoms; pass the topology the System was built from")
    atoms = list(topology.atoms())
    partners = _heavy_partners(topology)
    if not partners:
        raise ValueError("hydrogen mass repartitioning needs hydrogens, and the topology has none (no atom with "
                         "element H); leave hydrogen_mass unset for this system")

    def mass(i: int) -> float:
        return system.getParticleMass(i).value_in_unit(unit.dalton)

    masses: dict[int, float] = {}
    for h, bonded in partners.items():
        if mass(h) == 0 or system.isVirtualSite(h):
            continue  # a massless hydrogen (virtual site) stays as it is
        heavy = [a for a in bonded if not _is_hydrogen(a)]
        if len(heavy) != 1:
            found = ("no bonds" if not bonded else "bonds only to hydrogens" if not heavy
                     else f"bonds to {len(heavy)} heavy atoms")
            raise ValueError(f"hydrogen mass repartitioning: hydrogen {_label(atoms[h])} has {found} in the topology, "
                             "so there is no one heavy atom to take its extra mass from; load the system from a file "
                             "with its bonds (e.g. CONECT records or a topology file), or leave hydrogen_mass unset")
        k = heavy[0].index
        if mass(k) == 0 or system.isVirtualSite(k):
            raise ValueError(f"hydrogen mass repartitioning: hydrogen {_label(atoms[h])} is bonded to the massless "
                             f"particle {_label(heavy[0])}; leave hydrogen_mass unset for this system")
        masses.setdefault(k, mass(k))
        masses[k] -= hydrogen_mass - mass(h)
        masses[h] = hydrogen_mass
    for k, m in masses.items():
        if not _is_hydrogen(atoms[k]) and not (math.isfinite(m) and m > hydrogen_mass):
            raise ValueError(f"hydrogen mass repartitioning with hydrogen_mass={hydrogen_mass:g} Da would leave the "
                             f"heavy atom {_label(atoms[k])} at {m:.4g} Da, not heavier than its hydrogens; use a "
                             f"smaller hydrogen_mass (e.g. 1.5)")
    out = copy.deepcopy(system)
    for i, m in masses.items():
        out.setParticleMass(i, m * unit.dalton)
    return out


def lightest_hydrogen_mass(system: openmm.System, topology: app.Topology) -> float | None:
    """The smallest mass (dalton) of a hydrogen with mass, or None where the topology has none.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> ala = bgs.load("alanine_dipeptide", hydrogen_mass=1.5)
    >>> lightest_hydrogen_mass(ala.system, ala.topology)
    1.5
    """
    masses = [system.getParticleMass(a.index).value_in_unit(unit.dalton) for a in topology.atoms()
              if _is_hydrogen(a) and a.index < system.getNumParticles()]
    masses = [m for m in masses if m > 0]
    return min(masses) if masses else None


def group_masses(system: openmm.System, topology: app.Topology) -> list[float]:
    """Mass (dalton) of each atom with the hydrogens bonded to it, in atom order: what repartitioning keeps.

    Each hydrogen bonded to exactly one non-hydrogen atom counts with that atom (and not on its own);
    every other atom counts alone. Two Systems of the same topology have the same group masses
    exactly when their masses differ at most by hydrogen mass repartitioning.

    Examples
    --------
    >>> import openmm_bg.systems as bgs
    >>> ala = bgs.load("alanine_dipeptide")
    >>> [round(m, 3) for m in group_masses(ala.system, ala.topology)[:3]]  # CH3 of the cap, then its C=O
    [15.034, 12.01, 16.0]
    """
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    atoms = list(topology.atoms())
    groups = {a.index: masses[a.index] for a in atoms if not _is_hydrogen(a)}
    for h, bonded in _heavy_partners(topology).items():
        heavy = [a for a in bonded if not _is_hydrogen(a)]
        if len(heavy) == 1:
            groups[heavy[0].index] += masses[h]
        else:
            groups[h] = masses[h]
    return [groups[i] for i in sorted(groups)]
