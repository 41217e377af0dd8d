"""The ``"torch"`` backend of `OpenMMEnergy`: a batched torch force field checked against OpenMM.

`TorchBackend` wraps ``openmm_bg.energy.torchff.TorchForceField`` (imported lazily, so
that the OpenMM backend works without it), applies the failure convention of ``docs/design.md``
("Out of domain and failed evaluations": non-finite input, energy or force -> energy ``+inf``,
force ``0``, that row only) and, at construction, compares energies and forces with an OpenMM
``Reference`` context on a few perturbed configurations, refusing the force field if they differ
by more than ``tolerance`` (relative).

Examples
--------
>>> from openmm_bg.systems import load
>>> ala = load("alanine_dipeptide")
>>> backend = TorchBackend(ala.system, ala.positions)  # doctest: +SKIP
>>> energy, forces = backend.evaluate(torch.as_tensor(ala.positions[None]))  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import openmm
import torch

from .context import ContextEvaluator

__all__ = ["TorchBackend", "TorchBackendError", "torch_unsupported_forces"]


class TorchBackendError(ValueError):
    """The torch force field cannot represent this system faithfully."""


def torch_unsupported_forces(system: openmm.System) -> list[str]:
    """Names of the forces of ``system`` the torch force field cannot evaluate.

    Raises ``ImportError`` if the torch force field module is not installed.
    """
    from .torchff.forcefield import unsupported_forces

    return list(unsupported_forces(system))


def _lattice(n_atoms: int) -> np.ndarray:
    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return 0.3 * grid[:n_atoms].astype(np.float64)


class TorchBackend:
    """Energies and forces from the batched torch force field, with the failure convention.

    Parameters
    ----------
    system : openmm.System
        The potential.
    reference_positions : numpy.ndarray, optional
        ``[n_atoms, 3]`` nm, the centre of the configurations used by the self-check (a lattice
        of spacing 0.3 nm without one).
    device : str or torch.device
        Where the force field runs.
    check : bool
        Compare with OpenMM at construction (strongly recommended).
    tolerance : float
        Largest accepted relative difference of energies and forces in the self-check.
    n_check : int
        Number of perturbed configurations in the self-check.
    """

    def __init__(self, system: openmm.System, reference_positions: np.ndarray | None = None,
                 device: str | torch.device = "cpu", check: bool = True, tolerance: float = 1e-6,
                 n_check: int = 4):
        from .torchff.forcefield import TorchForceField, unsupported_forces

        missing = list(unsupported_forces(system))
        if missing:
            raise TorchBackendError(f"the torch force field does not support {', '.join(missing)}; "
                                    "use backend='openmm'")
        self.n_atoms = system.getNumParticles()
        self.device = torch.device(device)
        self.forcefield = TorchForceField(system, dtype=torch.float64, device=self.device)
        ref = _lattice(self.n_atoms) if reference_positions is None else np.asarray(
            reference_positions, dtype=np.float64)
        self._safe = torch.as_tensor(ref, dtype=torch.float64, device=self.device)
        self.max_relative_error = None
        if check:
            self.max_relative_error = self._self_check(system, ref, tolerance, n_check)

    def _self_check(self, system, ref, tolerance, n_check) -> float:
        rng = np.random.default_rng(1234)
        x = ref[None] + 0.01 * rng.standard_normal((n_check, self.n_atoms, 3))
        e_mm, f_mm = ContextEvaluator(system, "Reference").evaluate(x)
        e_t, f_t = self.evaluate(torch.as_tensor(x, device=self.device))
        e_t, f_t = e_t.cpu().numpy(), f_t.cpu().numpy()
        scale_e = np.maximum(np.abs(e_mm), 1.0)  # kJ/mol; avoids dividing by ~0 energies
        rel_e = np.abs(e_t - e_mm) / scale_e
        norm_f = np.linalg.norm(f_mm.reshape(n_check, -1), axis=1)
        rel_f = np.linalg.norm((f_t - f_mm).reshape(n_check, -1), axis=1) / np.maximum(norm_f, 1.0)
        worst = float(np.nan_to_num(max(rel_e.max(), rel_f.max()), nan=np.inf))
        if not worst <= tolerance:
            raise TorchBackendError(
                f"the torch force field disagrees with OpenMM (Reference platform) on perturbed "
                f"configurations: relative difference {worst:.3g} > {tolerance:g} (energies "
                f"{e_t.tolist()} vs {e_mm.tolist()} kJ/mol); use backend='openmm'")
        return worst

    def evaluate(self, positions: torch.Tensor, forces: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Energies (kJ/mol, ``[batch]`` float64) and forces (kJ/mol/nm, ``[batch, n_atoms, 3]``).

        Rows with non-finite input, energy or force get ``+inf`` and zero force. Tensors are on
        the backend's device.
        """
        x = positions.detach().to(self.device, torch.float64)
        finite_in = torch.isfinite(x).all(dim=(1, 2))
        x = torch.where(finite_in[:, None, None], x, self._safe)
        with torch.enable_grad():
            x.requires_grad_(forces)
            energy = self.forcefield(x)
            grad = torch.autograd.grad(energy.sum(), x)[0] if forces else None
        energy = energy.detach()
        ok = finite_in & torch.isfinite(energy)
        if forces:
            ok &= torch.isfinite(grad).all(dim=(1, 2))
            force = torch.where(ok[:, None, None], -grad, torch.zeros_like(grad))
        else:
            force = None
        energy = torch.where(ok, energy, torch.full_like(energy, float("inf")))
        return energy, force
