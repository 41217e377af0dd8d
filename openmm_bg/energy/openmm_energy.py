"""`OpenMMEnergy`: reduced energies of OpenMM systems as a batched, differentiable torch op.

``OpenMMEnergy(system)(x)`` maps positions ``[batch, n_atoms, 3]`` (nm) to reduced energies
``u = U / kT`` of shape ``[batch]`` (float64); ``u.sum().backward()`` gives ``du/dx = -F / kT``
exactly, from OpenMM's forces (no finite differences, no double backward).

Backends:

- ``"openmm"`` (default): OpenMM contexts, in-process for ``n_workers=1``, otherwise a pool of
  spawned worker processes (see `openmm_bg.energy.workers`; scripts then need an
  ``if __name__ == "__main__":`` guard). Without a ``platform`` the fastest available one is
  chosen by timing (`openmm_bg.energy.platforms.select_platform`).
- ``"torch"``: the batched torch force field of ``openmm_bg.energy.torchff.forcefield``, checked
  against OpenMM at construction (relative difference <= 1e-6, else an error).
- ``"auto"``: opting in to ``"torch"`` where the torch force field supports every force and
  passes the check, ``"openmm"`` otherwise; the choice is logged.

Failed configurations (non-finite input, an OpenMM exception, a non-finite energy or force)
get ``u = +inf`` and zero gradient, and only those rows.

Examples
--------
>>> import torch
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> energy = OpenMMEnergy(dw, platform="Reference")
>>> x = torch.tensor([[[1.0, 0.5, 0.0]], [[float("nan"), 0.0, 0.0]]], requires_grad=True)
>>> u = energy(x)
>>> u
tensor([-3.8750,     inf], dtype=torch.float64, grad_fn=<_EnergyOpBackward>)
>>> u[:1].sum().backward()
>>> x.grad[0, 0, :2]  # d/dx (x^4 - 6 x^2 + x + y^2/2) at (1, 0.5)
tensor([-7.0000,  0.5000])
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np
import openmm
import openmm.unit as unit
import torch
from torch.autograd.function import once_differentiable

from ..constants import kT_kJ_per_mol
from ..geometry import as_tensor
from ..systems.molecular_system import MolecularSystem, PeriodicSystemError, require_nonperiodic
from .context import ContextEvaluator
from .devices import openmm_platform_for, resolve_device
from .platforms import PlatformChoice, available_platforms, default_properties, select_platform
from .workers import WorkerPool

__all__ = ["OpenMMEnergy", "PeriodicSystemError"]

logger = logging.getLogger(__name__)

BACKENDS = ("openmm", "torch", "auto")


class _EnergyOp(torch.autograd.Function):
    """Autograd op: positions -> reduced energies, gradient from precomputed forces."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, module: OpenMMEnergy, need_grad: bool) -> torch.Tensor:
        u, minus_grad = module._reduced(x, forces=need_grad)  # kT, kT/nm (= -du/dx)
        if need_grad:
            ctx.save_for_backward(minus_grad, torch.isfinite(u))
            ctx.input_dtype = x.dtype
        return u

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_u: torch.Tensor):
        minus_grad, ok = ctx.saved_tensors
        g = -grad_u.to(minus_grad.dtype)[:, None, None] * minus_grad
        g = torch.where(ok[:, None, None], g, torch.zeros_like(g))  # failed rows: exactly zero
        return g.to(ctx.input_dtype), None, None


def _strip_temperature(temperature: Any) -> float:
    if hasattr(temperature, "value_in_unit"):
        temperature = temperature.value_in_unit(unit.kelvin)
    temperature = float(temperature)
    if not temperature > 0:
        raise ValueError(f"temperature must be positive (K), got {temperature}")
    return temperature


class OpenMMEnergy(torch.nn.Module):
    """Reduced potential energy u(x) = U(x) / kT of an OpenMM system, batched and differentiable.

    Parameters
    ----------
    system : MolecularSystem or openmm.System
        The potential. A `MolecularSystem` also supplies the temperature and reference positions.
    temperature : float or openmm.unit.Quantity, optional
        K; required for a plain ``openmm.System``, overrides a `MolecularSystem`'s temperature.
    platform : str, optional
        OpenMM platform name (``"Reference"``, ``"CPU"``, ``"CUDA"``, ``"OpenCL"``). Default: the
        fastest available one, chosen by timing a few evaluations.
    n_workers : int
        1 evaluates in this process; more starts that many worker processes (spawn start method:
        guard the script's entry point with ``if __name__ == "__main__":``). Worth it when one
        evaluation costs more than ~100 us (implicit solvent, larger molecules).
    platform_properties : dict of str -> str, optional
        Added to the defaults (``Threads=1`` for CPU, ``Precision=mixed`` for CUDA/OpenCL).
    backend : {"openmm", "torch", "auto"}
        See the module documentation; ``"auto"`` means the caller allows the torch force field.
    allow_periodic : bool
        Evaluate periodic systems anyway (at the System's default box), for analysis only; a
        Boltzmann Generator does not support them.
    reference_positions : array-like, optional
        ``[n_atoms, 3]`` nm; defaults to a `MolecularSystem`'s positions. Used for platform timing,
        the torch self-check and `reference_energy`.
    device : str or torch.device, optional
        Where the energies are evaluated: ``"cpu"`` (default) or ``"cuda"`` / ``"cuda:N"``
        (`openmm_bg.energy.devices.resolve_device`; anything else is refused). The torch backend runs
        there; OpenMM contexts use the ``CUDA`` platform on that GPU unless ``platform`` names another.
        Outputs are on the input's device.
    timeout : float, optional
        Seconds to wait for a worker before raising (default: wait while workers live).

    Attributes
    ----------
    kT : float
        Thermal energy in kJ/mol.
    platform_name : str or None
        The OpenMM platform used (``None`` for the torch backend).
    backend : str
        ``"openmm"`` or ``"torch"``, after resolving ``"auto"``.
    reference_energy : float or None
        u at the reference positions (kT), e.g. for ``linlogcut(u, reference=...)``.

    Examples
    --------
    >>> import torch
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide")
    >>> energy = OpenMMEnergy(ala, platform="Reference")
    >>> x = torch.tensor(ala.positions[None], requires_grad=True)
    >>> u = energy(x)                      # [1] float64, kT
    >>> u.sum().backward()                 # x.grad = -forces / kT, [1, 22, 3]
    >>> x.grad.shape
    torch.Size([1, 22, 3])

    With worker processes, close the pool (or use ``with``) when done::

        with OpenMMEnergy(ala, n_workers=2) as energy:
            u = energy(x)
    """

    def __init__(self, system: MolecularSystem | openmm.System, temperature: Any = None,
                 platform: str | None = None, n_workers: int = 1,
                 platform_properties: dict[str, str] | None = None, backend: str = "openmm",
                 allow_periodic: bool = False, reference_positions: Any = None,
                 device: str | torch.device | None = None, timeout: float | None = None):
        super().__init__()
        name = None
        if isinstance(system, MolecularSystem):
            name = system.name
            if temperature is None:
                temperature = system.temperature
            if reference_positions is None:
                reference_positions = system.positions
            system = system.system
        if not isinstance(system, openmm.System):
            raise TypeError("system must be a MolecularSystem or an openmm.System, got "
                            f"{type(system).__name__}")
        if temperature is None:
            raise ValueError("a temperature (K) is needed with a plain openmm.System")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        n_workers = int(n_workers)
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        if not allow_periodic:
            require_nonperiodic(system, f"OpenMMEnergy{' of ' + repr(name) if name else ''}",
                                remedy="pass allow_periodic=True to evaluate energies only (at the System's "
                                       "default box)")
        self.system = system
        self.temperature = _strip_temperature(temperature)
        self.kT = kT_kJ_per_mol(self.temperature)
        self.n_atoms = system.getNumParticles()
        self.n_workers = n_workers
        self.requested_platform = platform
        self.platform_properties = dict(platform_properties or {})
        self.requested_backend = backend
        self.allow_periodic = allow_periodic
        self.device = resolve_device(device)
        self.timeout = timeout
        self.reference_positions = None if reference_positions is None else as_tensor(
            reference_positions, torch.float64).detach().cpu().numpy().reshape(self.n_atoms, 3)
        self.platform_choice: PlatformChoice | None = None
        self._impl = None
        self._lock = threading.Lock()
        self._build()
        self.reference_energy = None
        if self.reference_positions is not None:
            self.reference_energy = float(self._reduced(torch.as_tensor(self.reference_positions[None]),
                                                        forces=False)[0][0])

    # ------------------------------------------------------------------ construction
    def _build(self) -> None:
        backend = self.requested_backend
        if backend in ("torch", "auto"):
            try:
                from .torch_backend import TorchBackend

                self._impl = TorchBackend(self.system, self.reference_positions, device=self.device)
                self.backend, self.platform_name = "torch", None
                logger.info("energy backend: torch force field (self-check: max relative difference "
                            "%.2g)", self._impl.max_relative_error)
                return
            except Exception as err:
                if backend == "torch":
                    raise
                logger.info("energy backend: openmm (torch force field not used: %s)", err)
        self.backend = "openmm"
        on_device = openmm_platform_for(self.device) if self.requested_platform is None else None
        if on_device is not None:  # a GPU was asked for: OpenMM's CUDA platform on that device
            name, props = on_device
            if name not in available_platforms():
                raise ValueError(f"device={str(self.device)!r} with backend='openmm' needs OpenMM's {name} platform, "
                                 f"which is not available here (available: {available_platforms()}); use "
                                 "backend='torch', name a platform, or device='cpu'")
            self.platform_choice = PlatformChoice(name, {**default_properties(name), **props})
        elif self.requested_platform is None:
            self.platform_choice = select_platform(self.system, self.reference_positions)
        else:
            if self.requested_platform not in available_platforms():
                raise ValueError(f"OpenMM platform {self.requested_platform!r} is not available here; "
                                 f"available: {available_platforms()}")
            self.platform_choice = PlatformChoice(self.requested_platform,
                                                  default_properties(self.requested_platform))
        self.platform_name = self.platform_choice.name
        user = self.platform_properties
        if self.requested_platform is None and on_device is None:  # keep only the properties the platform knows
            known = set(openmm.Platform.getPlatformByName(self.platform_name).getPropertyNames())
            dropped = sorted(set(user) - known)
            if dropped:
                logger.info("platform properties %s ignored: not known to platform %s", dropped,
                            self.platform_name)
            user = {k: v for k, v in user.items() if k in known}
        properties = {**self.platform_choice.properties, **user}
        self.properties = properties
        if self.n_workers == 1:
            self._impl = ContextEvaluator(self.system, self.platform_name, properties)
        else:
            self._impl = WorkerPool(self.system, self.platform_name, properties, self.n_workers,
                                    timeout=self.timeout)
        logger.info("energy backend: openmm, platform %s %s, %d worker(s)", self.platform_name,
                    properties, self.n_workers)

    # ------------------------------------------------------------------ evaluation
    def _positions(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = as_tensor(x, torch.float64)
        if not torch.is_floating_point(x):
            x = x.to(torch.float64)
        if x.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape [..., {self.n_atoms}, 3] (nm), got {tuple(x.shape)}")
        return x

    def _reduced(self, x: torch.Tensor, forces: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """u (kT, float64, ``[batch]``) and -du/dx (kT/nm) on ``x``'s device, failures applied."""
        if self._impl is None:  # after unpickling
            self._build()
        if self.backend == "torch":
            with self._lock:
                energy, force = self._impl.evaluate(x, forces)
            u = (energy / self.kT).to(x.device)
            return u, None if force is None else (force / self.kT).to(x.device)
        xn = x.detach().to("cpu", torch.float64).numpy()
        with self._lock:  # a context (and the pool's pipes) serve one caller at a time
            energy, force = self._impl.evaluate(xn, forces)
        u = torch.from_numpy(energy / self.kT)
        f = None if force is None else torch.from_numpy(np.multiply(force, 1.0 / self.kT, out=force))
        if x.device.type != "cpu":
            u = u.to(x.device)
            f = None if f is None else f.to(x.device)
        return u, f

    def forward(self, x: Any) -> torch.Tensor:
        """Reduced energies.

        Parameters
        ----------
        x : torch.Tensor, numpy.ndarray, openmm.unit.Quantity or mdtraj.Trajectory
            Positions ``[..., n_atoms, 3]`` in nm, any float dtype and device.

        Returns
        -------
        torch.Tensor
            ``[...]`` float64 on ``x``'s device, kT; ``+inf`` for failed configurations.
            Differentiable with respect to ``x`` (gradient ``-F / kT``, zero for failed rows).
        """
        x = self._positions(x)
        need_grad = bool(x.requires_grad and torch.is_grad_enabled())  # forces cost extra time
        if x.dim() == 3:
            return _EnergyOp.apply(x, self, need_grad)
        lead = x.shape[:-2]
        return _EnergyOp.apply(x.reshape(-1, self.n_atoms, 3), self, need_grad).reshape(lead)

    def evaluate(self, x: Any, forces: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Reduced energies and forces without autograd.

        Parameters
        ----------
        x : array-like
            Positions ``[batch, n_atoms, 3]`` in nm.
        forces : bool
            Also return forces.

        Returns
        -------
        u : torch.Tensor
            ``[batch]`` float64, kT.
        forces : torch.Tensor or None
            ``[batch, n_atoms, 3]`` float64, kT/nm (``= -du/dx``); zero for failed rows.

        Examples
        --------
        >>> from openmm_bg.systems import load
        >>> dw = load("double_well")
        >>> u, f = OpenMMEnergy(dw, platform="Reference").evaluate([[[1.0, 0.5, 0.0]]])
        >>> f[0, 0, :2]
        tensor([ 7.0000, -0.5000], dtype=torch.float64)
        """
        x = self._positions(x).reshape(-1, self.n_atoms, 3)
        with torch.no_grad():
            return self._reduced(x, forces)

    # ------------------------------------------------------------------ temperature
    def at_temperature(self, temperature: Any) -> OpenMMEnergy:
        """The same potential in kT of another temperature, sharing this energy's contexts.

        ``u_T(x) = U(x) / kT`` for every temperature from one set of OpenMM contexts (or one worker
        pool, or one torch force field): only the factor ``1/kT`` differs, so no context is rebuilt.
        The two objects share their evaluator and its lock (thread-safe as one object is);
        closing either closes the worker pool of both.

        Parameters
        ----------
        temperature : float or openmm.unit.Quantity
            K.

        Returns
        -------
        OpenMMEnergy
            ``self`` when the temperature is this energy's, else a new object on the same evaluator.

        Examples
        --------
        >>> from openmm_bg.systems import load
        >>> dw = load("double_well")
        >>> cold = OpenMMEnergy(dw, platform="Reference")   # 300 K
        >>> hot = cold.at_temperature(600.0)
        >>> x = [[[1.0, 0.5, 0.0]]]
        >>> float(hot(x)[0]), float(cold(x)[0])
        (-1.9375, -3.875)
        """
        temperature = _strip_temperature(temperature)
        if temperature == self.temperature:
            return self
        view = type(self).__new__(type(self))
        torch.nn.Module.__init__(view)
        module_state = set(view.__dict__)
        for key, value in self.__dict__.items():
            if key not in module_state:
                view.__dict__[key] = value  # the evaluator (_impl) and its _lock are shared
        view.temperature = temperature
        view.kT = kT_kJ_per_mol(temperature)
        if self.reference_energy is not None:
            view.reference_energy = self.reference_energy * (self.kT / view.kT)
        return view

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Shut down worker processes, if any (idempotent)."""
        if isinstance(self._impl, WorkerPool):
            self._impl.close()

    @property
    def closed(self) -> bool:
        """True once the worker pool is shut down (never for in-process contexts or the torch backend)."""
        return isinstance(self._impl, WorkerPool) and self._impl.closed

    def __enter__(self) -> OpenMMEnergy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty when evaluating in-process)."""
        return self._impl.pids if isinstance(self._impl, WorkerPool) else []

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_impl"] = None  # contexts and processes are rebuilt on first use
        del state["_lock"]
        state["system"] = openmm.XmlSerializer.serialize(self.system)
        return state

    def __setstate__(self, state):
        state["system"] = openmm.XmlSerializer.deserialize(state["system"])
        state["_lock"] = threading.Lock()
        self.__dict__.update(state)

    def extra_repr(self) -> str:
        where = (f"platform={self.platform_name!r}, n_workers={self.n_workers}" if self.backend == "openmm"
                 else f"device={str(self.device)!r}")
        return (f"n_atoms={self.n_atoms}, temperature={self.temperature:g} K, backend={self.backend!r}, "
                f"{where}")

