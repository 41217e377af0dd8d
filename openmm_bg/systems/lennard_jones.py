"""Lennard-Jones tables that follow the combining rules, folded back into the ``NonbondedForce``.

OpenMM's Amber, CHARMM and GROMACS readers (and parmed's) move the Lennard-Jones terms into a
``CustomNonbondedForce`` with per-type-pair tables (``(a/r6)^2-b/r6``, ``a = acoef(type1,
type2)``) as soon as one pair of LJ types does not follow the Lorentz-Berthelot rules (NBFIX).
Their test covers every type the file defines, also types no atom uses: a prmtop stripped of
water and ions keeps those types with parameters never set, and the System gets the table
although every pair of atoms follows the rules. A tabulated force makes each energy and force
evaluation slower (trpzip2 in OBC2: an MD step with the table takes 2.2x the CPU time of one
without on one CPU thread, 1.5x on Reference; ``benchmarks/protein_md_speed.py``).

`fold_lennard_jones_table` checks the table for the type pairs that atoms use and, when every
one follows the rules, gives the ``NonbondedForce`` per-atom sigma and epsilon and removes the
table. Only the ``CustomNonbondedForce``'s particles and its removal change: the exceptions
(1-4 terms) stay as they were, so energies equal the tabulated System's to rounding.

Examples
--------
>>> import openmm
>>> system = openmm.System()
>>> for _ in range(2):
...     _ = system.addParticle(12.0)
>>> nb = openmm.NonbondedForce()
>>> for _ in range(2):
...     _ = nb.addParticle(0.0, 1.0, 0.0)
>>> table = openmm.CustomNonbondedForce("(a/r6)^2-b/r6; r6=r^6; a=acoef(type1, type2); b=bcoef(type1, type2)")
>>> sigma, eps = 0.3, 0.5  # nm, kJ/mol: A = 4 eps sigma^12, B = 4 eps sigma^6
>>> a, b = (4 * eps * sigma**12) ** 0.5, 4 * eps * sigma**6
>>> _ = table.addTabulatedFunction("acoef", openmm.Discrete2DFunction(2, 2, [a, 0.0, 0.0, 0.0]))
>>> _ = table.addTabulatedFunction("bcoef", openmm.Discrete2DFunction(2, 2, [b, 0.0, 0.0, 0.0]))
>>> _ = table.addPerParticleParameter("type")
>>> for _ in range(2):
...     _ = table.addParticle([0])  # type 1 (e.g. a stripped water type) is used by no atom
>>> _, _ = system.addForce(nb), system.addForce(table)
>>> result = fold_lennard_jones_table(system)
>>> result.folded, system.getNumForces()
(True, 1)
>>> charge, sigma_nm, eps_kj = nb.getParticleParameters(0)
>>> nm, kj = openmm.unit.nanometer, openmm.unit.kilojoule_per_mole
>>> round(sigma_nm.value_in_unit(nm), 9), round(eps_kj.value_in_unit(kj), 9)
(0.3, 0.5)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import openmm

__all__ = ["LennardJonesTable", "TabulatedLennardJonesWarning", "fold_lennard_jones_table",
           "COMBINING_RULE_TOLERANCE"]

#: Largest relative deviation of a table's A or B coefficient from the combining rules that still
#: counts as following them (OpenMM's own test uses the same bound).
COMBINING_RULE_TOLERANCE = 1e-6

_EXPRESSIONS = ("(a/r6)^2-b/r6;r6=r^6;a=acoef(type1,type2);b=bcoef(type1,type2)",
                "(a/r6)^2-b/r6;r6=r2*r2*r2;r2=r^2;a=acoef(type1,type2);b=bcoef(type1,type2)")


#: The measured cost of a table (benchmarks/protein_md_speed.py), quoted in the warning.
_COST = "about 2x the CPU time per MD step for a 218-atom peptide in OBC2 on one CPU thread"


class TabulatedLennardJonesWarning(UserWarning):
    """A System keeps a tabulated Lennard-Jones force (genuine NBFIX pairs): correct, but slow."""


@dataclass(frozen=True)
class LennardJonesTable:
    """What `fold_lennard_jones_table` found.

    Attributes
    ----------
    folded : bool
        The table was replaced by per-atom parameters of the ``NonbondedForce``.
    n_types, n_used_types : int
        LJ types in the table, and those that atoms use (0 and 0 without a table).
    deviating_pairs : tuple of (int, int, float)
        Used type pairs ``(i, j, relative deviation)`` that break the combining rules (NBFIX).
    reason : str
        Why nothing was folded ("" when folded).
    """

    folded: bool
    n_types: int = 0
    n_used_types: int = 0
    deviating_pairs: tuple = ()
    reason: str = ""


def _lj_table(system: openmm.System):
    """(index, force) of the tabulated LJ ``CustomNonbondedForce`` in the form the readers write."""
    found = []
    for index, force in enumerate(system.getForces()):
        if not isinstance(force, openmm.CustomNonbondedForce):
            continue
        expression = force.getEnergyFunction().replace(" ", "").replace("\n", "").rstrip(";")
        names = {force.getTabulatedFunctionName(k) for k in range(force.getNumTabulatedFunctions())}
        if (expression in _EXPRESSIONS and names == {"acoef", "bcoef"} and force.getNumPerParticleParameters() == 1
                and force.getNumGlobalParameters() == 0 and force.getNumInteractionGroups() == 0
                and force.getNumEnergyParameterDerivatives() == 0):
            found.append((index, force))
    return found


def _table(force: openmm.CustomNonbondedForce, name: str) -> np.ndarray:
    for k in range(force.getNumTabulatedFunctions()):
        if force.getTabulatedFunctionName(k) == name:
            function = force.getTabulatedFunction(k)
            nx, ny, values = function.getFunctionParameters()
            return np.asarray(values, dtype=np.float64).reshape(ny, nx)  # [type2, type1]
    raise KeyError(name)


def _same_settings(table: openmm.CustomNonbondedForce, nb: openmm.NonbondedForce) -> str:
    """Why the table cannot be folded into ``nb`` (cutoff, switching, exclusions), or ""."""
    if nb.getNonbondedMethod() != openmm.NonbondedForce.NoCutoff or \
            table.getNonbondedMethod() != openmm.CustomNonbondedForce.NoCutoff:
        return "only systems without a cutoff are folded"
    exceptions = {tuple(sorted(nb.getExceptionParameters(k)[:2])) for k in range(nb.getNumExceptions())}
    exclusions = {tuple(sorted(table.getExclusionParticles(k))) for k in range(table.getNumExclusions())}
    if exceptions != exclusions:
        return "the table's exclusions differ from the NonbondedForce's exceptions"
    if table.getNumParticles() != nb.getNumParticles():
        return "the table and the NonbondedForce have different particle counts"
    if any(nb.getParticleParameters(i)[2].value_in_unit(openmm.unit.kilojoule_per_mole) != 0.0
           for i in range(nb.getNumParticles())):
        return "the NonbondedForce has Lennard-Jones parameters of its own beside the table"
    return ""


def fold_lennard_jones_table(system: openmm.System, tolerance: float = COMBINING_RULE_TOLERANCE,
                             label: str = "the system", warn: bool = True) -> LennardJonesTable:
    """Replace a tabulated Lennard-Jones force by ``NonbondedForce`` parameters where the rules allow.

    Only the LJ types that atoms use count: types of stripped water or ions with never-set
    parameters, which make OpenMM build the table, are ignored. The System is changed in place.

    Parameters
    ----------
    system : openmm.System
        Non-periodic (``NoCutoff``), with one ``NonbondedForce`` and at most one LJ table as
        OpenMM's and parmed's readers write it; other Systems are returned unchanged.
    tolerance : float
        Relative deviation of a pair's A or B coefficient from the Lorentz-Berthelot rules
        allowed (default `COMBINING_RULE_TOLERANCE`).
    label : str
        Name of the system in the warning.
    warn : bool
        Warn (`TabulatedLennardJonesWarning`, naming the pairs and the cost) when the table has
        to stay because used pairs break the rules (genuine NBFIX).

    Returns
    -------
    LennardJonesTable
    """
    tables = _lj_table(system)
    if not tables:
        return LennardJonesTable(False, reason="no tabulated Lennard-Jones force")
    if len(tables) > 1:
        return LennardJonesTable(False, reason="more than one tabulated Lennard-Jones force")
    index, table = tables[0]
    nbs = [f for f in system.getForces() if isinstance(f, openmm.NonbondedForce)]
    acoef, bcoef = _table(table, "acoef"), _table(table, "bcoef")
    n_types = acoef.shape[0]
    types = np.array([int(round(table.getParticleParameters(i)[0])) for i in range(table.getNumParticles())])
    used = np.unique(types)
    if len(nbs) != 1:
        return LennardJonesTable(False, n_types, len(used), reason="not exactly one NonbondedForce")
    nb = nbs[0]
    why = _same_settings(table, nb)
    if why:
        return LennardJonesTable(False, n_types, len(used), reason=why)
    big_a = acoef**2  # A_ij (kJ/mol nm^12): the table holds sqrt(A)
    big_b = bcoef     # B_ij (kJ/mol nm^6)
    diag_a, diag_b = big_a[used, used], big_b[used, used]
    sigma = np.zeros(n_types)
    epsilon = np.zeros(n_types)
    ok = (diag_a > 0) & (diag_b > 0)
    sigma[used[ok]] = (diag_a[ok] / diag_b[ok]) ** (1 / 6)
    epsilon[used[ok]] = diag_b[ok] ** 2 / (4 * diag_a[ok])
    deviating = []
    for p, i in enumerate(used):
        for j in used[p:]:
            s, e = 0.5 * (sigma[i] + sigma[j]), np.sqrt(epsilon[i] * epsilon[j])
            want_a, want_b = 4 * e * s**12, 4 * e * s**6
            worst = 0.0
            for have, want in ((big_a[i, j], want_a), (big_b[i, j], want_b),
                               (big_a[j, i], want_a), (big_b[j, i], want_b)):
                if want == 0.0:
                    worst = max(worst, 0.0 if have == 0.0 else np.inf)
                else:
                    worst = max(worst, abs(have - want) / abs(want))
            if worst > tolerance:
                deviating.append((int(i), int(j), float(worst)))
    if deviating:
        if warn:
            shown = ", ".join(f"{i}-{j} ({d:.2g})" for i, j, d in deviating[:5])
            more = f" and {len(deviating) - 5} more" if len(deviating) > 5 else ""
            warnings.warn(
                f"{label}: {len(deviating)} pair{'s' if len(deviating) > 1 else ''} of the Lennard-Jones types its "
                f"atoms use break the combining rules (NBFIX; type pairs, counted from 0, with their relative "
                f"deviation: {shown}{more}), so the System keeps OpenMM's tabulated CustomNonbondedForce beside the "
                "NonbondedForce. Energies are right, but each evaluation costs more than with the NonbondedForce "
                f"alone ({_COST}); see benchmarks/protein_md_speed.py",
                TabulatedLennardJonesWarning, stacklevel=3)
        return LennardJonesTable(False, n_types, len(used), tuple(deviating),
                                 reason="used type pairs break the combining rules (NBFIX)")
    group = table.getForceGroup()
    if group != nb.getForceGroup():
        return LennardJonesTable(False, n_types, len(used),
                                 reason="the table is in another force group than the NonbondedForce")
    for atom, t in enumerate(types):
        charge, _, _ = nb.getParticleParameters(atom)
        sig, eps = (float(sigma[t]), float(epsilon[t])) if epsilon[t] > 0 else (1.0, 0.0)
        nb.setParticleParameters(atom, charge, sig, eps)
    system.removeForce(index)
    return LennardJonesTable(True, n_types, len(used))
