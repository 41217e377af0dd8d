"""openmmtools MCMC moves that propose configurations from a Boltzmann Generator.

Two `openmmtools.mcmc.MCMCMove` subclasses let a trained `BoltzmannGenerator` take part in ordinary
openmmtools sampling (``MCMCSampler``, ``SequenceMove``/``WeightedMove`` with ``LangevinDynamicsMove``,
``ReplicaExchangeSampler`` with a ``MultiStateReporter``):

- `BoltzmannGeneratorMove`: independence Metropolis-Hastings with flow samples as proposals,
  accepted with ``min(1, exp(-[u(x') - u(x)] + [log p_X(x) - log p_X(x')]))``;
- `LatentMetropolisMove`: the seed's latent random walk ``z' = F_xz(x) + s N(0, I)`` (wrapped on
  circular latent dimensions), accepted with
  ``min(1, exp(-[u(x') - u(x)] + log|det J_zx(z')| - log|det J_zx(z)|))``.

Both moves are exact in Cartesian space (see ``design.md``):

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

Serialisation (``__getstate__``) stores the *path* of the saved generator, not its weights, plus a
compact description of the topology so that a move read back from storage can rebuild the
generator for the state's ``System``; deep copies (which the multistate samplers make once per
thermodynamic state) share one loaded model, and models are loaded once per process (a cache keyed
by the resolved path and the file's modification time).

Examples
--------
Add a Boltzmann-Generator move to Langevin dynamics of the seed's double well:

>>> import openmm.unit as unit
>>> from openmmtools import mcmc, states
>>> import openmm_bg
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, progress=False)
>>> gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
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

import copy
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import openmm.app as app
import openmm.unit as unit
import torch
from openmmtools import cache as ommt_cache
from openmmtools.mcmc import MCMCMove

from ..model.generator import BoltzmannGenerator, ModelMismatchError, check_fingerprint, system_fingerprint
from ..systems import MolecularSystem
from ..transforms import randomize_orientation

__all__ = ["BoltzmannGeneratorMove", "LatentMetropolisMove", "fixman_log_factor", "FixmanFactor",
           "clear_model_cache"]

# (resolved path, mtime_ns) -> BoltzmannGenerator; shared by every move of this process
_MODEL_CACHE: dict[tuple[str, int], BoltzmannGenerator] = {}


def clear_model_cache() -> None:
    """Forget the generators loaded by deserialised moves (the next use reloads them from disk)."""
    _MODEL_CACHE.clear()


def _model_key(path: str | os.PathLike) -> tuple[str, int]:
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"saved generator not found: {str(p)!r} (the move stores the path of the "
                                "generator, not its weights; keep the model file next to the storage)")
    return str(p), p.stat().st_mtime_ns


# ---------------------------------------------------------------------------------------------- Fixman
class FixmanFactor:
    """The Fixman factor ``0.5 log det Z(x)`` of a set of distance constraints.

    ``Z_ab = sum_i (1/m_i) grad_i g_a . grad_i g_b`` with ``g_a = |x_j - x_i| - d_a``. Constrained
    Langevin dynamics samples ``exp(-u(x)) sqrt(det Z(x))`` with respect to the Cartesian measure
    with a delta function on each constrained length (the generator's fixed-bond measure). ``Z`` is
    block diagonal over groups of constraints that share atoms; groups of one constraint give a
    constant (``1/m_i + 1/m_j``) and are left out, so the factor is zero without shared atoms.

    Parameters
    ----------
    constraints : sequence of (int, int, float)
        ``(i, j, length_nm)`` as `MolecularSystem.constraints`.
    masses : array-like
        ``[n_atoms]`` particle masses in dalton.

    Attributes
    ----------
    active : bool
        Whether any atom carries two or more constraints (otherwise the factor is constant, 0 here).

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide", constraints="hbonds")
    >>> f = FixmanFactor(ala.constraints, ala.masses)
    >>> f.active, f(ala.positions[None]).shape
    (True, (1,))
    """

    def __init__(self, constraints, masses):
        masses = np.asarray(masses, dtype=np.float64)
        cons = [(int(i), int(j)) for i, j, *_ in constraints]
        if any(masses[i] == 0 or masses[j] == 0 for i, j in cons):
            raise ValueError("constraints on massless particles are not supported")
        count = np.zeros(len(masses), dtype=int)
        for i, j in cons:
            count[i] += 1
            count[j] += 1
        keep = [c for c in cons if count[c[0]] > 1 or count[c[1]] > 1]
        self.active = len(keep) > 0
        self._i = np.array([c[0] for c in keep], dtype=int)
        self._j = np.array([c[1] for c in keep], dtype=int)
        n = len(keep)
        self._diag = 1.0 / masses[self._i] + 1.0 / masses[self._j] if n else np.zeros(0)
        # off-diagonal entries: (a, b, shared atom, sign of the product of the two gradients)
        pairs = []
        for a in range(n):
            for b in range(a + 1, n):
                for ka, sa in ((self._i[a], -1.0), (self._j[a], 1.0)):
                    for kb, sb in ((self._i[b], -1.0), (self._j[b], 1.0)):
                        if ka == kb:
                            pairs.append((a, b, sa * sb / masses[ka]))
        self._pa = np.array([p[0] for p in pairs], dtype=int)
        self._pb = np.array([p[1] for p in pairs], dtype=int)
        self._pw = np.array([p[2] for p in pairs], dtype=np.float64)

    def __call__(self, positions) -> np.ndarray:
        """``0.5 log det Z`` ``[batch]`` (float64) of positions ``[batch, n_atoms, 3]`` (nm)."""
        x = np.asarray(positions, dtype=np.float64)
        x = x[None] if x.ndim == 2 else x
        if not self.active:
            return np.zeros(len(x))
        e = x[:, self._j] - x[:, self._i]
        e = e / np.linalg.norm(e, axis=-1, keepdims=True)
        n = len(self._i)
        z = np.zeros((len(x), n, n))
        z[:, np.arange(n), np.arange(n)] = self._diag
        dots = np.einsum("bpk,bpk->bp", e[:, self._pa], e[:, self._pb]) * self._pw
        z[:, self._pa, self._pb] = dots
        z[:, self._pb, self._pa] = dots
        sign, logdet = np.linalg.slogdet(z)
        return np.where(sign > 0, 0.5 * logdet, np.nan)


def fixman_log_factor(positions, constraints, masses) -> np.ndarray:
    """``0.5 log det Z(x)`` ``[batch]`` of distance constraints (see `FixmanFactor`).

    Parameters
    ----------
    positions : array-like
        ``[batch, n_atoms, 3]`` or ``[n_atoms, 3]`` in nm.
    constraints : sequence of (int, int, float)
        ``(i, j, length_nm)``.
    masses : array-like
        ``[n_atoms]`` in dalton.

    Returns
    -------
    numpy.ndarray
        ``[batch]`` float64; only the part from atoms with two or more constraints (the rest is a
        constant and left out).

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([[0.0, 0, 0], [0.1, 0, 0], [0.0, 0.1, 0]])   # two constraints on atom 0 at 90 deg
    >>> round(float(fixman_log_factor(x, [(0, 1, 0.1), (0, 2, 0.1)], [1.0, 1.0, 1.0])[0]), 6)
    0.693147
    """
    return FixmanFactor(constraints, masses)(positions)


# ---------------------------------------------------------------------------------------------- topology
def _topology_to_dict(topology: app.Topology) -> dict:
    atoms, residues, chains = [], [], []
    for chain in topology.chains():
        chains.append(chain.id)
    for residue in topology.residues():
        residues.append([residue.name, residue.chain.index, str(residue.id)])
    for atom in topology.atoms():
        atoms.append([atom.name, atom.element.symbol if atom.element is not None else "",
                      atom.residue.index])
    bonds = [[b[0].index, b[1].index] for b in topology.bonds()]
    return {"chains": chains, "residues": residues, "atoms": atoms, "bonds": bonds}


def _topology_from_dict(d: dict) -> app.Topology:
    top = app.Topology()
    chains = [top.addChain(cid) for cid in d["chains"]]
    residues = [top.addResidue(name, chains[int(c)], id=rid) for name, c, rid in d["residues"]]
    atoms = [top.addAtom(name, app.Element.getBySymbol(el) if el else None, residues[int(r)])
             for name, el, r in d["atoms"]]
    for a, b in d["bonds"]:
        top.addBond(atoms[int(a)], atoms[int(b)])
    return top


def _system_info(system: MolecularSystem) -> dict:
    return {
        "name": system.name, "temperature": float(system.temperature),
        "topology": _topology_to_dict(system.topology),
        "positions": [[float(v) for v in row] for row in system.positions],
        "rotation_invariant": bool(system.rotation_invariant),
        "free_dims": None if system.free_dims is None else system.free_dims.astype(bool).tolist(),
    }


def _molecular_system(info: dict, openmm_system: openmm.System) -> MolecularSystem:
    free = info.get("free_dims")
    return MolecularSystem(name=info["name"], system=openmm_system,
                           topology=_topology_from_dict(info["topology"]),
                           positions=np.asarray(info["positions"], dtype=np.float64),
                           temperature=float(info["temperature"]),
                           rotation_invariant=bool(info["rotation_invariant"]),
                           free_dims=None if free is None else np.asarray(free, dtype=bool))


def _state_system(thermodynamic_state) -> openmm.System:
    """The state's System without copying it where openmmtools allows (read only)."""
    system = getattr(thermodynamic_state, "_standard_system", None)
    return system if system is not None else thermodynamic_state.system


def _state_key(thermodynamic_state) -> Any:
    return getattr(thermodynamic_state, "_standard_system_hash", None) or id(thermodynamic_state)


def _kelvin(temperature) -> float:
    if hasattr(temperature, "value_in_unit"):
        return float(temperature.value_in_unit(unit.kelvin))
    return float(temperature)


# ---------------------------------------------------------------------------------------------- base
class _GeneratorMove(MCMCMove):
    """Shared machinery: the generator (loaded lazily, shared by copies), checks, RNG, serialisation."""

    _STAT_KEYS = ("n_accepted", "n_proposed", "n_out_of_domain", "n_inverted", "n_failed_energy")

    def __init__(self, generator: BoltzmannGenerator | str | os.PathLike,
                 system: MolecularSystem | None = None, model_path: str | os.PathLike | None = None,
                 seed: int | None = None, fixman: bool | None = None, hastings: bool = True):
        super().__init__()
        if isinstance(generator, BoltzmannGenerator):
            self._generator = generator
            self._model_path = None
            if model_path is not None:
                self._model_path = self._register_path(generator, model_path)
                # copies deserialised in this process (SequenceMove copies through serialisation) share it
                _MODEL_CACHE.setdefault(_model_key(self._model_path), generator)
            else:
                known = getattr(generator, "path", None) or getattr(generator, "saved_path", None)
                self._model_path = str(Path(known).resolve()) if known is not None else None
            self._system_info = _system_info(generator.system)
        elif isinstance(generator, (str, os.PathLike)):
            if system is None:
                raise TypeError("pass the MolecularSystem the generator was trained for together with a "
                                f"path: {type(self).__name__}(path, system=...)")
            key = _model_key(generator)
            gen = _MODEL_CACHE.get(key)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if gen is None:
                    gen = BoltzmannGenerator.load(key[0], system)
                    _MODEL_CACHE[key] = gen
                else:  # already loaded in this process: still refuse another system
                    check_fingerprint(system_fingerprint(gen.system), system)
            self._generator = gen
            self._model_path = key[0]
            self._system_info = _system_info(system)
        else:
            raise TypeError(f"generator must be a BoltzmannGenerator or the path of a saved one, "
                            f"got {type(generator).__name__}")
        self.seed = None if seed is None else int(seed)
        self.fixman = fixman
        self.hastings = bool(hastings)
        self._stream: list[int] = []
        self._n_copies = 0
        self._n_applied = 0
        self._checked: dict = {}
        self._fixman_term: FixmanFactor | None = None
        for k in self._STAT_KEYS:
            setattr(self, k, 0)

    @staticmethod
    def _register_path(generator: BoltzmannGenerator, model_path) -> str:
        path = Path(model_path).expanduser()
        if not path.exists():
            generator.save(path)
        else:
            from ..model.generator import read_model_file

            payload = read_model_file(path)
            state = generator.flow.state_dict()
            stored = payload["flow_state"]
            same = set(stored) == set(state) and all(
                torch.equal(stored[k].cpu(), state[k].detach().cpu()) for k in state)
            if not same or payload["fingerprint"] != system_fingerprint(generator.system):
                raise ValueError(f"{str(path)!r} holds another model than this generator; save the "
                                 "generator to a new path (or pass a path that does not exist yet and the "
                                 "move saves it)")
        return str(path.resolve())

    # ------------------------------------------------------------------ properties
    @property
    def generator(self) -> BoltzmannGenerator | None:
        """The Boltzmann Generator (``None`` until a deserialised move is first applied)."""
        return self._generator

    @property
    def model_path(self) -> str | None:
        """Resolved path of the saved generator (what serialisation stores), or ``None``."""
        return self._model_path

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

    # ------------------------------------------------------------------ generator, checks
    def _ensure_generator(self, thermodynamic_state) -> BoltzmannGenerator:
        if self._generator is None:
            key = _model_key(self._model_path)
            gen = _MODEL_CACHE.get(key)
            if gen is None:
                ms = _molecular_system(self._system_info, copy.deepcopy(_state_system(thermodynamic_state)))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    gen = BoltzmannGenerator.load(key[0], ms)
                _MODEL_CACHE[key] = gen
            self._generator = gen
        gen = self._generator
        skey = _state_key(thermodynamic_state)
        if skey not in self._checked:
            self._check_state(gen, thermodynamic_state)
            self._checked[skey] = True
        return gen

    def _check_state(self, gen: BoltzmannGenerator, thermodynamic_state) -> None:
        system = _state_system(thermodynamic_state)
        if system.usesPeriodicBoundaryConditions():
            raise ValueError("the thermodynamic state's System is periodic; a Boltzmann Generator move "
                             "supports molecules in vacuum or implicit solvent only")
        if system.getNumParticles() != gen.system.n_atoms:
            raise ModelMismatchError(f"the thermodynamic state's System has {system.getNumParticles()} "
                                     f"particles, the generator was trained for {gen.system.n_atoms}")
        other = MolecularSystem(name=gen.system.name, system=system, topology=gen.system.topology,
                                positions=gen.system.positions, temperature=gen.system.temperature)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # another Hamiltonian is fine: u is the state's
            check_fingerprint(system_fingerprint(gen.system), other, what="generator")
        fixman = FixmanFactor(other.constraints, other.masses)
        use = fixman.active if self.fixman is None else (bool(self.fixman) and fixman.active)
        self._fixman_term = fixman if use else None

    def _fixman(self, x: np.ndarray) -> np.ndarray:
        if self._fixman_term is None:
            return np.zeros(len(x))
        return self._fixman_term(x)

    # ------------------------------------------------------------------ randomness
    def _rngs(self, thermodynamic_state) -> tuple[np.random.Generator, torch.Generator]:
        """Fresh generators for one ``apply``: same seed, copy, state and call number, same draws.

        The state (temperature, System) enters so that the per-state copies of a multistate sampler
        (which openmmtools makes through serialisation, i.e. with equal seeds) draw independently.
        """
        if self.seed is None:
            rng = np.random.default_rng()
        else:
            t_mk = int(round(_kelvin(thermodynamic_state.temperature) * 1000))
            s_hash = int(getattr(thermodynamic_state, "_standard_system_hash", 0) or 0) % (2**63)
            rng = np.random.default_rng([self.seed, *self._stream, self._n_applied, t_mk, s_hash])
        self._n_applied += 1
        gen = self._generator
        tgen = torch.Generator(device=gen.device if gen is not None else "cpu")
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

    # ------------------------------------------------------------------ serialisation and copies
    def _require_path(self) -> str:
        if self._model_path is None:
            raise ValueError(
                f"{type(self).__name__} stores the path of a saved generator, not its weights, and this "
                "generator has not been saved: create the move with model_path='model.pt' (it is saved there "
                "if the file does not exist) or save it first with generator.save(path)")
        return self._model_path

    def __getstate__(self) -> dict:
        return {
            "model_path": self._require_path(), "system_info": self._system_info,
            "seed": self.seed, "stream": list(self._stream), "n_applied": int(self._n_applied),
            "n_copies": int(self._n_copies), "fixman": self.fixman, "hastings": self.hastings,
            **self.statistics, **self._extra_state(),
        }

    def __setstate__(self, state: dict) -> None:
        self._generator = None
        self._model_path = str(state["model_path"])
        self._system_info = state["system_info"]
        self.seed = state.get("seed")
        self._stream = [int(s) for s in state.get("stream", [])]
        self._n_applied = int(state.get("n_applied", 0))
        self._n_copies = int(state.get("n_copies", 0))
        self.fixman = state.get("fixman")
        self.hastings = bool(state.get("hastings", True))
        self._checked = {}
        self._fixman_term = None
        self.statistics = state
        self._set_extra_state(state)
        # reuse a model already loaded in this process
        try:
            self._generator = _MODEL_CACHE.get(_model_key(self._model_path))
        except FileNotFoundError:
            pass  # reported clearly when the move is applied

    def __copy__(self) -> _GeneratorMove:
        new = type(self).__new__(type(self))
        new.__dict__.update(self.__dict__)
        return new

    def __deepcopy__(self, memo) -> _GeneratorMove:
        new = type(self).__new__(type(self))
        for k, v in self.__dict__.items():
            if k in ("_generator", "_fixman_term"):
                new.__dict__[k] = v  # shared: one model per process, not one per thermodynamic state
            else:
                new.__dict__[k] = copy.deepcopy(v, memo)
        new._stream = [*self._stream, self._n_copies]  # independent random stream per copy
        new._n_copies = 0
        self._n_copies += 1
        return new

    def _extra_state(self) -> dict:
        return {}

    def _set_extra_state(self, state: dict) -> None:
        pass


# ---------------------------------------------------------------------------------------------- moves
class BoltzmannGeneratorMove(_GeneratorMove):
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
        the move is exact either way).
    fixman : bool, optional
        Include the Fixman factor (default: where the state's constraints need it).
    hastings : bool
        Include the proposal densities in the acceptance. ``False`` is wrong (biased) and exists
        only to show that in tests.

    Attributes
    ----------
    n_accepted, n_proposed : int
        Counters (also in ``statistics``, with ``n_out_of_domain``, ``n_inverted``,
        ``n_failed_energy``).

    Notes
    -----
    Cost per ``apply``: one batched flow pass for the proposals, one density evaluation of the
    current configuration, one energy evaluation of the current configuration (the state's
    Hamiltonian may differ from the one the sampler state's stored energy was computed with, e.g.
    after a replica exchange) and one per valid proposal.

    Examples
    --------
    >>> import openmm.unit as unit
    >>> from openmmtools import mcmc, states
    >>> import openmm_bg
    >>> from openmm_bg.systems import load
    >>> dw = load("double_well")
    >>> data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, progress=False)
    >>> gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
    >>> move = BoltzmannGeneratorMove(gen, n_proposals=10, seed=1)
    >>> thermo = states.ThermodynamicState(dw.system, temperature=300 * unit.kelvin)
    >>> sampler_state = states.SamplerState(dw.positions * unit.nanometer)
    >>> move.apply(thermo, sampler_state)
    >>> move.n_proposed
    10
    """

    def __init__(self, generator: BoltzmannGenerator | str | os.PathLike, n_proposals: int = 1,
                 system: MolecularSystem | None = None, model_path: str | os.PathLike | None = None,
                 seed: int | None = None, scale_prior: bool = True, fixman: bool | None = None,
                 hastings: bool = True):
        super().__init__(generator, system=system, model_path=model_path, seed=seed, fixman=fixman,
                         hastings=hastings)
        if int(n_proposals) < 1:
            raise ValueError(f"n_proposals must be >= 1, got {n_proposals}")
        self.n_proposals = int(n_proposals)
        self.scale_prior = bool(scale_prior)
        self._last = None

    def _extra_state(self) -> dict:
        return {"n_proposals": self.n_proposals, "scale_prior": self.scale_prior}

    def _set_extra_state(self, state: dict) -> None:
        self.n_proposals = int(state.get("n_proposals", 1))
        self.scale_prior = bool(state.get("scale_prior", True))
        self._last = None

    def apply(self, thermodynamic_state, sampler_state,
              context_cache: ommt_cache.ContextCache | None = None) -> None:
        """Make ``n_proposals`` independence Metropolis-Hastings steps; modifies ``sampler_state``.

        Parameters
        ----------
        thermodynamic_state : openmmtools.states.ThermodynamicState
            Gives the reduced potential (and temperature) of the target.
        sampler_state : openmmtools.states.SamplerState
            Current configuration; updated on acceptance.
        context_cache : openmmtools.cache.ContextCache, optional
            Default the global context cache.
        """
        gen = self._ensure_generator(thermodynamic_state)
        rng, tgen = self._rngs(thermodynamic_state)
        temperature = _kelvin(thermodynamic_state.temperature)
        t_prior = temperature if self.scale_prior else gen.training_temperature
        context = self._context(thermodynamic_state, context_cache)
        x_cur = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        u_cur = self._reduced_potential(thermodynamic_state, context, x_cur)
        rotate = gen.transform.rotation_invariant
        with torch.no_grad():
            lp_cur = self._current_log_prob(gen, x_cur, t_prior) if self.hastings else 0.0
            proposal = gen.propose(self.n_proposals, temperature=t_prior, generator=tgen)
            lp_new = proposal.log_q.cpu().numpy()
            ok = proposal.ok
            x_new = proposal.x.cpu()
            if rotate:  # uniform orientation, current centre of mass; log p_X is invariant to both
                masses = torch.as_tensor(gen.system.masses, dtype=torch.float64)
                com = (torch.as_tensor(x_cur) * masses[:, None]).sum(0) / masses.sum()
                x_new, _ = randomize_orientation(x_new, tgen if tgen.device.type == "cpu" else None,
                                                 masses, com)
            else:  # confined components (toy systems) keep their current values
                x_new = gen.transform.place(x_new, gen.transform.frame(torch.as_tensor(x_cur[None])))
            inverted = gen.inverted(x_new).cpu().numpy()
        x_new = x_new.numpy()
        ok = ok.cpu().numpy() & np.isfinite(lp_new)
        f_cur = float(self._fixman(x_cur[None])[0])
        f_new = self._fixman(x_new)
        accepted = False
        for k in range(self.n_proposals):
            self.n_proposed += 1
            if not ok[k]:
                self.n_out_of_domain += 1
                continue
            if inverted[k]:
                self.n_inverted += 1
                continue
            u_new = self._reduced_potential(thermodynamic_state, context, x_new[k])
            if not math.isfinite(u_new) or not math.isfinite(f_new[k]):
                self.n_failed_energy += 1
                continue
            log_a = -(u_new - u_cur) + (f_new[k] - f_cur) + (lp_cur - lp_new[k])
            if log_a >= 0 or rng.random() < math.exp(log_a):
                self.n_accepted += 1
                accepted = True
                x_cur, u_cur, lp_cur, f_cur = x_new[k], u_new, float(lp_new[k]), float(f_new[k])
        if accepted:
            self._accept_jump(thermodynamic_state, sampler_state, context, x_cur, rng)
            if self.hastings:
                self._remember(sampler_state, t_prior, lp_cur)

    def _current_log_prob(self, gen: BoltzmannGenerator, x_cur: np.ndarray, t_prior) -> float:
        """``log p_X`` of the current configuration, reused if it is the one this move left behind."""
        last = self._last
        if (last is not None and last[1] == t_prior and last[3] == _weights_version(gen)
                and np.array_equal(last[0], x_cur)):
            return last[2]
        return float(gen.log_prob(torch.as_tensor(x_cur[None]), t_prior)[0])

    def _remember(self, sampler_state, t_prior, lp: float) -> None:
        x = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        self._last = (x, t_prior, lp, _weights_version(self._generator))


class LatentMetropolisMove(_GeneratorMove):
    """The seed's latent-space Metropolis move: a random walk in the generator's latent space.

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
    >>> import openmm_bg
    >>> from openmm_bg.systems import load
    >>> dw = load("double_well")
    >>> data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, progress=False)
    >>> gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
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

    def apply(self, thermodynamic_state, sampler_state,
              context_cache: ommt_cache.ContextCache | None = None) -> None:
        """Make ``n_steps`` latent Metropolis steps; modifies ``sampler_state`` on acceptance.

        Parameters
        ----------
        thermodynamic_state : openmmtools.states.ThermodynamicState
        sampler_state : openmmtools.states.SamplerState
        context_cache : openmmtools.cache.ContextCache, optional
        """
        gen = self._ensure_generator(thermodynamic_state)
        rng, tgen = self._rngs(thermodynamic_state)
        context = self._context(thermodynamic_state, context_cache)
        x_cur = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
        u_cur = self._reduced_potential(thermodynamic_state, context, x_cur)
        f_cur = float(self._fixman(x_cur[None])[0])
        xt = torch.as_tensor(x_cur[None], device=gen.device)
        with torch.no_grad():
            z, ld_inv, ok_cur = gen.inverse(xt)
            frame = gen.transform.frame(xt)  # rigid-body motion, or the confined components
        if not bool(ok_cur[0]):
            # the current configuration lies outside the generator's domain: no latent point to walk from
            self.n_proposed += self.n_steps
            self.n_out_of_domain += self.n_steps
            return
        ld_cur = -float(ld_inv[0])  # log|det J_zx(z)|
        accepted = False
        for _ in range(self.n_steps):
            self.n_proposed += 1
            with torch.no_grad():
                noise = torch.randn(z.shape, generator=tgen, dtype=z.dtype, device=z.device)
                z_new = self._wrap(gen, z + self.step_size * noise)
                proposal = gen.propose(z=z_new)
                if not bool(proposal.ok[0]):
                    self.n_out_of_domain += 1
                    continue
                x_new, ld_new = proposal.x, proposal.log_det
                x_new = gen.transform.place(x_new, frame)
                if bool(gen.inverted(x_new)[0]):
                    self.n_inverted += 1
                    continue
            xn = x_new[0].cpu().numpy()
            u_new = self._reduced_potential(thermodynamic_state, context, xn)
            f_new = float(self._fixman(xn[None])[0])
            if not math.isfinite(u_new) or not math.isfinite(f_new):
                self.n_failed_energy += 1
                continue
            log_a = -(u_new - u_cur) + (f_new - f_cur) + (float(ld_new[0]) - ld_cur)
            if log_a >= 0 or rng.random() < math.exp(log_a):
                self.n_accepted += 1
                accepted = True
                z, x_cur, u_cur, f_cur, ld_cur = z_new, xn, u_new, f_new, float(ld_new[0])
        if accepted:
            self._accept_jump(thermodynamic_state, sampler_state, context, x_cur, rng)


def _weights_version(gen: BoltzmannGenerator) -> tuple:
    """Changes whenever the flow's weights are modified in place (e.g. by further training)."""
    return (id(gen), *(p._version for p in gen.flow.parameters()))

