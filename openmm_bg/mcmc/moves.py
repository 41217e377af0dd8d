"""openmmtools MCMC moves that propose configurations from a Boltzmann Generator.

Two `openmmtools.mcmc.MCMCMove` subclasses let a trained `BoltzmannGenerator` take part in ordinary
openmmtools sampling (``MCMCSampler``, ``SequenceMove``/``WeightedMove`` with ``LangevinDynamicsMove``,
``ReplicaExchangeSampler`` with a ``MultiStateReporter``):

- `BoltzmannGeneratorMove`: independence Metropolis-Hastings with flow samples as proposals,
  accepted with ``min(1, exp(-[u(x') - u(x)] + [log p_X(x) - log p_X(x')]))``;
- `LatentMetropolisMove`: the paper's latent random walk ``z' = F_xz(x) + s N(0, I)`` (wrapped on
  circular latent dimensions), accepted with
  ``min(1, exp(-[u(x') - u(x)] + log|det J_zx(z')| - log|det J_zx(z)|))``.

Both moves are exact in Cartesian space (``docs/design.md``, "Rigid-body degrees of freedom",
"Chirality", "Constraints"):

- ``u`` is the reduced potential of the *thermodynamic state the move is applied in*
  (``ThermodynamicState.reduced_potential``), so the moves stay exact at other temperatures or
  Hamiltonians than the generator was trained for (they only get less efficient);
- rotation-invariant molecules: a proposal gets a uniformly random rotation and the current centre
  of mass, and the current configuration's density is computed in the generator's frame;
  systems with external potentials (toy systems) get no rotation, and their confined Cartesian
  components (e.g. the z of the 2D toy systems, which the generator does not model) keep their
  current values;
- configurations with an inverted stereocentre are rejected;
- with bond constraints (``constraints="hbonds"``) the target is what constrained Langevin dynamics
  samples: ``exp(-u(x)) sqrt(det Z(x))`` with respect to the generator's fixed-bond measure, where
  ``Z_ab = sum_i (1/m_i) grad_i g_a . grad_i g_b`` over the constraints ``g`` (the Fixman factor,
  `fixman_log_factor`); it only varies where an atom carries two or more constraints (CH3, NH3+);
- after an accepted jump velocities are redrawn from the Maxwell-Boltzmann distribution at the
  state's temperature (``Context.setVelocitiesToTemperature``, which also projects them onto the
  constraints); after a rejection the sampler state, velocities included, is left untouched.
  Redrawing on acceptance only leaves the joint distribution of positions and velocities invariant.

The acceptance loop, statistics, random streams, energies and velocity redraw are the base's
(`openmm_bg.mcmc.base.GeneratorMove`); the moves here only propose. Serialisation (``__getstate__``)
stores the *path* of the saved generator, not its weights, plus a compact description of the
topology so that a move read back from storage can rebuild the generator for the state's ``System``;
deep copies (which the multistate samplers make once per thermodynamic state) share one loaded
model, and models are loaded once per process (`openmm_bg.mcmc.serialization`).

Examples
--------
Add a Boltzmann-Generator move to Langevin dynamics of the paper's double well:

>>> import openmm.unit as unit
>>> from openmmtools import mcmc, states
>>> # dw: the double well; dw_gen: a small generator built on MD data of it (conftest.py)
>>> gen = dw_gen
>>> thermo = states.ThermodynamicState(dw.system, temperature=dw.temperature * unit.kelvin)
>>> sampler_state = states.SamplerState(dw.positions * unit.nanometer)
>>> move = mcmc.SequenceMove([mcmc.LangevinDynamicsMove(timestep=5 * unit.femtosecond, n_steps=20),
...                           BoltzmannGeneratorMove(gen, n_proposals=5, seed=0)])
>>> sampler = mcmc.MCMCSampler(thermo, sampler_state, move)
>>> sampler.run(3)
>>> move.move_list[1].statistics["n_proposed"]
15
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import openmm.unit as unit
import torch

from ..model.annealed import latent_path
from ..model.generator import BoltzmannGenerator
from ..sampling import AnnealConfig, FixedSchedule
from ..systems import MolecularSystem
from ..transforms import randomize_orientation
from . import annealed
from .base import Chain, GeneratorMove, MoveProposal, _kelvin

__all__ = ["BoltzmannGeneratorMove", "LatentMetropolisMove"]

#: Counters of annealed proposals (`BoltzmannGeneratorMove.anneal_statistics`).
_ANNEAL_KEYS = ("n_forward_paths", "n_backward_paths", "n_energy_force_evaluations")


class BoltzmannGeneratorMove(GeneratorMove):
    """Independence Metropolis-Hastings with configurations proposed by a Boltzmann Generator.

    Each ``apply`` makes ``n_proposals`` successive proposals ``x'`` drawn from the generator and
    accepts each with probability

    ``min(1, exp(-[u(x') - u(x)] + [f(x') - f(x)] + [log p_X(x) - log p_X(x')]))``

    where ``u`` is the thermodynamic state's reduced potential, ``log p_X`` the generator's Cartesian
    density (`BoltzmannGenerator.log_prob`) and ``f = 0.5 log det Z`` the Fixman factor of the
    constraints (zero without atoms carrying two constraints). Rotation-invariant molecules get a
    uniformly random orientation and the current centre of mass; toy systems keep their confined
    components. Proposals out of the generator's domain, with an inverted stereocentre or with a
    failed energy are rejected. On acceptance the `SamplerState` is read back from the context
    (positions, potential energy) with velocities redrawn from the Maxwell-Boltzmann distribution at
    the state's temperature; on rejection it is unchanged.

    Parameters
    ----------
    generator : BoltzmannGenerator or path
        A generator, or the path of a saved one (then ``system`` is required).
    n_proposals : int
        Successive proposals per ``apply``.
    system : MolecularSystem, optional
        The system the saved generator belongs to (only with a path).
    model_path : path, optional
        Where the generator is (or gets) saved. Serialisation (``MultiStateReporter`` storage,
        ``openmmtools.utils.serialize``) stores this path; if the file does not exist the generator
        is saved there, if it exists it must hold this generator. Not needed for in-memory use.
    seed : int, optional
        Seeds the proposals (``torch.Generator``) and the acceptance tests (numpy): same seed, same
        chain. Deep copies (one per thermodynamic state in multistate samplers) get independent
        streams derived from it. ``None``: fresh entropy.
    scale_prior : bool
        At a state temperature ``T`` other than the training temperature ``T0``, draw from the prior
        with its Gaussian width scaled by ``sqrt(T/T0)`` (the Hastings term uses that density, so
        the move is exact either way). Annealed proposals always scale it.
    fixman : bool, optional
        Include the Fixman factor (default: where the state's constraints need it).
    anneal : FixedSchedule or AnnealConfig, optional
        Annealed proposals (`openmm_bg.mcmc.annealed`): each proposal is a flow sample carried to
        the state's Boltzmann distribution through the frozen schedule (a `FixedSchedule`, e.g.
        `openmm_bg.mcmc.pilot_schedule`, or an ``AnnealConfig(adaptive=False, schedule=...,
        resample_threshold=0)`` to choose the kernel and its steps per level); the current
        configuration gets a backward path through the same kernels in reverse order, and the
        forward path is accepted with ``min(1, W_fwd / W_bwd)`` (times the state's ``exp(-u + f)``
        over the generator's ``exp(-u_g)`` at both ends). Exact; ``None``: plain flow samples.

    Attributes
    ----------
    n_accepted, n_proposed : int
        Counters (also in ``statistics``, with ``n_out_of_domain``, ``n_inverted``,
        ``n_failed_energy``).
    anneal_statistics : dict
        Annealed proposals: ``n_forward_paths``, ``n_backward_paths`` and
        ``n_energy_force_evaluations`` (of the generator's energy, both directions).

    Notes
    -----
    Cost per ``apply``: one batched flow pass for the proposals, one density evaluation of the
    current configuration, one energy evaluation of the current configuration (the state's
    Hamiltonian may differ from the one the sampler state's stored energy was computed with, e.g.
    after a replica exchange) and one per valid proposal. Annealed proposals add
    ``(n_proposals + 1) (1 + K m L)`` energy + force evaluations (``K`` levels, ``m`` kernel steps
    per level, ``L`` leapfrog steps, 1 for MALA), in ``2 (1 + K m L)`` batched calls.

    Examples
    --------
    >>> import openmm.unit as unit
    >>> from openmmtools import mcmc, states
    >>> # dw: the double well; dw_gen: a small generator built on MD data of it (conftest.py)
    >>> gen = dw_gen
    >>> move = BoltzmannGeneratorMove(gen, n_proposals=10, seed=1)
    >>> thermo = states.ThermodynamicState(dw.system, temperature=300 * unit.kelvin)
    >>> sampler_state = states.SamplerState(dw.positions * unit.nanometer)
    >>> move.apply(thermo, sampler_state)
    >>> move.n_proposed
    10

    Annealed proposals through 8 frozen levels (one MALA step each):

    >>> from openmm_bg.sampling import FixedSchedule
    >>> annealed = BoltzmannGeneratorMove(gen, n_proposals=4, seed=1, anneal=FixedSchedule.linear(8, 0.3))
    >>> annealed.apply(thermo, sampler_state)
    >>> annealed.n_proposed, annealed.anneal_statistics["n_energy_force_evaluations"]
    (4, 45)
    """

    def __init__(self, generator: BoltzmannGenerator | str | os.PathLike, n_proposals: int = 1,
                 system: MolecularSystem | None = None, model_path: str | os.PathLike | None = None,
                 seed: int | None = None, scale_prior: bool = True, fixman: bool | None = None,
                 anneal: FixedSchedule | AnnealConfig | None = None):
        super().__init__(generator, system=system, model_path=model_path, seed=seed, fixman=fixman)
        if int(n_proposals) < 1:
            raise ValueError(f"n_proposals must be >= 1, got {n_proposals}")
        self.n_proposals = int(n_proposals)
        self.scale_prior = bool(scale_prior)
        self.anneal = annealed.move_anneal_config(anneal)
        if self.anneal is not None and not self.scale_prior:
            raise ValueError("annealed proposals start from the prior scaled by T / T_train (the path's base): "
                             "scale_prior=False is for plain proposals only")
        self.anneal_statistics = dict.fromkeys(_ANNEAL_KEYS, 0)
        self._last = None

    def _extra_state(self) -> dict:
        state = {"n_proposals": self.n_proposals, "scale_prior": self.scale_prior}
        if self.anneal is not None:
            state.update(anneal=annealed.config_state(self.anneal), anneal_statistics=dict(self.anneal_statistics))
        return state

    def _set_extra_state(self, state: dict) -> None:
        self.n_proposals = int(state.get("n_proposals", 1))
        self.scale_prior = bool(state.get("scale_prior", True))
        self.anneal = annealed.config_from_state(state.get("anneal"))
        stats = state.get("anneal_statistics") or {}
        self.anneal_statistics = {k: int(stats.get(k, 0)) for k in _ANNEAL_KEYS}
        self._last = None

    def _proposals(self, gen: BoltzmannGenerator, thermodynamic_state, chain: Chain,
                   tgen: torch.Generator) -> Iterator[MoveProposal]:
        """``n_proposals`` independent draws of the generator (one batch), ``g(x) = -log p_X(x)``.

        Rotation-invariant molecules get a uniformly random orientation and the current centre of
        mass (``log p_X`` is invariant to both); toy systems keep their confined components.
        """
        temperature = _kelvin(thermodynamic_state.temperature)
        if self.anneal is not None:
            yield from self._annealed_proposals(gen, temperature, chain, tgen)
            return
        t_prior = temperature if self.scale_prior else gen.training_temperature
        x_cur = chain.current.x
        with torch.no_grad():
            lp_cur = self._current_log_prob(gen, x_cur, t_prior)
            proposal = gen.propose(self.n_proposals, temperature=t_prior, generator=tgen)
            x_new = self._place(gen, proposal.x, x_cur, tgen)
            inverted = gen.inverted(x_new).cpu().numpy()
        x_new = x_new.numpy()
        lp_new = proposal.log_q.cpu().numpy()
        ok = proposal.ok.cpu().numpy() & np.isfinite(lp_new)
        chain.current = MoveProposal(x_cur, -lp_cur, data=t_prior)
        for k in range(self.n_proposals):
            if not ok[k]:
                yield MoveProposal.rejected("out_of_domain")
            elif inverted[k]:
                yield MoveProposal.rejected("inverted")
            else:
                yield MoveProposal(x_new[k], -float(lp_new[k]), data=t_prior)

    @staticmethod
    def _place(gen: BoltzmannGenerator, x_new: torch.Tensor, x_cur: np.ndarray, tgen: torch.Generator) -> torch.Tensor:
        """Proposals ``[n, n_atoms, 3]`` (CPU) placed in the chain's frame: a uniformly random orientation at the
        current centre of mass (rotation-invariant molecules), else the current confined components."""
        x_new = x_new.cpu()
        if gen.transform.rotation_invariant:
            masses = torch.as_tensor(gen.system.masses, dtype=torch.float64)
            com = (torch.as_tensor(x_cur) * masses[:, None]).sum(0) / masses.sum()
            x_new, _ = randomize_orientation(x_new, tgen if tgen.device.type == "cpu" else None, masses, com)
            return x_new
        return gen.transform.place(x_new, gen.transform.frame(torch.as_tensor(x_cur[None])))

    def _annealed_proposals(self, gen: BoltzmannGenerator, temperature: float, chain: Chain,
                            tgen: torch.Generator) -> Iterator[MoveProposal]:
        """Annealed proposals (`openmm_bg.mcmc.annealed`): ``g = log W + u_g`` of the current configuration's
        backward path and of ``n_proposals`` forward paths; none without a backward path."""
        path = latent_path(gen, temperature)
        x_cur = chain.current.x
        g_cur = self._current_path_term(gen, path, x_cur, tgen)
        self.anneal_statistics["n_backward_paths"] += 1
        if g_cur is None:  # outside the generator's domain or of weight zero there: no path, no jump
            self.anneal_statistics["n_energy_force_evaluations"] += path.n_energy_evaluations
            for _ in range(self.n_proposals):
                yield MoveProposal.rejected("out_of_domain")
            return
        chain.current = MoveProposal(x_cur, g_cur)
        paths = annealed.forward_paths(gen, path, self.n_proposals, self.anneal, tgen)
        self.anneal_statistics["n_forward_paths"] += self.n_proposals
        self.anneal_statistics["n_energy_force_evaluations"] += path.n_energy_evaluations
        with torch.no_grad():
            x_new = self._place(gen, paths.x, x_cur, tgen)
            inverted = gen.inverted(x_new).cpu().numpy()
        x_new = x_new.numpy()
        for k in range(self.n_proposals):
            if not paths.ok[k]:
                yield MoveProposal.rejected("out_of_domain")
            elif inverted[k]:
                yield MoveProposal.rejected("inverted")
            else:  # a path of weight zero (g = -inf) is never accepted
                yield MoveProposal(x_new[k], float(paths.log_ratio_term[k]))

    def _current_path_term(self, gen: BoltzmannGenerator, path, x_cur: np.ndarray,
                           tgen: torch.Generator) -> float | None:
        """``g`` of the current configuration: ``log W_bwd + u_g`` of its refreshed (backward) path."""
        g = float(annealed.backward_terms(gen, path, x_cur[None], self.anneal, tgen)[0])
        return g if math.isfinite(g) else None

    def _current_log_prob(self, gen: BoltzmannGenerator, x_cur: np.ndarray, t_prior: float) -> float:
        """``log p_X`` of the current configuration, reused if it is the one this move left behind."""
        last = self._last
        if (last is not None and last[1] == t_prior and last[3] == _weights_version(gen)
                and np.array_equal(last[0], x_cur)):
            return last[2]
        return float(gen.log_prob(torch.as_tensor(x_cur[None]), t_prior)[0])

    def _accepted(self, sampler_state, current: MoveProposal) -> None:
        """Remember ``log p_X`` of the configuration left behind (as read back from the context)."""
        x = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        self._last = (x, current.data, -current.log_ratio_term, _weights_version(self._generator))


class LatentMetropolisMove(GeneratorMove):
    """The paper's latent-space Metropolis move: a random walk in the generator's latent space.

    ``z = F_xz(x)``, ``z' = z + s N(0, I)`` (wrapped on circular latent dimensions), ``x' = F_zx(z')``
    placed in the current configuration's frame (rotation and position; toy systems keep their
    confined components), accepted with

    ``min(1, exp(-[u(x') - u(x)] + [f(x') - f(x)] + log|det J_zx(z')| - log|det J_zx(z)|))``

    with ``u`` the state's reduced potential, ``log|det J_zx|`` the log-det of the full map
    ``z -> (x, R, t)`` and ``f`` the Fixman factor of the constraints. The random walk is symmetric
    in ``(z, R, t)``, so the move is exact in Cartesian space. Velocities are redrawn on acceptance.

    Parameters
    ----------
    generator : BoltzmannGenerator or path
        A generator, or the path of a saved one (then ``system`` is required).
    step_size : float
        ``s``, the latent step's standard deviation (latent units; the prior has unit width).
    n_steps : int
        Successive steps per ``apply``.
    system, model_path, seed, fixman
        As for `BoltzmannGeneratorMove`.

    Examples
    --------
    >>> import openmm.unit as unit
    >>> from openmmtools import states
    >>> # dw: the double well; dw_gen: a small generator built on MD data of it (conftest.py)
    >>> gen = dw_gen
    >>> move = LatentMetropolisMove(gen, step_size=0.3, n_steps=5, seed=2)
    >>> thermo = states.ThermodynamicState(dw.system, temperature=300 * unit.kelvin)
    >>> move.apply(thermo, states.SamplerState(dw.positions * unit.nanometer))
    >>> move.n_proposed
    5
    """

    def __init__(self, generator: BoltzmannGenerator | str | os.PathLike, step_size: float = 0.1,
                 n_steps: int = 1, system: MolecularSystem | None = None,
                 model_path: str | os.PathLike | None = None, seed: int | None = None,
                 fixman: bool | None = None):
        super().__init__(generator, system=system, model_path=model_path, seed=seed, fixman=fixman)
        if not float(step_size) > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        if int(n_steps) < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.step_size = float(step_size)
        self.n_steps = int(n_steps)

    def _extra_state(self) -> dict:
        return {"step_size": self.step_size, "n_steps": self.n_steps}

    def _set_extra_state(self, state: dict) -> None:
        self.step_size = float(state.get("step_size", 0.1))
        self.n_steps = int(state.get("n_steps", 1))

    def _wrap(self, gen: BoltzmannGenerator, z: torch.Tensor) -> torch.Tensor:
        dom = gen.latent_domain
        circ = [i for i, k in enumerate(dom.kinds) if k == "circular"]
        if not circ:
            return z
        low = torch.tensor([dom.low[i] for i in circ], dtype=z.dtype, device=z.device)
        high = torch.tensor([dom.high[i] for i in circ], dtype=z.dtype, device=z.device)
        z = z.clone()
        z[:, circ] = low + torch.remainder(z[:, circ] - low, high - low)
        return z

    def _proposals(self, gen: BoltzmannGenerator, thermodynamic_state, chain: Chain,
                   tgen: torch.Generator) -> Iterator[MoveProposal]:
        """``n_steps`` successive steps of the latent random walk from the chain's current point,
        ``g(x) = log|det J_zx(z)|``; each proposal is placed in the current configuration's frame."""
        xt = torch.as_tensor(chain.current.x[None], device=gen.device)
        with torch.no_grad():
            z, ld_inv, ok_cur = gen.inverse(xt)
            frame = gen.transform.frame(xt)  # rigid-body motion, or the confined components
        if not bool(ok_cur[0]):
            # the current configuration lies outside the generator's domain: no latent point to walk from
            for _ in range(self.n_steps):
                yield MoveProposal.rejected("out_of_domain")
            return
        chain.current = MoveProposal(chain.current.x, -float(ld_inv[0]), data=z)  # log|det J_zx(z)|
        for _ in range(self.n_steps):
            yield self._step(gen, chain.current.data, frame, tgen)

    def _step(self, gen: BoltzmannGenerator, z: torch.Tensor, frame, tgen: torch.Generator) -> MoveProposal:
        with torch.no_grad():
            noise = torch.randn(z.shape, generator=tgen, dtype=z.dtype, device=z.device)
            z_new = self._wrap(gen, z + self.step_size * noise)
            proposal = gen.propose(z=z_new)
            if not bool(proposal.ok[0]):
                return MoveProposal.rejected("out_of_domain")
            x_new = gen.transform.place(proposal.x, frame)
            if bool(gen.inverted(x_new)[0]):
                return MoveProposal.rejected("inverted")
        return MoveProposal(x_new[0].cpu().numpy(), float(proposal.log_det[0]), data=z_new)


def _weights_version(gen: BoltzmannGenerator) -> tuple:
    """Changes whenever the flow's weights are modified in place (e.g. by further training)."""
    return (id(gen), *(p._version for p in gen.flow.parameters()))
