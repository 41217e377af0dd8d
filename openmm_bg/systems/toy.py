"""Two-dimensional toy potentials as real OpenMM Systems: the paper's double well and Mueller-Brown.

Each is one particle whose x, y move in a potential given in kT; z is held near 0 by a stiff
harmonic term (``Z_CONFINEMENT`` kT/nm^2) and is not a free dimension. Energies in OpenMM are the
reduced potential times kT at the system's temperature, so the reduced energy is the formula.

Examples
--------
>>> from openmm_bg.systems import load
>>> from openmm_bg.energy import energy_for
>>> dw = load("double_well")
>>> float(energy_for(dw, platform="Reference")([[[1.0, 0.5, 0.0]]])[0])  # 1 - 6 + 1 + 0.125
-3.875
"""

from __future__ import annotations

import numpy as np
import openmm
import openmm.app as app
import torch

from ..constants import kT_kJ_per_mol
from .molecular_system import MolecularSystem, ReactionCoordinate, interval_state

__all__ = ["double_well", "mueller_brown", "rare_banana", "rare_banana_samples", "Z_CONFINEMENT",
           "DOUBLE_WELL_EXPRESSION", "MUELLER_BROWN_PARAMETERS", "RARE_BANANA_PARAMETERS"]

#: Force constant (kT/nm^2) of the harmonic term that keeps 2D particles in the z = 0 plane.
Z_CONFINEMENT = 1000.0

#: The paper's double well in reduced units (x, y in nm).
DOUBLE_WELL_EXPRESSION = "x^4 - 6*x^2 + x + 0.5*y^2"

#: Standard Mueller-Brown parameters (A, a, b, c, x0, y0); the system uses 0.1 x this potential.
MUELLER_BROWN_PARAMETERS = {
    "A": (-200.0, -100.0, -170.0, 15.0),
    "a": (-1.0, -1.0, -6.5, 0.7),
    "b": (0.0, 0.0, 11.0, 0.6),
    "c": (-10.0, -10.0, -6.5, 0.7),
    "x0": (1.0, 0.0, -0.5, -1.0),
    "y0": (0.0, 0.5, 1.5, 1.0),
}
MUELLER_BROWN_SCALE = 0.1


def _mueller_brown_expression() -> str:
    p = MUELLER_BROWN_PARAMETERS
    terms = []
    for k in range(4):
        terms.append(
            f"({p['A'][k]})*exp(({p['a'][k]})*(x-({p['x0'][k]}))^2"
            f"+({p['b'][k]})*(x-({p['x0'][k]}))*(y-({p['y0'][k]}))"
            f"+({p['c'][k]})*(y-({p['y0'][k]}))^2)"
        )
    return f"{MUELLER_BROWN_SCALE}*(" + " + ".join(terms) + ")"


def _one_particle_system(expression: str, temperature: float, mass: float, definitions: str = ""):
    system = openmm.System()
    system.addParticle(mass)
    force = openmm.CustomExternalForce(f"kT*({expression} + 0.5*kz*z^2){definitions}")
    force.addGlobalParameter("kT", kT_kJ_per_mol(temperature))
    force.addGlobalParameter("kz", Z_CONFINEMENT)
    force.addParticle(0, [])
    system.addForce(force)
    topology = app.Topology()
    chain = topology.addChain()
    residue = topology.addResidue("PRT", chain)
    topology.addAtom("P", app.Element.getBySymbol("Ar"), residue)
    return system, topology


def _coordinate(dim: int, name: str, bounds) -> ReactionCoordinate:
    return ReactionCoordinate(name, lambda x: x[..., 0, dim], atoms=(0,), periodic=False,
                              bounds=bounds, unit="nm", description=f"{name} coordinate of the particle")


def _confinement(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * Z_CONFINEMENT * x[..., 0, 2] ** 2


def double_well_energy(x: torch.Tensor) -> torch.Tensor:
    """Reduced energy (kT) of the paper's double well, ``[batch, 1, 3] -> [batch]``."""
    x1, x2 = x[..., 0, 0], x[..., 0, 1]
    return x1**4 - 6 * x1**2 + x1 + 0.5 * x2**2 + _confinement(x)


def mueller_brown_energy(x: torch.Tensor) -> torch.Tensor:
    """Reduced energy (kT) of 0.1 x the Mueller-Brown potential, ``[batch, 1, 3] -> [batch]``."""
    p = MUELLER_BROWN_PARAMETERS
    x1, x2 = x[..., 0, 0], x[..., 0, 1]
    u = torch.zeros_like(x1)
    for k in range(4):
        dx, dy = x1 - p["x0"][k], x2 - p["y0"][k]
        u = u + p["A"][k] * torch.exp(p["a"][k] * dx**2 + p["b"][k] * dx * dy + p["c"][k] * dy**2)
    return MUELLER_BROWN_SCALE * u + _confinement(x)


def _plane_mask() -> np.ndarray:
    return np.array([[True, True, False]])


def double_well(temperature: float = 300.0, mass: float = 1.0) -> MolecularSystem:
    """The paper's 2D double well u = x1^4 - 6 x1^2 + x1 + x2^2/2 (kT), one particle.

    Parameters
    ----------
    temperature : float
        K; sets kT so that the OpenMM energy equals u * kT.
    mass : float
        Particle mass in dalton.
    """
    system, topology = _one_particle_system(DOUBLE_WELL_EXPRESSION, temperature, mass)
    x1 = _coordinate(0, "x1", (-3.0, 3.0))
    x2 = _coordinate(1, "x2", (-4.0, 4.0))
    return MolecularSystem(
        name="double_well", system=system, topology=topology,
        positions=np.array([[-1.7, 0.0, 0.0]]), temperature=temperature,
        reaction_coordinates={"x1": x1, "x2": x2},
        states={"left": interval_state("left", x1, -np.inf, 0.0),
                "right": interval_state("right", x1, 0.0, np.inf)},
        rotation_invariant=False, free_dims=_plane_mask(), analytic_energy=double_well_energy,
        description="the paper's 2D double well u = x1^4 - 6 x1^2 + x1 + x2^2/2 (kT)",
    )


def mueller_brown(temperature: float = 300.0, mass: float = 1.0) -> MolecularSystem:
    """0.1 x the standard Mueller-Brown potential (kT), one particle in 2D.

    States: ``A`` (basin near (-0.56, 1.44), x < -0.25 and y > 0.8... see ``states``),
    ``B`` (basin near (0.62, 0.03)).
    """
    system, topology = _one_particle_system(_mueller_brown_expression(), temperature, mass)
    x = _coordinate(0, "x", (-1.5, 1.2))
    y = _coordinate(1, "y", (-0.5, 2.0))

    def in_a(t):  # upper-left basin
        return (t[..., 0, 0] < -0.2) & (t[..., 0, 1] > 0.9)

    def in_b(t):  # lower-right basin
        return (t[..., 0, 0] > 0.3) & (t[..., 0, 1] < 0.4)

    from .molecular_system import State

    return MolecularSystem(
        name="mueller_brown", system=system, topology=topology,
        positions=np.array([[-0.558, 1.442, 0.0]]), temperature=temperature,
        reaction_coordinates={"x": x, "y": y},
        states={"A": State("A", in_a, "x < -0.2 and y > 0.9 nm (upper-left basin)"),
                "B": State("B", in_b, "x > 0.3 and y < 0.4 nm (lower-right basin)")},
        rotation_invariant=False, free_dims=_plane_mask(), analytic_energy=mueller_brown_energy,
        description="0.1 x Mueller-Brown potential (kT), 2D",
    )


#: The two-state mixture of `rare_banana`: a broad main well and a rare, narrow, curved one.
RARE_BANANA_PARAMETERS = {"rare_share": 0.04, "main_center": (-1.5, 0.0), "main_sigma": 0.6,
                          "rare_x": 2.0, "rare_curvature": 0.6, "rare_sigma_x": 0.12, "rare_sigma_y": 0.6}


def _rare_banana_terms():
    """The two unnormalised log densities of the mixture, as (OpenMM expression, torch function) pairs."""
    p = RARE_BANANA_PARAMETERS
    (mx, my), s = p["main_center"], p["main_sigma"]
    share, rx, c, sx, sy = p["rare_share"], p["rare_x"], p["rare_curvature"], p["rare_sigma_x"], p["rare_sigma_y"]
    log_main = float(np.log((1 - share) / (2 * np.pi * s * s)))
    log_rare = float(np.log(share / (2 * np.pi * sx * sy)))
    main = f"{log_main} - ((x-({mx}))^2 + (y-({my}))^2)/{2 * s * s}"
    rare = f"{log_rare} - (x-{rx}+{c}*y^2)^2/{2 * sx * sx} - y^2/{2 * sy * sy}"

    def torch_terms(x1, x2):
        return (log_main - ((x1 - mx) ** 2 + (x2 - my) ** 2) / (2 * s * s),
                log_rare - (x1 - rx + c * x2**2) ** 2 / (2 * sx * sx) - x2**2 / (2 * sy * sy))

    return main, rare, torch_terms


def rare_banana_energy(x: torch.Tensor) -> torch.Tensor:
    """Reduced energy (kT) of `rare_banana`, ``[batch, 1, 3] -> [batch]``."""
    *_, terms = _rare_banana_terms()
    a, b = terms(x[..., 0, 0], x[..., 0, 1])
    return -torch.logaddexp(a, b) + _confinement(x)


def rare_banana(temperature: float = 300.0, mass: float = 1.0) -> MolecularSystem:
    """A 2D system with a rare state: ``u = -log(0.96 N_main + 0.04 B_rare)`` (kT), one particle.

    ``N_main`` is an isotropic Gaussian (sigma 0.6 nm) at (-1.5, 0); ``B_rare`` a narrow curved
    ("banana") well: ``x' = x - 2 + 0.6 y^2`` is Gaussian with sigma 0.12 nm and ``y`` with sigma 0.6 nm
    (the shear has unit Jacobian, so ``B_rare`` is normalised). Both are normalised densities, so
    the state populations are known: the rare state (below) holds 4.001 % by quadrature (the
    wells barely overlap), and ``int exp(-u) dx dy = 1``. Made to test whether a training
    recipe keeps a rare, hard-to-fit state: the curved well is what a mode-seeking (KL) fit gives
    up first. Not in the `load` registry. See `RARE_BANANA_PARAMETERS`.

    States: ``rare`` where the curved well's term is the larger one, ``main`` elsewhere (a straight
    cut in ``x`` would miss the banana's arms); coordinates ``x``, ``y``.

    Examples
    --------
    >>> import torch
    >>> system = rare_banana()
    >>> sorted(system.states), round(float(rare_banana_energy(torch.tensor([[[2.0, 0.0, 0.0]]]))), 2)
    (['main', 'rare'], 2.43)
    """
    from .molecular_system import State

    main, rare, terms = _rare_banana_terms()

    def in_rare(t):
        t = torch.as_tensor(t)
        a, b = terms(t[..., 0, 0], t[..., 0, 1])
        return b > a

    # -log(exp(a) + exp(b)) without underflow far from both wells (single-precision platforms)
    definitions = f"; m = max(a, b); d = abs(a - b); a = {main}; b = {rare}"
    system, topology = _one_particle_system("-(m + log(1 + exp(-d)))", temperature, mass, definitions)
    x = _coordinate(0, "x", (-4.0, 3.5))
    y = _coordinate(1, "y", (-2.5, 2.5))
    return MolecularSystem(
        name="rare_banana", system=system, topology=topology,
        positions=np.array([[-1.5, 0.0, 0.0]]), temperature=temperature,
        reaction_coordinates={"x": x, "y": y},
        states={"main": State("main", lambda t: ~in_rare(t), "the broad well (96 %)"),
                "rare": State("rare", in_rare, "the curved well (4 %): its term of the mixture is the larger")},
        rotation_invariant=False, free_dims=_plane_mask(), analytic_energy=rare_banana_energy,
        description="2D mixture: a broad main well (96 %) and a rare curved well (4 %), u in kT",
    )


def rare_banana_samples(n: int, rare_fraction: float | None = None, seed: int = 0) -> np.ndarray:
    """Exact independent samples of `rare_banana`'s two wells, ``[n, 1, 3]`` (nm, z = 0).

    ``rare_fraction`` (default the Boltzmann share, 0.04) sets how many come from the rare well
    (rounded), e.g. 0.2 for data that over-represent it the way several MD starts would; the main
    well's samples come first, then the rare well's (two "runs" one after the other).

    Examples
    --------
    >>> x = rare_banana_samples(1000, rare_fraction=0.2, seed=0)
    >>> x.shape, int(rare_banana().states["rare"](x).sum())
    ((1000, 1, 3), 199)
    """
    p = RARE_BANANA_PARAMETERS
    share = p["rare_share"] if rare_fraction is None else float(rare_fraction)
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"rare_fraction must lie in [0, 1], got {rare_fraction!r}")
    rng = np.random.default_rng(seed)
    n_rare = int(round(share * n))
    main = np.asarray(p["main_center"]) + p["main_sigma"] * rng.standard_normal((n - n_rare, 2))
    y = p["rare_sigma_y"] * rng.standard_normal(n_rare)
    x = p["rare_x"] - p["rare_curvature"] * y**2 + p["rare_sigma_x"] * rng.standard_normal(n_rare)
    xy = np.concatenate([main, np.stack([x, y], 1)])
    return np.concatenate([xy, np.zeros((n, 1))], 1)[:, None, :]
