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
>>> import openmm_bg
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, progress=False)
>>> gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0)
>>> samples = gen.sample(100, seed=1)
>>> samples.positions.shape, samples.log_weights.dtype
((100, 1, 3), dtype('float64'))
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import openmm
import torch
from torch import nn

from .._version import __version__
from ..analysis.samples import Samples
from ..energy import OpenMMEnergy
from ..flows import Domain, Flow, Standardize, build_flow
from ..geometry import as_tensor
from ..systems import MolecularSystem
from ..systems.trajectory import check_trajectory
from ..transforms import CartesianTransform, MixedTransform, stereocentres

__all__ = ["BoltzmannGenerator", "ModelMismatchError", "FORMAT_VERSION"]

#: Version of the file format written by `BoltzmannGenerator.save`.
FORMAT_VERSION = 1
_MAGIC = "openmm-bg generator"


class ModelMismatchError(ValueError):
    """A saved generator does not belong to the system it is loaded for."""


def system_fingerprint(system: MolecularSystem) -> dict[str, Any]:
    """What a generator must match: atoms, masses, constraints; and a hash of the forces."""
    atoms = [f"{a.residue.name}:{a.name}:{a.element.symbol if a.element else ''}"
             for a in system.topology.atoms()]
    masses = np.round(system.masses, 4).tolist()
    constraints = [(i, j, round(d, 6)) for i, j, d in system.constraints]
    forces = [openmm.XmlSerializer.serialize(f) for f in system.system.getForces()]
    return {
        "n_atoms": system.n_atoms,
        "atoms": hashlib.sha1("|".join(atoms).encode()).hexdigest(),
        "masses": hashlib.sha1(str(masses).encode()).hexdigest(),
        "constraints": hashlib.sha1(str(constraints).encode()).hexdigest(),
        "n_constraints": len(constraints),
        "forces": hashlib.sha1("".join(forces).encode()).hexdigest(),
    }


def check_fingerprint(saved: dict, system: MolecularSystem, what: str = "generator") -> None:
    """Raise `ModelMismatchError` for another topology, masses or constraints; warn for other forces."""
    current = system_fingerprint(system)
    for key, label in (("n_atoms", "number of atoms"), ("atoms", "atoms (names, residues, elements)"),
                       ("masses", "masses"), ("constraints", "constraints")):
        if saved.get(key) != current[key]:
            raise ModelMismatchError(
                f"this {what} was trained for another system: its {label} differ from {system.name!r} "
                f"({saved.get('n_atoms')} vs {current['n_atoms']} atoms, {saved.get('n_constraints')} vs "
                f"{current['n_constraints']} constraints). Load it with the system it was trained on, or "
                "train a new generator for this one")
    if saved.get("forces") != current["forces"]:
        warnings.warn(f"the force parameters of {system.name!r} differ from those the {what} was trained "
                      "with; weights stay exact for the new system, but expect a lower ESS",
                      UserWarning, stacklevel=3)


class BoltzmannGenerator(nn.Module):
    """A normalizing flow over a molecular system's configurations with exact densities.

    Parameters
    ----------
    system : MolecularSystem
        The target; its temperature is the training temperature.
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

    Attributes
    ----------
    stereo : Stereocentres or None
        Stereocentres of the reference structure (molecules only).
    """

    def __init__(self, system: MolecularSystem, transform: nn.Module, standardize: Standardize, flow: Flow,
                 config: dict | None = None, energy: OpenMMEnergy | None = None):
        super().__init__()
        system.require_nonperiodic("a Boltzmann Generator")
        self.system = system
        self.transform = transform
        self.standardize = standardize
        self.flow = flow
        self.config = dict(config or {})
        self._energy = energy
        self.stereo = None
        if isinstance(transform, MixedTransform):
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
            Where the flow runs (e.g. ``"cuda"``).
        energy : OpenMMEnergy, optional
            Target energy to use (e.g. with worker processes or the torch backend).
        **flow_options
            Passed to `openmm_bg.flows.build_flow` (``bins``, ``scale_bound``, ...).
        """
        system.require_nonperiodic("a Boltzmann Generator")
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
        return cls(system, transform, standardize, net, config=config, energy=energy)

    # ------------------------------------------------------------------ properties
    @property
    def temperature(self) -> float:
        """Training temperature in K."""
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
        """The target energy (created in-process on first use)."""
        if self._energy is None:
            self._energy = OpenMMEnergy(self.system)
        return self._energy

    def set_energy(self, energy: OpenMMEnergy) -> None:
        """Use another energy evaluator (e.g. worker processes, the torch backend)."""
        if energy.n_atoms != self.system.n_atoms:
            raise ModelMismatchError(f"energy has {energy.n_atoms} atoms, the generator {self.system.n_atoms}")
        self._energy = energy

    def close(self) -> None:
        """Shut down the energy evaluator's worker processes, if any."""
        if self._energy is not None:
            self._energy.close()

    # ------------------------------------------------------------------ maps
    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent ``z`` ``[batch, n_dof]`` -> ``(x [batch, n_atoms, 3] float64 nm, log_det [batch],
        in_domain bool[batch])`` with ``log_det = log|det d(x, R, t)/dz|``."""
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
        u = self.energy(as_tensor(x, dtype=torch.float64))
        return u * (self.temperature / self._temperature(temperature))

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
        t = self.temperature if temperature is None else float(temperature)
        if not t > 0:
            raise ValueError(f"temperature must be positive (K), got {t}")
        return t

    def _temperature_scale(self, temperature: float | None) -> float:
        return self._temperature(temperature) / self.temperature

    # ------------------------------------------------------------------ sampling
    def sample_latent(self, n: int, generator: torch.Generator | None = None,
                      temperature: float | None = None) -> torch.Tensor:
        """Latent samples ``[n, n_dof]`` from the (temperature-scaled) prior."""
        return self.flow.prior.sample(n, generator=generator, temperature_scale=self._temperature_scale(temperature),
                                      dtype=self.flow_dtype, device=self.device)

    def sample(self, n: int, temperature: float | None = None, seed: int | None = 0, batch_size: int = 4096,
               progress: bool = False) -> Samples:
        """Draw ``n`` configurations with energies and exact importance weights.

        Parameters
        ----------
        n : int
            Number of samples.
        temperature : float, optional
            K. At another temperature than the training one the prior is scaled (approximate
            proposals), but energies and weights are exact for that temperature.
        seed : int, optional
            Same seed, same samples.
        batch_size : int
            Samples per flow/energy batch (memory).
        progress : bool
            Show a progress bar.

        Returns
        -------
        Samples
            Positions (nm, in the generator's frame), energies (kT at ``temperature``), log densities
            and log weights; samples out of domain, with an inverted stereocentre or a failed energy
            have weight 0 and are counted.
        """
        from tqdm.auto import tqdm

        t = self._temperature(temperature)
        gen = torch.Generator(device=self.device)
        if seed is not None:
            gen.manual_seed(int(seed))
        else:
            gen.seed()
        positions, energies, log_prob, rejected = [], [], [], []
        with torch.no_grad(), tqdm(total=n, disable=not progress, desc="sampling", unit="sample") as bar:
            done = 0
            while done < n:
                m = min(batch_size, n - done)
                z = self.sample_latent(m, gen, t)
                x, log_det, ok = self.forward(z)
                lp = -self.flow.prior.energy(z, self._temperature_scale(t)).to(torch.float64) - log_det
                lp = torch.where(ok, lp, torch.full_like(lp, -math.inf))
                x = torch.where(ok[:, None, None], x, torch.full_like(x, math.nan))
                u = torch.full_like(lp, math.inf)
                if ok.any():
                    u[ok] = self.reduced_energy(x[ok], t).to(u)
                positions.append(x.cpu().numpy())
                energies.append(u.cpu().numpy())
                log_prob.append(lp.cpu().numpy())
                rejected.append((self.inverted(x) & ok).cpu().numpy())
                done += m
                bar.update(m)
        return Samples(self.system, np.concatenate(positions), np.concatenate(energies),
                       np.concatenate(log_prob), temperature=t, rejected=np.concatenate(rejected))

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the generator (weights, transform, training config, fingerprint) atomically.

        The file is a torch pickle: load only files you trust.
        """
        path = Path(path)
        payload = {
            "magic": _MAGIC, "format_version": FORMAT_VERSION, "package_version": __version__,
            "system_name": self.system.name, "fingerprint": system_fingerprint(self.system),
            "config": self.config, "transform": self.transform.cpu(), "standardize": self.standardize.cpu(),
            "flow_domain": self.flow.domain, "flow_state": {k: v.cpu() for k, v in self.flow.state_dict().items()},
            "extra": dict(extra or {}),
        }
        self.transform.to(self.device)
        self.standardize.to(self.device)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, system: MolecularSystem, device: str | torch.device | None = None,
             energy: OpenMMEnergy | None = None) -> BoltzmannGenerator:
        """Read a generator written by `save` for ``system``.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            Not a generator file, corrupt, or written by a newer file format.
        ModelMismatchError
            Trained for another topology, masses or constraints (other force parameters warn).
        """
        payload = read_model_file(path)
        check_fingerprint(payload["fingerprint"], system)
        cfg = payload["config"]
        dtype = getattr(torch, cfg.get("dtype", "float32"))
        net = build_flow(payload["transform"].n_dof, kind=cfg["flow"], n_blocks=cfg["n_blocks"],
                         hidden=tuple(cfg["hidden"]), dtype=dtype, seed=cfg["seed"],
                         domain=payload["flow_domain"], **cfg.get("flow_options", {}))
        try:
            net.load_state_dict(payload["flow_state"])
        except RuntimeError as err:
            raise ValueError(f"{path}: the stored weights do not fit the stored architecture ({err})") from err
        gen = cls(system, payload["transform"], payload["standardize"], net, config=cfg, energy=energy)
        gen.extra = payload.get("extra", {})
        return gen.to(device) if device is not None else gen


def read_model_file(path: str | os.PathLike) -> dict:
    """Load and validate the payload of a saved generator (see `BoltzmannGenerator.load`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {str(path)!r}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign files raise many different errors
        raise ValueError(f"{path}: not a readable openmm-bg model file (corrupt or truncated?): {err}") from err
    if not isinstance(payload, dict) or payload.get("magic") != _MAGIC:
        raise ValueError(f"{path}: not an openmm-bg generator file")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: written by a newer openmm-bg (file format {payload['format_version']}, this "
                         f"version reads {FORMAT_VERSION}); upgrade openmm-bg")
    return payload
