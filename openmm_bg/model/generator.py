"""`BoltzmannGenerator`: prior + flow + coordinate transform + target energy.

Directions: ``forward`` maps latent ``z`` to configurations ``x``; ``inverse`` maps ``x`` to ``z``.
The chain is ``z --flow--> v --standardize--> y --transform--> x`` where ``y`` are the transform's
coordinates (bonds, angles, torsions, whitened core; or whitened Cartesian coordinates for toy
systems). ``log_prob(x)`` is a density in Cartesian space with rigid-body motion uniform, so that
Metropolis-Hastings ratios and importance weights are exact:

    log p_X(x) = -u_Z(z) - log|det dv/dz| - log|det dy/dv| - log|det d(x, R, t)/dy|
    log w(x)   = -u(x) - log p_X(x)

Samples outside a coordinate's domain, with an inverted stereocentre or with a failed energy get
weight 0 (log weight ``-inf``) and are counted.

Examples
--------
>>> # dw: the double well; dw_gen: a small generator built on MD data of it (conftest.py)
>>> gen = dw_gen
>>> samples = gen.sample(100, seed=1)
>>> samples.positions.shape, samples.log_weights.dtype
((100, 1, 3), dtype('float64'))
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from .._validation import non_negative_int, one_line, positive_int, temperature_kelvin
from ..analysis.samples import Samples
from ..energy import OpenMMEnergy, energy_for
from ..energy.devices import resolve_device
from ..flows import Domain, Flow, Standardize, build_flow
from ..flows.builder import check_flow_arguments
from ..geometry import as_tensor
from ..sampling import AnnealConfig
from ..systems import MolecularSystem
from ..systems.trajectory import check_trajectory
from ..transforms import CartesianTransform, MixedTransform, stereocentres
from .annealed import sample_annealed
from .batches import keep_freed_memory, ordered_map, resolve_threads, torch_threads
from .coverage import COVERAGE_KEY, training_coverage_reference
from .fileformat import FORMAT_VERSION, model_payload, read_model_file, stored_system, write_model_file
from .fingerprint import ModelMismatchError, check_fingerprint, system_fingerprint

# the last five live in .fileformat and .fingerprint; re-exported for code that imports them from here
__all__ = ["BoltzmannGenerator", "Proposal", "FORMAT_VERSION", "ModelMismatchError", "check_fingerprint",
           "read_model_file", "system_fingerprint"]



#: Options of `build_flow` that `BoltzmannGenerator.build` passes on (``**flow_options``).
_FLOW_OPTIONS = frozenset({"bins", "tail_bound", "scale_bound", "circular_mode", "bounded_mode", "activation"})


def _check_seed(seed) -> int | None:
    """A sampling seed: None (fresh randomness) or an integer in [0, 2**63)."""
    if seed is None:
        return None
    seed = non_negative_int("seed", seed)
    if seed >= 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}")
    return seed


class _Batch(NamedTuple):
    """One evaluated batch of latent points (numpy, float64): what `BoltzmannGenerator.sample` stores."""

    positions: np.ndarray
    energies: np.ndarray
    log_prob: np.ndarray
    rejected: np.ndarray


class Proposal(NamedTuple):
    """Configurations pushed through the generator with their exact log density: `BoltzmannGenerator.propose`.

    Every row is either valid (``ok``) or carries weight 0. Invalid rows hold finite placeholder
    values (the training data's mean structure in ``x``, 0 in ``log_det``) so that autograd never
    sees NaN; they are meaningless and must be selected away with ``ok``.

    Attributes
    ----------
    z : Tensor ``[n, n_dof]``
        Latent points (flow dtype).
    x : Tensor ``[n, n_atoms, 3]``
        float64 configurations in nm, in the generator's frame (no rotation, first core atom at the
        origin for molecules; confined components 0 for toy systems).
    log_q : Tensor ``[n]``
        float64 exact ``log p_X(x)`` in Cartesian space (rigid-body motion uniform) of the
        (temperature-scaled) proposal that drew ``z``; ``-inf`` where not ``ok``.
    log_det : Tensor ``[n]``
        float64 ``log|det d(x, R, t)/dz|`` (``log|det J_zx(z)|``); 0 where not ``ok``.
    prior_energy : Tensor ``[n]``
        float64 ``u_Z(z)`` of the (temperature-scaled) prior, normalised; ``+inf`` outside the latent domain.
    ok : Tensor ``bool[n]``
        ``z`` in the latent domain, every intermediate coordinate in its domain and a finite log-det.
        (Stereochemistry and energies are not checked here: see `BoltzmannGenerator.inverted` and
        `BoltzmannGenerator.log_weight_latent`.)
    """

    z: torch.Tensor
    x: torch.Tensor
    log_q: torch.Tensor
    log_det: torch.Tensor
    prior_energy: torch.Tensor
    ok: torch.Tensor


class BoltzmannGenerator(nn.Module):
    """A normalizing flow over a molecular system's configurations with exact densities.

    Parameters
    ----------
    system : MolecularSystem
        The target; its temperature is the default target temperature (`temperature`).
    transform : MixedTransform or CartesianTransform
        ``y <-> x`` coordinate transform.
    standardize : Standardize
        Fixed map between the flow's output ``v`` and ``y``.
    flow : Flow
        Invertible network with its prior, on ``v``.
    config : dict
        Build options (stored with the model).
    energy : OpenMMEnergy, optional
        Target energy; created on first use (in-process, fastest platform) if not given.
    training_temperature : float, optional
        K at which the flow was trained, i.e. where its prior is unscaled (default: the system's);
        `save` stores it and `load` restores it.

    Attributes
    ----------
    training_temperature : float
        K; a proposal at temperature ``T`` draws from the prior with its Gaussian width scaled by
        ``sqrt(T / training_temperature)``.
    stereo : Stereocentres or None
        Stereocentres of the reference structure (molecules only).
    extra : dict
        Free-form metadata stored with the model (e.g. the command line's ``system_spec``); `save`
        adds its ``extra`` argument to it.
    coverage_reference : dict or None
        The clustered training data (`openmm_bg.analysis.coverage.CoverageReference` as a dict), made
        by `build`, stored by `save`; every sample set carries it for its coverage table.

    Notes
    -----
    Temperatures: the model owns its training temperature ``T0``; the system it is bound to owns the
    target temperature ``T`` (`temperature`, the default of `sample`, `log_prob`, `log_weights`).
    Loading a model with a system at another temperature (``system.with_temperature(T)``) and
    calling ``sample()`` gives the same proposals as loading it with the training system and calling
    ``sample(temperature=T)``: both scale the prior by ``T / T0`` and weight exactly at ``T``.
    """

    def __init__(self, system: MolecularSystem, transform: nn.Module, standardize: Standardize, flow: Flow,
                 config: dict | None = None, energy: OpenMMEnergy | None = None,
                 training_temperature: float | None = None):
        super().__init__()
        system.require_nonperiodic("a Boltzmann Generator")
        self.system = system
        self.transform = transform
        self.standardize = standardize
        self.flow = flow
        self.config = dict(config or {})
        self.training_temperature = temperature_kelvin(
            "training_temperature", system.temperature if training_temperature is None else training_temperature)
        self.extra: dict = {}
        self.coverage_reference: dict | None = None  # the clustered training data (model/coverage.py)
        self._energy = energy
        self._energy_shared = False
        self.stereo = None
        if transform.rotation_invariant:  # molecules: detect stereocentres
            found = stereocentres(system.topology, system.positions)
            self.stereo = found if len(found) else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, system: MolecularSystem, data, flow: str = "realnvp", n_blocks: int = 4,
              hidden: tuple[int, ...] = (128, 128), seed: int = 0, dtype: torch.dtype = torch.float32,
              device: str | torch.device | None = None, energy: OpenMMEnergy | None = None,
              **flow_options) -> BoltzmannGenerator:
        """Build a generator for ``system`` with coordinate statistics from training ``data``.

        Parameters
        ----------
        system : MolecularSystem
            Non-periodic system; molecules get internal coordinates (`MixedTransform`), systems
            with external potentials whitened Cartesian coordinates (`CartesianTransform`).
        data : mdtraj.Trajectory, path or array
            Training frames ``[n_frames, n_atoms, 3]`` (nm), checked against the system.
        flow : {"realnvp", "spline"}
            Affine couplings (default; torsions always get circular splines) or spline couplings.
        n_blocks, hidden : int, tuple of int
            Flow depth and conditioner widths.
        seed : int
            Seeds the network initialisation and architecture.
        dtype : torch.dtype
            Flow precision (float32 default); transforms, energies and weights are float64.
        device : str or torch.device, optional
            Where the flow runs: ``"cpu"`` (default) or ``"cuda"`` / ``"cuda:N"`` (anything else, or a GPU
            torch cannot see, is refused before any work). Without an ``energy``, the target energy runs
            on the same device (`energy`).
        energy : OpenMMEnergy, optional
            Target energy to use (e.g. with worker processes or the torch backend).
        **flow_options
            Passed to `openmm_bg.flows.build_flow` (``bins``, ``scale_bound``, ...).
        """
        system.require_nonperiodic("a Boltzmann Generator")
        if device is not None:
            device = resolve_device(device)
        unknown = sorted(set(flow_options) - _FLOW_OPTIONS)
        if unknown:
            raise ValueError(f"unknown flow option(s) {unknown}: BoltzmannGenerator.build passes only "
                             f"{sorted(_FLOW_OPTIONS)} on to build_flow")
        if flow not in ("realnvp", "spline"):
            raise ValueError(f"flow must be 'realnvp' or 'spline', got {flow!r}")
        check_flow_arguments(flow, n_blocks, hidden, seed=seed, dtype=dtype, **flow_options)  # before any work
        traj = check_trajectory(system, data)
        x = torch.as_tensor(traj.xyz, dtype=torch.float64)
        if system.rotation_invariant:
            transform = MixedTransform.from_system(system, x)
        else:
            transform = CartesianTransform.from_system(system, x)
        with torch.no_grad():
            y, _ = transform.inverse(x)
        if not transform.in_domain(y).all():
            raise ValueError("some training frames are degenerate (collinear atoms or NaN internal "
                             "coordinates); check the data")
        circular = transform.dims.circular_mask.clone()
        proper = getattr(transform, "proper_torsion_mask", torch.zeros_like(circular))
        multimodal = circular & proper
        standardize = Standardize.fit(y, wrap_mask=circular & ~multimodal, identity_mask=multimodal)
        domain = Domain.from_spec(transform.n_dof, circular_mask=multimodal, circular_interval=(-1.0, 1.0))
        torch.manual_seed(seed)
        net = build_flow(transform.n_dof, kind=flow, n_blocks=n_blocks, hidden=tuple(hidden), dtype=dtype,
                         device=device, seed=seed, domain=domain, **flow_options)
        config = {"flow": flow, "n_blocks": n_blocks, "hidden": list(hidden), "seed": seed,
                  "dtype": str(dtype).replace("torch.", ""), "flow_options": flow_options,
                  "n_training_frames": int(x.shape[0])}
        gen = cls(system, transform, standardize, net, config=config, energy=energy)
        gen.coverage_reference = training_coverage_reference(system, transform, x)  # for samples' coverage table
        return gen

    # ------------------------------------------------------------------ properties
    @property
    def temperature(self) -> float:
        """Default target temperature in K: the system's (equal to `training_temperature` unless the model
        was loaded with a system at another temperature)."""
        return self.system.temperature

    @property
    def n_dof(self) -> int:
        """Number of flow dimensions."""
        return self.flow.n_dof

    @property
    def device(self) -> torch.device:
        """Device of the flow."""
        return next(self.flow.parameters()).device

    @property
    def flow_dtype(self) -> torch.dtype:
        """Precision of the flow."""
        return next(self.flow.parameters()).dtype

    @property
    def energy(self) -> OpenMMEnergy:
        """The target energy: the one given, or the system's shared energy service
        (`openmm_bg.energy.energy_for`, in-process) on first use, on the flow's device: the fastest
        platform on the CPU, OpenMM's CUDA platform on that GPU when the flow is on one."""
        moved = self._energy_shared and self._energy is not None and self._energy.device != self.device
        if self._energy is None or moved or (self._energy_shared and self._energy.closed):
            on_gpu = self.device.type != "cpu"
            self._energy = energy_for(self.system, device=self.device) if on_gpu else energy_for(self.system)
            self._energy_shared = True
        return self._energy

    def set_energy(self, energy: OpenMMEnergy) -> None:
        """Use another energy evaluator (e.g. worker processes, the torch backend)."""
        if energy.n_atoms != self.system.n_atoms:
            raise ModelMismatchError(f"energy has {energy.n_atoms} atoms, the generator {self.system.n_atoms}")
        self._energy = energy
        self._energy_shared = False

    def close(self) -> None:
        """Shut down the worker processes of an energy given to this generator, if any (the shared
        energy service of `openmm_bg.energy.energy_for` stays open for its other users)."""
        if self._energy is not None and not self._energy_shared:
            self._energy.close()

    # ------------------------------------------------------------------ maps
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The raw map: latent ``z`` ``[batch, n_dof]`` -> ``(x [batch, n_atoms, 3] float64 nm,
        log_det [batch], in_domain bool[batch])`` with ``log_det = log|det d(x, R, t)/dz|``.

        Rows not ``in_domain`` hold unspecified values (possibly NaN); use `propose` for draws with
        their densities and finite placeholders.
        """
        v, ld_flow = self.flow(z)
        ok = self.flow.in_domain(v) & self.standardize.in_domain(v)
        v64 = v.to(torch.float64)
        y, ld_std = self.standardize(v64)
        ok = ok & self.transform.in_domain(y)
        y_safe = torch.where(ok[:, None], y, self._safe_y(y))
        x, ld_t = self.transform(y_safe)
        log_det = ld_flow.to(torch.float64) + ld_std + ld_t
        ok = ok & torch.isfinite(log_det)
        return x, log_det, ok

    def _safe_y(self, like: torch.Tensor) -> torch.Tensor:
        """A valid ``y`` (the data mean) used in place of out-of-domain rows, so no NaN reaches autograd."""
        return self.standardize.shift.to(like).expand_as(like)

    def inverse(self, x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Configurations ``[batch, n_atoms, 3]`` (nm, any orientation) -> ``(z, log_det, in_domain)``
        with ``log_det = log|det dz/d(x, R, t)|``."""
        x = as_tensor(x, dtype=torch.float64).to(self.device)
        x = x[None] if x.dim() == 2 else x
        if x.shape[1:] != (self.system.n_atoms, 3):
            raise ModelMismatchError(f"configurations have shape {tuple(x.shape[1:])}, the generator "
                                     f"expects [{self.system.n_atoms}, 3]")
        y, ld_t = self.transform.inverse(x)
        ok = self.transform.in_domain(y) & torch.isfinite(ld_t)
        y = torch.where(ok[:, None], y, self._safe_y(y))
        v, ld_std = self.standardize.inverse(y)
        ok = ok & self.standardize.in_domain(v)
        vf = v.to(self.flow_dtype)
        ok = ok & self.flow.in_domain(vf)
        vf = torch.where(ok[:, None], vf, torch.zeros_like(vf))
        z, ld_flow = self.flow.inverse(vf)
        return z, ld_t + ld_std + ld_flow.to(torch.float64), ok

    # ------------------------------------------------------------------ densities
    def log_prob(self, x, temperature: float | None = None) -> torch.Tensor:
        """Log density ``[batch]`` (float64) of the generator at configurations ``x`` in Cartesian space.

        ``x`` may have any orientation and position: the transform brings it to the generator's
        frame, and rigid-body motion is uniform in this density. ``-inf`` outside the domain.
        ``temperature`` selects the temperature-scaled prior used for sampling at that temperature.
        """
        z, log_det, ok = self.inverse(x)
        scale = self._temperature_scale(temperature)
        lp = -self.flow.prior.energy(z, scale).to(torch.float64) + log_det
        return torch.where(ok, lp, torch.full_like(lp, -math.inf))

    def reduced_energy(self, x, temperature: float | None = None) -> torch.Tensor:
        """Reduced energy u(x) = U(x)/kT' ``[batch]`` (float64) at ``temperature`` (K), +inf if failed."""
        energy = self.energy
        u = energy(as_tensor(x, dtype=torch.float64))
        return u * (energy.temperature / self._temperature(temperature))

    def inverted(self, x) -> torch.Tensor:
        """``bool[batch]``: configurations with an inverted stereocentre (always False without any)."""
        x = as_tensor(x, dtype=torch.float64)
        if self.stereo is None:
            return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        return self.stereo.any_inverted(x)

    def log_weights(self, x, temperature: float | None = None) -> torch.Tensor:
        """Log importance weights ``-u(x) - log p_X(x)`` ``[batch]`` (float64); ``-inf`` for weight 0."""
        with torch.no_grad():
            lp = self.log_prob(x, temperature)
            u = self.reduced_energy(x, temperature)
            lw = -u - lp
            bad = ~torch.isfinite(lp) | ~torch.isfinite(u) | self.inverted(x).to(lw.device)
            return torch.where(bad, torch.full_like(lw, -math.inf), lw)

    def _temperature(self, temperature: float | None) -> float:
        """The target temperature in K: the default, or ``temperature`` checked (positive and finite)."""
        return self.temperature if temperature is None else temperature_kelvin("temperature", temperature)

    def _temperature_scale(self, temperature: float | None) -> float:
        """``T / T0``: the prior's variance factor of proposals at ``temperature``."""
        return self._temperature(temperature) / self.training_temperature

    # ------------------------------------------------------------------ sampling
    def sample_latent(self, n: int, generator: torch.Generator | None = None,
                      temperature: float | None = None) -> torch.Tensor:
        """Latent samples ``[n, n_dof]`` (``n >= 0``) from the (temperature-scaled) prior."""
        n = non_negative_int("n", n)
        return self.flow.prior.sample(n, generator=generator, temperature_scale=self._temperature_scale(temperature),
                                      dtype=self.flow_dtype, device=self.device)

    @property
    def latent_domain(self) -> Domain:
        """Domain of the latent space (real, circular and interval dimensions of the prior)."""
        return self.flow.prior.domain

    def propose(self, n: int | None = None, *, z: torch.Tensor | None = None, temperature: float | None = None,
                generator: torch.Generator | None = None) -> Proposal:
        """Configurations with their exact log density: the one path from ``z`` to ``(x, log p_X(x))``.

        ``log_q = -u_Z(z) - log|det J_zx(z)|`` with ``u_Z`` the prior at ``temperature`` (the proposal
        density in Cartesian space, rigid-body motion uniform). Differentiable with respect to the
        flow's parameters (and ``z``) when called with gradients enabled; invalid rows hold finite
        placeholders (see `Proposal`).

        Parameters
        ----------
        n : int, optional
            Draw ``n`` latent points from the (temperature-scaled) prior.
        z : Tensor ``[m, n_dof]``, optional
            Use these latent points instead (keyword only; ``n`` must then be omitted or equal ``m``).
        temperature : float, optional
            K; the prior is scaled by ``T / T_train`` (see `sample`). Default: the generator's
            temperature.
        generator : torch.Generator, optional
            Source of randomness for drawing ``z`` (same state, same draws).

        Returns
        -------
        Proposal

        Examples
        --------
        >>> import torch, openmm_bg
        >>> # dw: the double well; dw_gen: a small generator built on MD data of it (conftest.py)
        >>> gen = dw_gen
        >>> p = gen.propose(5, generator=torch.Generator().manual_seed(0))
        >>> p.x.shape, p.log_q.dtype, bool(p.ok.all())
        (torch.Size([5, 1, 3]), torch.float64, True)
        """
        scale = self._temperature_scale(temperature)
        if z is None:
            if n is None:
                raise ValueError("propose needs the number of samples n or latent points z=...")
            z = self.sample_latent(non_negative_int("n", n), generator, temperature)
        else:
            if generator is not None:
                raise ValueError("generator draws latent points; it cannot be combined with z=...")
            z = torch.as_tensor(z)
            if z.dim() != 2 or z.shape[1] != self.n_dof:
                raise ValueError(f"z must have shape [batch, {self.n_dof}], got {tuple(z.shape)}")
            if n is not None and non_negative_int("n", n) != z.shape[0]:
                raise ValueError(f"n={n} disagrees with the {z.shape[0]} latent points given")
            z = z.to(device=self.device, dtype=self.flow_dtype)
        x, log_det, ok = self.forward(z)
        u_z = self.flow.prior.energy(z, scale).to(torch.float64)
        ok = ok & torch.isfinite(u_z)
        log_det = torch.where(ok, log_det, torch.zeros_like(log_det))
        x = torch.where(ok[:, None, None], x, self._placeholder_x(x))
        log_q = torch.where(ok, -u_z - log_det, torch.full_like(log_det, -math.inf))
        return Proposal(z, x, log_q, log_det, u_z, ok)

    def _placeholder_x(self, like: torch.Tensor) -> torch.Tensor:
        """The mean structure ``[1, n_atoms, 3]``: what invalid rows of a `Proposal` hold."""
        with torch.no_grad():
            y = self.standardize.shift.to(device=like.device, dtype=torch.float64)[None]
            x, _ = self.transform(y)
        return x.to(like)

    def log_weight_latent(self, z: torch.Tensor, temperature: float | None = None) -> tuple[torch.Tensor, Proposal]:
        """Log importance weights of latent points, ``log w(z) = -u(F(z)) + u_Z(z) + log|det J_zx(z)|``.

        The weight of ``x = F(z)`` as a draw of the (temperature-scaled) proposal, with the raw
        reduced energy ``u`` at ``temperature`` (no lin-log cut). Differentiable with respect to
        ``z`` and the flow's parameters when gradients are enabled (e.g. for annealed or
        gradient-based samplers in latent space).

        Parameters
        ----------
        z : Tensor ``[batch, n_dof]``
            Latent points.
        temperature : float, optional
            K (default: the generator's temperature).

        Returns
        -------
        log_w : Tensor ``[batch]``
            float64; ``-inf`` out of domain, with an inverted stereocentre or a failed energy.
        proposal : Proposal
            The configurations and densities the weights were computed from.
        """
        t = self._temperature(temperature)
        p = self.propose(z=z, temperature=t)
        u = torch.full_like(p.log_q, math.inf)
        if bool(p.ok.any()):
            u = u.index_put((p.ok.nonzero()[:, 0],), self.reduced_energy(p.x[p.ok], t).to(u))
        good = p.ok & torch.isfinite(u) & ~self.inverted(p.x).to(p.ok.device)
        lw = torch.where(good, -u - torch.where(good, p.log_q, torch.zeros_like(p.log_q)),
                         torch.full_like(u, -math.inf))
        return lw, p

    def sample(self, n: int, temperature: float | None = None, seed: int | None = 0, batch_size: int = 4096,
               progress: bool = False, anneal: AnnealConfig | bool | None = None,
               threads: int | None = None) -> Samples:
        """Draw ``n`` configurations with energies and exact importance weights.

        Parameters
        ----------
        n : int
            Number of samples (>= 1; annealed: particles).
        temperature : float, optional
            K (default `temperature`, the system's). At another temperature than the training one
            the prior is scaled by ``T / training_temperature`` (approximate proposals), but energies
            and weights are exact for that temperature (annealed samples are annealed to it).
        seed : int, optional
            Same seed, same samples (an integer >= 0, see Notes); None: fresh ones.
        batch_size : int
            Samples per flow/energy batch (memory), >= 1.
        progress : bool
            Show a progress bar (samples; annealed: levels).
        anneal : AnnealConfig, True or None
            None or False: plain samples (independent draws, ``kind="plain"``). An
            `openmm_bg.sampling.AnnealConfig` (True: `openmm_bg.model.annealed.GENERATOR_DEFAULT`,
            conditional ESS 0.999 per level, one MALA step each): annealed importance sampling /
            SMC from the generator to the Boltzmann distribution in the flow's latent space, see
            `openmm_bg.model.annealed.sample_annealed` (``kind="annealed"``; its ``seed`` must be
            None: this ``seed`` seeds the run).
        threads : int, optional
            Worker threads that push batches through the flow and the energy concurrently, each
            with one torch thread (the caller's torch thread count is restored afterwards);
            default: the usable cores, at most 4 (`openmm_bg.model.batches.default_threads`).

        Returns
        -------
        Samples
            Positions (nm, in the generator's frame; NaN rows out of domain), energies (kT at
            ``temperature``), log densities and log weights; samples out of domain, with an
            inverted stereocentre or a failed energy have weight 0 and are counted.

        Notes
        -----
        Plain samples are drawn ``batch_size`` latent points at a time from one
        ``torch.Generator`` seeded with ``seed``; the same seed and ``batch_size`` give the same
        samples with any number of threads. Energies come from `energy` without forces (no
        gradient is needed). The torch thread count is 1 inside the worker threads, so that a
        loaded machine does not slow sampling down by an order of magnitude. The first call sets
        glibc's malloc to keep freed memory for reuse (`openmm_bg.model.batches.keep_freed_memory`;
        numbers unchanged, a third less CPU time).
        """
        from tqdm.auto import tqdm

        n, batch_size, seed = positive_int("n", n), positive_int("batch_size", batch_size), _check_seed(seed)
        t = self._temperature(temperature)
        threads = resolve_threads(threads)
        keep_freed_memory()  # reuse freed tensor memory: a third of the CPU time went to page faults
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if anneal is not None and anneal is not False:
            annealed = sample_annealed(self, n, anneal, temperature=t, seed=seed, batch_size=int(batch_size),
                                       progress=progress, threads=threads)
            annealed.coverage_reference = self.coverage_reference
            return annealed
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        gen = self._seeded_generator(seed)
        positions = np.empty((n, self.system.n_atoms, 3))
        energies, log_prob = np.empty(n), np.empty(n)
        rejected = np.empty(n, dtype=bool)
        sizes = [min(int(batch_size), n - start) for start in range(0, n, int(batch_size))]
        latent = (self.sample_latent(m, gen, t) for m in sizes)  # drawn in order, in this thread
        with torch_threads(1), tqdm(total=n, disable=not progress, desc="sampling", unit="sample") as bar:
            done = 0
            for batch in ordered_map(lambda z: self._evaluate_batch(z, t), latent, threads):
                m = batch.energies.shape[0]
                rows = slice(done, done + m)
                positions[rows], energies[rows] = batch.positions, batch.energies
                log_prob[rows], rejected[rows] = batch.log_prob, batch.rejected
                done += m
                bar.update(m)
        provenance = {"kind": "plain", "generator": self.identity(), "seed": seed, "temperature": t,
                      "training_temperature": self.training_temperature}
        return Samples(self.system, positions, energies, log_prob, temperature=t, rejected=rejected,
                       provenance=provenance, coverage_reference=self.coverage_reference)

    def _seeded_generator(self, seed: int | None) -> torch.Generator:
        """The ``torch.Generator`` plain samples draw their latent points from (fresh for None)."""
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(int(seed))
        else:
            gen.seed()
        return gen

    def _evaluate_batch(self, z: torch.Tensor, temperature: float) -> _Batch:
        """Configurations, energies (no forces), log densities and inversions of latent points ``z``."""
        with torch.no_grad():  # grad mode is per thread: set it here, in the worker
            p = self.propose(z=z, temperature=temperature)
            u = torch.full_like(p.log_q, math.inf)
            if p.ok.any():
                u[p.ok] = self.reduced_energy(p.x[p.ok], temperature).to(u)
            return _Batch(torch.where(p.ok[:, None, None], p.x, math.nan).cpu().numpy(), u.cpu().numpy(),
                          p.log_q.cpu().numpy(), (self.inverted(p.x) & p.ok).cpu().numpy())

    def identity(self) -> dict:
        """What identifies this generator in the provenance of its samples: system name and a hash
        (SHA-1, 16 hex digits) of the build options and current flow weights."""
        h = hashlib.sha1(json.dumps(self.config, sort_keys=True, default=str).encode())
        for key, value in self.flow.state_dict().items():
            h.update(key.encode())
            h.update(value.detach().cpu().numpy().tobytes())
        return {"system": self.system.name, "sha1": h.hexdigest()[:16]}

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the generator (weights, transform, training config and temperature, fingerprint) atomically.

        ``extra`` (picklable metadata) is added to `extra`, which is stored. The file (format 4,
        `openmm_bg.model.fileformat`) also stores the system (serialized System, topology, positions,
        temperature, coordinates and states with a spec; gzip-compressed), so that ``load(path)``
        needs neither the system nor its input files. It carries a SHA-256 checksum of its
        contents, verified by `load`. It is a torch pickle: load only files you trust. A failed
        save leaves an earlier file at ``path``
        and `extra` as they were.
        """
        merged = {**self.extra, **(extra or {})}
        stored = merged if self.coverage_reference is None else {**merged, COVERAGE_KEY: self.coverage_reference}
        payload = model_payload(self.system, self.config, self.transform, self.standardize, self.flow,
                                self.training_temperature, stored)
        out = write_model_file(path, payload)
        self.extra.update(extra or {})  # only once written: a failed save (e.g. unpicklable extra) changes nothing
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, system: MolecularSystem | None = None,
             device: str | torch.device | None = None, energy: OpenMMEnergy | None = None) -> BoltzmannGenerator:
        """Read a generator written by `save` for ``system``.

        The generator keeps its stored training temperature (files of format 1 have none: the
        system's is used); ``system``'s temperature becomes the default target temperature.
        Without ``system``, the system stored in the file (format 4 on: serialized System,
        topology, positions, temperature and the coordinates and states with a spec) is rebuilt,
        so a model file needs none of its input files; older files need ``system``.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            Not a generator file; corrupt or truncated (unreadable, checksum mismatch, missing or
            ill-typed entries); or written by a newer file format. One line naming the file.
        ModelMismatchError
            Trained for another topology, masses or constraints (other force parameters warn).
        """
        if device is not None:
            device = resolve_device(device)  # before reading the file
        payload = read_model_file(path)  # checksum, presence and types of every entry used here
        if system is None:
            system = stored_system(payload, path)
        check_fingerprint(payload["fingerprint"], system)
        cfg = payload["config"]
        dtype = getattr(torch, cfg.get("dtype", "float32"))
        net = build_flow(payload["transform"].n_dof, kind=cfg["flow"], n_blocks=cfg["n_blocks"],
                         hidden=tuple(cfg["hidden"]), dtype=dtype, seed=cfg["seed"],
                         domain=payload["flow_domain"], **cfg.get("flow_options", {}))
        try:
            net.load_state_dict(payload["flow_state"])
        except RuntimeError as err:
            raise ValueError(f"{path}: the stored weights do not fit the stored architecture (corrupt or "
                             f"truncated?): {one_line(err)}") from err
        gen = cls(system, payload["transform"], payload["standardize"], net, config=cfg, energy=energy,
                  training_temperature=payload.get("training_temperature"))
        gen.extra = dict(payload.get("extra") or {})
        gen.coverage_reference = gen.extra.pop(COVERAGE_KEY, None)
        return gen.to(device) if device is not None else gen
