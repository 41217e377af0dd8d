"""`TorsionMove`: independence Metropolis-Hastings on the side-chain torsions of one residue at a time.

Each proposal picks a `TorsionGroup` (e.g. the chi torsions of one residue) uniformly at random,
draws new values ``phi'`` for its torsions from the group's own exact density ``q``
(a `TorsionMixture` fitted on MD torsions), and sets them by turning each rotor's branch rigidly
about its bond (`openmm_bg.mcmc.rotors`). It is accepted with

    min(1, exp(-[u(x') - u(x)] + [f(x') - f(x)]) q(phi) / q(phi'))

Why this is exact: in internal coordinates the proposal changes only the rotors' proper torsions,
all bonds, angles, the other torsions and the Cartesian core stay fixed, and the Cartesian volume
element ``prod(b^2 sin theta) x (core term)`` does not depend on torsions; equivalently, turning a
branch about its bond is an isometry of the branch with the axis atoms fixed. So on each orbit of
the rotations the Cartesian measure is ``dphi`` and the independence sampler's Hastings ratio is
``q(phi)/q(phi')``. Torsions about the same bond (methyl hydrogens 2 and 3, branch atoms whose
Z-matrix torsion is improper-like, relative to a sibling) turn together with the rotor's torsion
-- a whole rotor moves, so no improper-like torsion changes and the distance constraints (bonds to
hydrogens) are preserved; the Fixman factor ``f`` of the constraints is unchanged by such a move, and
the base computes ``f(x') - f(x)`` anyway. The acceptance loop, statistics, random streams, the
state's energies and the velocity redraw after an accepted jump are `MetropolisHastingsMove`'s.

Examples
--------
Side-chain moves mixed with Langevin dynamics of alanine dipeptide (its methyl rotor):

>>> import openmm.unit as unit
>>> from openmmtools import mcmc, states
>>> from openmm_bg.systems import load
>>> from openmm_bg.mcmc.rotors import side_chain_rotors
>>> ala = load("alanine_dipeptide", constraints="hbonds")
>>> q = TorsionMixture(weights=[1.0], means=[[0.0]], concentrations=[[1.0]], uniform_weight=0.2)
>>> move = TorsionMove([TorsionGroup("ALA2", side_chain_rotors(ala.topology, hydrogens=True), q)],
...                    n_proposals=4, seed=0)
>>> thermo = states.ThermodynamicState(ala.system, temperature=300 * unit.kelvin)
>>> sequence = mcmc.SequenceMove([mcmc.LangevinDynamicsMove(timestep=2 * unit.femtosecond, n_steps=10), move])
>>> mcmc.MCMCSampler(thermo, states.SamplerState(ala.positions * unit.nanometer), sequence).run(2)
>>> move.n_proposed
8
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import openmm.unit as unit
import torch

from ..systems import MolecularSystem
from .base import Chain, MetropolisHastingsMove, MoveProposal, _state_system
from .rotors import Rotor, set_torsions, side_chain_rotors, torsions_of
from .torsion_density import TorsionMixture

__all__ = ["TorsionGroup", "TorsionMove"]


@dataclass(frozen=True)
class TorsionGroup:
    """Rotors proposed together, with the exact density of their torsions.

    Attributes
    ----------
    name : str
        Label (e.g. the residue, ``"TRP2"``).
    rotors : tuple of Rotor
        Ordered from the root outwards (chi1, chi2, ...).
    density : TorsionMixture
        ``q`` over the rotors' torsions (rad), ``density.dim == len(rotors)``.
    """

    name: str
    rotors: tuple
    density: TorsionMixture

    def __post_init__(self):
        object.__setattr__(self, "rotors", tuple(self.rotors))
        if not self.rotors or not all(isinstance(r, Rotor) for r in self.rotors):
            raise ValueError(f"group {self.name!r}: rotors must be a non-empty sequence of Rotor")
        if self.density.dim != len(self.rotors):
            raise ValueError(f"group {self.name!r}: the density has {self.density.dim} torsions, "
                             f"the group {len(self.rotors)} rotors")

    def torsions(self, x: np.ndarray) -> np.ndarray:
        """``[..., n_rotors]`` torsions (rad) of ``x`` ``[..., n_atoms, 3]``."""
        return torsions_of(x, self.rotors)


class TorsionMove(MetropolisHastingsMove):
    """Independence Metropolis-Hastings on the torsions of one `TorsionGroup` per proposal.

    Usable wherever an ``openmmtools.mcmc.MCMCMove`` is (``MCMCSampler``, ``SequenceMove`` with
    ``LangevinDynamicsMove``). Acceptance and exactness: module docstring. On acceptance the
    `SamplerState` is read back from the context with velocities redrawn at the state's temperature.

    Parameters
    ----------
    groups : sequence of TorsionGroup
        What to propose; one is picked uniformly at random per proposal.
    n_proposals : int
        Successive proposals per ``apply``.
    seed : int, optional
        Seeds the proposals and the acceptance tests; ``None``: fresh entropy.
    fixman : bool, optional
        Include the Fixman factor (default: where the state's constraints need it; it is unchanged
        by rotor moves, so this only costs time).

    Attributes
    ----------
    n_accepted, n_proposed : int
        Counters (also ``statistics``; ``group_statistics`` per group).
    """

    def __init__(self, groups: Sequence[TorsionGroup], n_proposals: int = 1, seed: int | None = None,
                 fixman: bool | None = None):
        super().__init__(seed=seed, fixman=fixman)
        groups = tuple(groups)
        if not groups or not all(isinstance(g, TorsionGroup) for g in groups):
            raise ValueError("groups must be a non-empty sequence of TorsionGroup "
                             "(or build the move with TorsionMove.fit(system, frames))")
        if int(n_proposals) < 1:
            raise ValueError(f"n_proposals must be >= 1, got {n_proposals}")
        self.groups = groups
        self.n_proposals = int(n_proposals)
        self._n_atoms_needed = 1 + max(max(max(r.atoms), max(r.moving)) for g in groups for r in g.rotors)
        self._group_counts = np.zeros((len(groups), 2), dtype=np.int64)

    @classmethod
    def fit(cls, system: MolecularSystem, frames, residues: Sequence[int] | None = None, hydrogens: bool = False,
            n_components: int = 6, uniform_weight: float = 0.05, n_proposals: int = 1,
            seed: int | None = None) -> TorsionMove:
        """A move over the side-chain rotors of ``system``, one group per residue, fitted on MD ``frames``.

        Parameters
        ----------
        system : MolecularSystem
            A protein or peptide (bonds in its topology).
        frames : array-like or mdtraj.Trajectory
            ``[n_frames, n_atoms, 3]`` nm, e.g. MD at the target temperature.
        residues, hydrogens
            Which rotors (`openmm_bg.mcmc.rotors.side_chain_rotors`).
        n_components, uniform_weight
            Of each group's `TorsionMixture` (``n_components`` at most per group; the uniform part keeps
            rotamers MD never visited reachable).
        n_proposals, seed
            As in the constructor (``seed`` also seeds the fits).
        """
        x = frames.xyz if hasattr(frames, "xyz") else frames
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != (system.n_atoms, 3):
            raise ValueError(f"frames must be [n_frames, {system.n_atoms}, 3] nm, got shape {x.shape}")
        rotors = side_chain_rotors(system.topology, residues=residues, hydrogens=hydrogens)
        if not rotors:
            raise ValueError(f"system {system.name!r} has no side-chain rotors for residues={residues} "
                             f"(hydrogens={hydrogens})")
        by_res: dict[int, list[Rotor]] = {}
        for r in rotors:
            by_res.setdefault(r.residue, []).append(r)
        groups = []
        for ri, rs in by_res.items():
            phi = torsions_of(x, rs)
            q = TorsionMixture.fit(phi, n_components=n_components, uniform_weight=uniform_weight,
                                   seed=0 if seed is None else int(seed) + ri)
            groups.append(TorsionGroup(rs[0].name.split()[0], tuple(rs), q))
        return cls(groups, n_proposals=n_proposals, seed=seed)

    # ------------------------------------------------------------------ statistics
    @property
    def group_statistics(self) -> dict:
        """``{group name: (n_accepted, n_proposed)}``."""
        return {g.name: (int(a), int(p)) for g, (a, p) in zip(self.groups, self._group_counts, strict=True)}

    def reset_statistics(self) -> None:
        super().reset_statistics()
        self._group_counts[:] = 0

    # ------------------------------------------------------------------ proposals
    def _prepare(self, thermodynamic_state) -> None:
        self._checked_once(thermodynamic_state, self._check_state)

    def _check_state(self, thermodynamic_state) -> None:
        system = _state_system(thermodynamic_state)
        n = system.getNumParticles()
        if n < self._n_atoms_needed:
            raise ValueError(f"the thermodynamic state's System has {n} particles, the move's rotors use atom "
                             f"indices up to {self._n_atoms_needed - 1}")
        cons = []
        for k in range(system.getNumConstraints()):
            i, j, d = system.getConstraintParameters(k)
            cons.append((int(i), int(j), float(d.value_in_unit(unit.nanometer))))
        masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)]
        self._set_fixman(cons, masses)

    def _proposals(self, proposer, thermodynamic_state, chain: Chain,
                   tgen: torch.Generator) -> Iterator[MoveProposal]:
        """``n_proposals`` independent draws, each for one group; ``data`` = (group, Hastings term)."""
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=tgen)))
        for _ in range(self.n_proposals):
            gi = int(rng.integers(len(self.groups)))
            g = self.groups[gi]
            x_cur = chain.current.x
            phi_cur = g.torsions(x_cur)
            phi_new = g.density.sample(1, rng)[0]
            x_new = set_torsions(x_cur, g.rotors, phi_new)
            lp = g.density.log_prob(np.stack([phi_cur, phi_new]))
            log_ratio = float(lp[0] - lp[1])
            self._group_counts[gi, 1] += 1
            proposal = MoveProposal(x_new, 0.0, data=(gi, log_ratio))
            yield proposal
            if chain.current is proposal:  # the base accepted it
                self._group_counts[gi, 0] += 1

    def _log_proposal_ratio(self, proposed: MoveProposal, current: MoveProposal) -> float:
        """``log q(phi) - log q(phi')`` of the proposed group (the independence sampler's Hastings term)."""
        return proposed.data[1]

    # ------------------------------------------------------------------ serialisation
    def __getstate__(self) -> dict:
        groups = [{"name": g.name, "density": g.density.to_dict(),
                   "rotors": [{"name": r.name, "atoms": list(r.atoms), "moving": list(r.moving),
                               "residue": r.residue} for r in g.rotors]} for g in self.groups]
        return {"groups": groups, "n_proposals": self.n_proposals,
                "group_counts": self._group_counts.tolist(), **self._base_state()}

    def __setstate__(self, state: dict) -> None:
        groups = [TorsionGroup(g["name"], tuple(Rotor(r["name"], r["atoms"], r["moving"], r["residue"])
                                                for r in g["rotors"]), TorsionMixture.from_dict(g["density"]))
                  for g in state["groups"]]
        self.__init__(groups, n_proposals=state["n_proposals"])
        self._set_base_state(state)
        self._group_counts = np.asarray(state.get("group_counts", self._group_counts), dtype=np.int64)
