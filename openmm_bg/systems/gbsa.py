"""OBC2 implicit solvent as OpenMM's native ``GBSAOBCForce`` instead of a ``CustomGBForce``.

``openmm.app.ForceField`` with ``implicit/obc2.xml`` builds the OBC2 model (Onufriev, Bashford and
Case 2004, alpha 1, beta 0.8, gamma 4.85) as a ``CustomGBForce`` with an ACE surface-area term.
OpenMM's ``GBSAOBCForce`` computes the same model natively, several times faster. `native_obc2`
replaces the custom force by a ``GBSAOBCForce`` with the same charges, radii, scale factors,
dielectrics and surface-area energy; energies agree to round-off.

Examples
--------
>>> import openmm, openmm.app as app
>>> from openmm_bg.data import structure_path
>>> pdb = app.PDBFile(str(structure_path("alanine_dipeptide.pdb")))
>>> ff = app.ForceField("amber14-all.xml", "implicit/obc2.xml")
>>> system = native_obc2(ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff))
>>> sorted(type(f).__name__ for f in system.getForces())[:2]
['CMMotionRemover', 'GBSAOBCForce']
"""

from __future__ import annotations

import math
import re

import openmm

__all__ = ["native_obc2", "OBC2_OFFSET"]

#: Radius offset (nm) of the OBC models: the custom force stores ``radius - offset``.
OBC2_OFFSET = 0.009
_OBC2_BORN = "1/(1/or-tanh(psi-0.8*psi^2+4.85*psi^3)/radius)"
_ACE = 28.3919551  # 4 pi * 2.25936 kJ/mol/nm^2, the surface-area energy of the custom force's ACE term


def _number(expression: str, name: str) -> float:
    match = re.search(rf"\b{name}=([-+0-9.eE]+)", expression)
    if match is None:
        raise ValueError(f"the CustomGBForce has no {name} in its energy expression; not an OpenMM OBC2 force")
    return float(match.group(1))


def _is_obc2(force) -> bool:
    if not isinstance(force, openmm.CustomGBForce) or force.getNumPerParticleParameters() != 3:
        return False
    names = [force.getPerParticleParameterName(k) for k in range(3)]
    values = [force.getComputedValueParameters(k)[1].replace(" ", "") for k in range(force.getNumComputedValues())]
    return names == ["charge", "or", "sr"] and any(_OBC2_BORN in v for v in values)


def native_obc2(system: openmm.System) -> openmm.System:
    """Replace the OBC2 ``CustomGBForce`` of ``system`` (from ``implicit/obc2.xml``) by a ``GBSAOBCForce``.

    Parameters
    ----------
    system : openmm.System
        Built by ``openmm.app.ForceField`` with ``implicit/obc2.xml`` and ``NoCutoff``; changed
        in place and returned. A system without such a force is returned unchanged.

    Returns
    -------
    openmm.System
        The same object, its OBC2 force native.

    Raises
    ------
    ValueError
        If the force uses a salt screening (kappa > 0), a cutoff, or a surface-area term other
        than ACE, which ``GBSAOBCForce`` does not reproduce.
    """
    index = [k for k, f in enumerate(system.getForces()) if _is_obc2(f)]
    if not index:
        return system
    if len(index) > 1:
        raise ValueError(f"the System holds {len(index)} OBC2 CustomGBForces; expected one")
    custom = system.getForce(index[0])
    if custom.getNonbondedMethod() != openmm.CustomGBForce.NoCutoff:
        raise ValueError("native_obc2 supports NoCutoff only (a Boltzmann Generator's molecule has no cutoff)")
    terms = [custom.getEnergyTermParameters(k)[0] for k in range(custom.getNumEnergyTerms())]
    if _number(terms[0], "kappa") != 0.0:
        raise ValueError("native_obc2: the OBC2 force screens with salt (kappa > 0); GBSAOBCForce has no salt term")
    ace = [t for t in terms if t.replace(" ", "").startswith(f"{_ACE}*(radius+0.14)^2*(radius/B)^6")]
    if len(terms) - len(ace) != 2 or len(ace) > 1:  # self and pair terms, optionally ACE
        raise ValueError("native_obc2: the OBC2 force has a surface-area term other than ACE; keep the CustomGBForce")
    native = openmm.GBSAOBCForce()
    native.setNonbondedMethod(openmm.GBSAOBCForce.NoCutoff)
    native.setSoluteDielectric(_number(terms[0], "soluteDielectric"))
    native.setSolventDielectric(_number(terms[0], "solventDielectric"))
    native.setSurfaceAreaEnergy(_ACE / (4 * math.pi) if ace else 0.0)
    for i in range(custom.getNumParticles()):
        charge, offset_radius, scaled = custom.getParticleParameters(i)
        native.addParticle(charge, offset_radius + OBC2_OFFSET, scaled / offset_radius)
    native.setForceGroup(custom.getForceGroup())
    system.removeForce(index[0])
    system.addForce(native)
    return system
