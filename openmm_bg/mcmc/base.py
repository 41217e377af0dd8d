"""`MetropolisHastingsMove` and `GeneratorMove`: the Metropolis-Hastings machinery shared by all moves.

As ``openmmtools.mcmc.MetropolizedMove`` accepts or rejects what its subclasses' ``_propose_positions``
return, `MetropolisHastingsMove.apply` owns the acceptance loop, the statistics, the random streams,
the energies from the openmmtools context, the Fixman factor and the velocity redraw; a subclass only
proposes (`MetropolisHastingsMove._proposals`), each proposal with its term of the log proposal ratio:

    log a = -[u(x') - u(x)] + [f(x') - f(x)] + [g(x') - g(x)],   g(x') - g(x) = log q(x | x') - log q(x' | x)

with ``u`` the thermodynamic state's reduced potential, ``f = 0.5 log det Z`` the Fixman factor of
the constraints (`openmm_bg.mcmc.fixman`) and ``g`` the `MoveProposal.log_ratio_term` (the proposal
ratios of the generator moves factorise this way; `TorsionMove` overrides
`MetropolisHastingsMove._log_proposal_ratio`). `GeneratorMove` adds the generator. Serialisation
and the model cache live in `openmm_bg.mcmc.serialization`.

Examples
--------
>>> GeneratorMove._STAT_KEYS[:2]
('n_accepted', 'n_proposed')
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit
import torch

from ..model.fingerprint import ModelMismatchError, check_fingerprint, system_fingerprint
from ..model.generator import BoltzmannGenerator
from ..systems import MolecularSystem, require_nonperiodic
from . import serialization
from ._openmmtools import MCMCMove
from ._openmmtools import cache as ommt_cache
from .fixman import FixmanFactor

__all__ = ["GeneratorMove", "MetropolisHastingsMove", "MoveProposal"]


@dataclass(frozen=True)
class MoveProposal:
    """One configuration proposed by a `GeneratorMove` subclass (or the chain's current one).

    Attributes
    ----------
    x : numpy.ndarray or None
        ``[n_atoms, 3]`` nm, in the frame of the current configuration; ``None`` when rejected outright.
    log_ratio_term : float
        ``g(x)``: the proposal ratio is ``log q(x | x') - log q(x' | x) = g(x') - g(x)``.
    status : str
        ``"ok"``, or why the proposal is rejected without an energy: ``"out_of_domain"``, ``"inverted"``.
    data : Any
        What the proposer needs back once this proposal is the current state (e.g. its latent point).
    """

    x: np.ndarray | None
    log_ratio_term: float = 0.0
    status: str = "ok"
    data: Any = None

    @classmethod
    def rejected(cls, status: str) -> MoveProposal:
        """A proposal rejected without an energy (``"out_of_domain"`` or ``"inverted"``)."""
        return cls(None, 0.0, status)


class Chain:
    """The chain's current state during one ``apply``: a proposer reads (and at the start sets) ``current``."""

    def __init__(self, current: MoveProposal):
        self.current = current


# ---------------------------------------------------------------------------------------------- openmmtools state
# openmmtools internals used read-only, in one place: the state's System without a copy, and its hash
def _state_system(thermodynamic_state) -> openmm.System:
    """The state's System without copying it where openmmtools allows (read only)."""
    system = getattr(thermodynamic_state, "_standard_system", None)
    return system if system is not None else thermodynamic_state.system


def _state_hash(thermodynamic_state) -> int:
    return int(getattr(thermodynamic_state, "_standard_system_hash", 0) or 0)


#: openmmtools' (per-process) system hash -> a hash of the same System that every process agrees on
_STABLE_SYSTEM_KEYS: dict[int, int] = {}


def _stable_state_key(thermodynamic_state) -> int:
    """A 63-bit key of the state's standard System, equal in every process (unlike openmmtools' hash).

    openmmtools hashes the serialised System with Python's string hash, which changes from process to
    process unless ``PYTHONHASHSEED`` is set; a seeded move must draw the same numbers everywhere, so
    the System's XML is hashed once per System with SHA-256 instead (about a millisecond for a small
    protein) and remembered under openmmtools' hash.
    """
    quick = _state_hash(thermodynamic_state)
    if quick and quick in _STABLE_SYSTEM_KEYS:
        return _STABLE_SYSTEM_KEYS[quick]
    system = getattr(thermodynamic_state, "_standard_system", None)
    if system is None:
        system = thermodynamic_state.system
    digest = hashlib.sha256(openmm.XmlSerializer.serialize(system).encode()).digest()
    key = int.from_bytes(digest[:8], "little") % (2**63)
    if quick:  # a state without openmmtools' hash is hashed every time (nothing to key the memo on)
        _STABLE_SYSTEM_KEYS[quick] = key
    return key


def _kelvin(temperature) -> float:
    if hasattr(temperature, "value_in_unit"):
        return float(temperature.value_in_unit(unit.kelvin))
    return float(temperature)


# ---------------------------------------------------------------------------------------------- generic base
class MetropolisHastingsMove(MCMCMove):
    """Metropolis-Hastings in Cartesian space: acceptance loop, statistics, RNG, energies, velocity redraw.

    The base of every move of this package (`GeneratorMove`, `openmm_bg.mcmc.TorsionMove`): a
    subclass implements `_prepare` (check the thermodynamic state, return what its proposer needs) and
    `_proposals`; the log acceptance is that of the module docstring.

    Parameters
    ----------
    seed : int, optional
        Seeds the proposals (``torch.Generator``) and the acceptance tests (numpy).
    fixman : bool, optional
        Include the Fixman factor (default: where the state's constraints need it).
    """

    _STAT_KEYS = ("n_accepted", "n_proposed", "n_out_of_domain", "n_inverted", "n_failed_energy")
    #: Attributes deep copies share instead of copying (loaded models, the constraint term).
    _SHARED = ("_fixman_term",)

    def __init__(self, seed: int | None = None, fixman: bool | None = None):
        super().__init__()
        self.seed = None if seed is None else int(seed)
        self.fixman = fixman
        self._stream: list[int] = []
        self._n_copies = 0
        self._n_applied = 0
        self._checked: dict = {}
        self._fixman_term: FixmanFactor | None = None
        for k in self._STAT_KEYS:
            setattr(self, k, 0)

    # ------------------------------------------------------------------ statistics
    @property
    def statistics(self) -> dict:
        """Counters: ``n_accepted``, ``n_proposed`` and the reasons for automatic rejections."""
        return {k: getattr(self, k) for k in self._STAT_KEYS}

    @statistics.setter
    def statistics(self, value: dict) -> None:
        for k in self._STAT_KEYS:
            setattr(self, k, int(value.get(k, 0)))

    @property
    def acceptance_rate(self) -> float:
        """``n_accepted / n_proposed`` (NaN before the first proposal)."""
        return self.n_accepted / self.n_proposed if self.n_proposed else math.nan

    def reset_statistics(self) -> None:
        """Set all counters to zero."""
        for k in self._STAT_KEYS:
            setattr(self, k, 0)

    # ------------------------------------------------------------------ the move
    def apply(self, thermodynamic_state, sampler_state,
              context_cache: ommt_cache.ContextCache | None = None) -> None:
        """Metropolis-Hastings steps with the subclass's proposals; modifies ``sampler_state`` on acceptance.

        Each proposal is accepted with ``min(1, exp(log a))`` (module docstring); proposals out of the
        proposer's domain, with an inverted stereocentre or a failed energy are rejected and counted.
        After an accepted jump the sampler state is read back from the context with velocities
        redrawn from the Maxwell-Boltzmann distribution at the state's temperature; after rejections
        only it is untouched.

        Parameters
        ----------
        thermodynamic_state : openmmtools.states.ThermodynamicState
            Gives the reduced potential (and temperature) of the target.
        sampler_state : openmmtools.states.SamplerState
            Current configuration.
        context_cache : openmmtools.cache.ContextCache, optional
            Default the global context cache.
        """
        proposer = self._prepare(thermodynamic_state)
        rng, tgen = self._rngs(thermodynamic_state)
        context = self._context(thermodynamic_state, context_cache)
        x_cur = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        u_cur = self._reduced_potential(thermodynamic_state, context, x_cur)
        f_cur = float(self._fixman(x_cur[None])[0])
        chain = Chain(MoveProposal(x_cur))
        accepted = False
        for proposal in self._proposals(proposer, thermodynamic_state, chain, tgen):
            self.n_proposed += 1
            if proposal.status == "out_of_domain":
                self.n_out_of_domain += 1
                continue
            if proposal.status == "inverted":
                self.n_inverted += 1
                continue
            u_new = self._reduced_potential(thermodynamic_state, context, proposal.x)
            f_new = float(self._fixman(proposal.x[None])[0])
            if not math.isfinite(u_new) or not math.isfinite(f_new):
                self.n_failed_energy += 1
                continue
            log_a = -(u_new - u_cur) + (f_new - f_cur) + self._log_proposal_ratio(proposal, chain.current)
            if log_a >= 0 or rng.random() < math.exp(log_a):
                self.n_accepted += 1
                accepted = True
                chain.current, u_cur, f_cur = proposal, u_new, f_new
        if accepted:
            self._accept_jump(thermodynamic_state, sampler_state, context, chain.current.x, rng)
            self._accepted(sampler_state, chain.current)

    def _prepare(self, thermodynamic_state) -> Any:
        """Check the state (once per state, `_checked_once`) and return `_proposals`'s first argument."""
        raise NotImplementedError

    def _proposals(self, proposer: Any, thermodynamic_state, chain: Chain,
                   tgen: torch.Generator) -> Iterator[MoveProposal]:
        """Yield this ``apply``'s proposals; implemented by subclasses.

        Before the first proposal, set ``chain.current`` to the current configuration with its
        ``log_ratio_term`` (and ``data``); ``chain.current`` is the accepted proposal afterwards, so a
        random walk proposes from it. Draw all randomness from ``tgen``. Do not yield inside a
        ``torch.no_grad()`` block (the caller would run without gradients too).
        """
        raise NotImplementedError

    def _log_proposal_ratio(self, proposed: MoveProposal, current: MoveProposal) -> float:
        """``log q(x | x') - log q(x' | x)`` of a proposal ``x'`` from the current ``x`` (the Hastings term)."""
        return proposed.log_ratio_term - current.log_ratio_term

    def _accepted(self, sampler_state, current: MoveProposal) -> None:
        """Called after an ``apply`` with an accepted jump, with the new state (a hook for caches)."""

    # ------------------------------------------------------------------ state checks, Fixman factor
    def _checked_once(self, thermodynamic_state, check) -> None:
        """Run ``check(thermodynamic_state)`` the first time this state is seen."""
        skey = _state_hash(thermodynamic_state) or id(thermodynamic_state)
        if skey not in self._checked:
            check(thermodynamic_state)
            self._checked[skey] = True

    def _set_fixman(self, constraints, masses) -> None:
        """Use the Fixman factor of these constraints where they need one (and ``fixman`` allows)."""
        fixman = FixmanFactor(constraints, masses)
        use = fixman.active if self.fixman is None else (bool(self.fixman) and fixman.active)
        self._fixman_term = fixman if use else None

    def _fixman(self, x: np.ndarray) -> np.ndarray:
        if self._fixman_term is None:
            return np.zeros(len(x))
        return self._fixman_term(x)

    # ------------------------------------------------------------------ randomness
    def _device(self) -> str | torch.device:
        """The device of the proposal's ``torch.Generator``."""
        return "cpu"

    def _rngs(self, thermodynamic_state) -> tuple[np.random.Generator, torch.Generator]:
        """Fresh generators for one ``apply``: same seed, copy, state and call number, same draws.

        The state (temperature, System) enters so that the per-state copies of a multistate sampler
        (which openmmtools makes through serialisation, i.e. with equal seeds) draw independently; the
        System enters through `_stable_state_key`, so a seeded move draws the same numbers in every
        process.
        """
        if self.seed is None:
            rng = np.random.default_rng()
        else:
            t_mk = int(round(_kelvin(thermodynamic_state.temperature) * 1000))
            s_hash = _stable_state_key(thermodynamic_state)
            rng = np.random.default_rng([self.seed, *self._stream, self._n_applied, t_mk, s_hash])
        self._n_applied += 1
        tgen = torch.Generator(device=self._device())
        tgen.manual_seed(int(rng.integers(2**62)))
        return rng, tgen

    # ------------------------------------------------------------------ energies via the context
    def _context(self, thermodynamic_state, context_cache) -> openmm.Context:
        """A context of the state from the cache: any cached one (e.g. the Langevin move's), or a new one.

        openmmtools' default integrator defines a global variable ``kT``, which clashes with Systems that
        have a global parameter of that name (the toy systems); a plain Verlet integrator is used then.
        """
        cache_ = self._get_context_cache(context_cache)
        try:
            context, _ = cache_.get_context(thermodynamic_state)
        except openmm.OpenMMException:
            verlet = openmm.VerletIntegrator(1.0 * unit.femtosecond)
            context, _ = cache_.get_context(thermodynamic_state, verlet)
        return context

    @staticmethod
    def _reduced_potential(thermodynamic_state, context, x_nm: np.ndarray) -> float:
        """``u(x)`` of the thermodynamic state (``ThermodynamicState.reduced_potential`` on the context).

        This is the state's Hamiltonian, temperature (and pressure) as openmmtools defines them -- the
        openmmtools protocol, which makes the moves exact in whatever state they are applied (another
        temperature, an alchemical or restrained Hamiltonian), not the generator's own energy.
        ``+inf`` where OpenMM fails or returns a non-finite energy.
        """
        context.setPositions(x_nm)
        try:
            u = float(thermodynamic_state.reduced_potential(context))
        except Exception:  # OpenMM errors for pathological positions: treat as a failed energy
            return math.inf
        return u if math.isfinite(u) else math.inf

    @staticmethod
    def _accept_jump(thermodynamic_state, sampler_state, context, x_nm: np.ndarray, rng) -> None:
        """Positions and energy from the context, velocities redrawn (Maxwell-Boltzmann, constrained)."""
        context.setPositions(x_nm)
        seed = int(rng.integers(1, 2**31 - 1))
        context.setVelocitiesToTemperature(thermodynamic_state.temperature, seed)
        sampler_state.update_from_context(context)

    # ------------------------------------------------------------------ copies, serialisation helpers
    def __copy__(self) -> MetropolisHastingsMove:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo) -> MetropolisHastingsMove:
        new = type(self).__new__(type(self))
        for k, v in self.__dict__.items():
            if k in self._SHARED:
                new.__dict__[k] = v  # shared: one model per process, not one per thermodynamic state
            else:
                new.__dict__[k] = copy.deepcopy(v, memo)
        new._stream = [*self._stream, self._n_copies]  # independent random stream per copy
        new._n_copies = 0
        self._n_copies += 1
        return new

    def _base_state(self) -> dict:
        """What serialisation stores of the base: seed, random stream, counters, ``fixman``."""
        return {"seed": self.seed, "stream": list(self._stream), "n_applied": int(self._n_applied),
                "n_copies": int(self._n_copies), "fixman": self.fixman, **self.statistics}

    def _set_base_state(self, state: dict) -> None:
        self.seed = state.get("seed")
        self._stream = [int(s) for s in state.get("stream", [])]
        self._n_applied = int(state.get("n_applied", 0))
        self._n_copies = int(state.get("n_copies", 0))
        self.fixman = state.get("fixman")
        self._checked = {}
        self._fixman_term = None
        self.statistics = state


# ---------------------------------------------------------------------------------------------- generator moves
class GeneratorMove(MetropolisHastingsMove):
    """Base of the Boltzmann-Generator moves: `MetropolisHastingsMove` with a generator to propose from.

    Subclasses implement `_proposals` (and `_extra_state`/`_set_extra_state` for their options).

    Parameters
    ----------
    generator : BoltzmannGenerator or path
        A generator, or the path of a saved one (then ``system`` is required).
    system : MolecularSystem, optional
        The system the saved generator belongs to (only with a path).
    model_path : path, optional
        Where the generator is (or gets) saved; what serialisation stores (see
        `openmm_bg.mcmc.serialization`).
    seed : int, optional
        Seeds the proposals (``torch.Generator``) and the acceptance tests (numpy).
    fixman : bool, optional
        Include the Fixman factor (default: where the state's constraints need it).
    """

    _SHARED = ("_generator", "_fixman_term")

    def __init__(self, generator: BoltzmannGenerator | str | os.PathLike,
                 system: MolecularSystem | None = None, model_path: str | os.PathLike | None = None,
                 seed: int | None = None, fixman: bool | None = None):
        super().__init__(seed=seed, fixman=fixman)
        if isinstance(generator, BoltzmannGenerator):
            self._generator = generator
            self._model_path = None
            if model_path is not None:
                self._model_path = serialization.register_model_path(generator, model_path)
            else:
                known = getattr(generator, "path", None) or getattr(generator, "saved_path", None)
                self._model_path = str(Path(known).resolve()) if known is not None else None
            self._system_info = serialization.system_info(generator.system)
        elif isinstance(generator, (str, os.PathLike)):
            if system is None:
                raise TypeError("pass the MolecularSystem the generator was trained for together with a "
                                f"path: {type(self).__name__}(path, system=...)")
            self._generator, self._model_path = serialization.cached_generator(generator, system)
            self._system_info = serialization.system_info(system)
        else:
            raise TypeError(f"generator must be a BoltzmannGenerator or the path of a saved one, "
                            f"got {type(generator).__name__}")

    # ------------------------------------------------------------------ properties
    @property
    def generator(self) -> BoltzmannGenerator | None:
        """The Boltzmann Generator (``None`` until a deserialised move is first applied)."""
        return self._generator

    @property
    def model_path(self) -> str | None:
        """Resolved path of the saved generator (what serialisation stores), or ``None``."""
        return self._model_path

    # ------------------------------------------------------------------ generator, checks
    def _prepare(self, thermodynamic_state) -> BoltzmannGenerator:
        return self._ensure_generator(thermodynamic_state)

    def _ensure_generator(self, thermodynamic_state) -> BoltzmannGenerator:
        if self._generator is None:
            self._generator = serialization.generator_for_state(self._model_path, self._system_info,
                                                                _state_system(thermodynamic_state))
        gen = self._generator
        self._checked_once(thermodynamic_state, lambda ts: self._check_state(gen, ts))
        return gen

    def _check_state(self, gen: BoltzmannGenerator, thermodynamic_state) -> None:
        system = _state_system(thermodynamic_state)
        require_nonperiodic(system, "a Boltzmann Generator move (the thermodynamic state's System)")
        if system.getNumParticles() != gen.system.n_atoms:
            raise ModelMismatchError(f"the thermodynamic state's System has {system.getNumParticles()} "
                                     f"particles, the generator was trained for {gen.system.n_atoms}")
        other = MolecularSystem(name=gen.system.name, system=system, topology=gen.system.topology,
                                positions=gen.system.positions, temperature=gen.system.temperature)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # another Hamiltonian is fine: u is the state's
            check_fingerprint(system_fingerprint(gen.system), other, what="generator")
        self._set_fixman(other.constraints, other.masses)

    def _device(self) -> str | torch.device:
        gen = self._generator
        return gen.device if gen is not None else "cpu"

    # ------------------------------------------------------------------ serialisation
    def _require_path(self) -> str:
        if self._model_path is None:
            raise ValueError(
                f"{type(self).__name__} stores the path of a saved generator, not its weights, and this "
                "generator has not been saved: create the move with model_path='model.pt' (it is saved there "
                "if the file does not exist) or save it first with generator.save(path)")
        return self._model_path

    def __getstate__(self) -> dict:
        return {"model_path": self._require_path(), "system_info": self._system_info,
                **self._base_state(), **self._extra_state()}

    def __setstate__(self, state: dict) -> None:
        if state.get("hastings", True) is False:
            warnings.warn(f"a stored {type(self).__name__} dropped the Hastings term (a biased option that "
                          "no longer exists); it is restored as the exact move", UserWarning, stacklevel=2)
        self._generator = None
        self._model_path = str(state["model_path"])
        self._system_info = state["system_info"]
        self._set_base_state(state)
        self._set_extra_state(state)
        self._generator = serialization.cached(self._model_path)  # reuse a model loaded in this process

    def _extra_state(self) -> dict:
        return {}

    def _set_extra_state(self, state: dict) -> None:
        pass
