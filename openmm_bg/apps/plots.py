"""Plot helpers for free-energy results and training curves, written to PNG files.

- `plot_free_energies`: Delta A bars with error bars (state or thermodynamic results).
- `plot_profile`: free-energy profiles with error bands, optionally over an exact curve.
- `plot_surface`: a 2D free-energy surface (e.g. the phi/psi Ramachandran free energy).
- `plot_ramachandran`: phi/psi free-energy panels side by side (MD data, raw and reweighted samples).
- `plot_history`: training curves of a `Trainer` run (ML loss and held-out NLL, KL or FAB loss, mean
  sample energy or the FAB batches' ESS/N); `history_panels` says which curves it draws.

Every function returns the path written. matplotlib is imported lazily and used through its
object-oriented API only (``matplotlib.figure.Figure`` and ``Figure.savefig``): no pyplot, no
display needed, and the caller's backend (a notebook's, a GUI's) is never switched.

Examples
--------
>>> from openmm_bg.apps.plots import plot_profile  # doctest: +SKIP
>>> plot_profile(profile, "phi.png", exact=(x, F_exact))  # doctest: +SKIP
PosixPath('phi.png')
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..analysis.free_energy import (
    FreeEnergyProfile,
    FreeEnergySurface,
    StateFreeEnergy,
    ThermodynamicFreeEnergy,
    free_energy_surface,
)
from ..analysis.samples import Samples
from ..constants import kT_kJ_per_mol
from ..systems.peptides import C7AX_PHI_RANGE

__all__ = ["plot_free_energies", "plot_profile", "plot_surface", "plot_ramachandran", "plot_history",
           "history_panels"]


def _figure(figsize: tuple[float, float], **kwargs):
    """A new ``matplotlib.figure.Figure``, not registered with pyplot (so never shown, never leaked)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, **kwargs)


def _save(fig, path, dpi: int = 120, tight: bool = True) -> Path:
    """Write ``fig`` to ``path`` as PNG (suffix ``.png`` enforced, folders created)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, format="png")
    return path


def plot_free_energies(results: Sequence[StateFreeEnergy | ThermodynamicFreeEnergy | tuple],
                       path: str | os.PathLike, labels: Sequence[str] | None = None, unit: str = "kT",
                       reference: float | None = None, title: str | None = None) -> Path:
    """Bar chart of free-energy differences with error bars.

    Parameters
    ----------
    results : sequence
        `StateFreeEnergy` (kT), `ThermodynamicFreeEnergy` (reduced ``delta_f``) or ``(label, value,
        error)`` tuples, one bar each.
    path : path
        Output PNG.
    labels : sequence of str, optional
        Bar labels (default from the results).
    unit : {"kT", "kJ/mol"}
        Which number to plot (``"kT"`` means reduced for thermodynamic results).
    reference : float, optional
        Draws a horizontal line at a reference value (same unit).
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    if not results:
        raise ValueError("nothing to plot: results is empty")
    if unit not in ("kT", "kJ/mol"):
        raise ValueError(f"unit must be 'kT' or 'kJ/mol', got {unit!r}")
    values, errors, names = [], [], []
    for r in results:
        if isinstance(r, StateFreeEnergy):
            v, e = (r.delta_a_kT, r.error_kT) if unit == "kT" else (r.delta_a_kJ_mol, r.error_kJ_mol)
            name = f"{r.state_b} - {r.state_a}"
        elif isinstance(r, ThermodynamicFreeEnergy):
            v, e = (r.delta_f, r.error_f) if unit == "kT" else (r.delta_a_kJ_mol, r.error_kJ_mol)
            name = f"{r.label_b} - {r.label_a} ({r.method})"
        else:
            name, v, e = r
        values.append(v)
        errors.append(e if e is not None and math.isfinite(e) else 0.0)
        names.append(name)
    names = list(labels) if labels is not None else names
    fig = _figure((max(4.0, 1.2 * len(values) + 2), 3.5))
    ax = fig.subplots()
    x = np.arange(len(values))
    ax.bar(x, values, yerr=errors, capsize=5, color="tab:blue", alpha=0.8, edgecolor="black")
    if reference is not None:
        ax.axhline(reference, color="tab:red", ls="--", label="reference")
        ax.legend()
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=20, ha="right")
    ax.set_ylabel(r"$\Delta A$ / kT (reduced)" if unit == "kT" else r"$\Delta A$ / kJ mol$^{-1}$")
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_profile(profiles: FreeEnergyProfile | Sequence[FreeEnergyProfile], path: str | os.PathLike,
                 labels: Sequence[str] | None = None,
                 exact: Callable[[np.ndarray], np.ndarray] | tuple[np.ndarray, np.ndarray] | None = None,
                 unit: str = "kT", title: str | None = None) -> Path:
    """Free-energy profile(s) with error bands, optionally over an exact curve.

    Parameters
    ----------
    profiles : FreeEnergyProfile or sequence
        One or several profiles along the same coordinate.
    path : path
        Output PNG.
    labels : sequence of str, optional
    exact : callable or (x, F), optional
        Exact free energy (kT): a function of the coordinate or sampled points; shifted onto the first
        profile by the inverse-variance weighted mean offset over its filled bins.
    unit : {"kT", "kJ/mol"}
    title : str, optional

    Returns
    -------
    pathlib.Path
    """
    profiles = [profiles] if isinstance(profiles, FreeEnergyProfile) else list(profiles)
    if not profiles:
        raise ValueError("nothing to plot: no profiles")
    if unit not in ("kT", "kJ/mol"):
        raise ValueError(f"unit must be 'kT' or 'kJ/mol', got {unit!r}")
    scale = [1.0 if unit == "kT" else kT_kJ_per_mol(p.temperature) for p in profiles]
    fig = _figure((5.5, 3.8))
    ax = fig.subplots()
    for k, p in enumerate(profiles):
        c, F, e = p.centers, p.free_energy_kT * scale[k], np.nan_to_num(p.error_kT * scale[k], nan=0.0)
        label = labels[k] if labels is not None else f"{p.method}"
        line, = ax.plot(c, F, marker="o", ms=3, label=label)
        ax.fill_between(c, F - e, F + e, color=line.get_color(), alpha=0.25, lw=0)
    if exact is not None:
        p = profiles[0]
        if callable(exact):
            xs = np.linspace(p.edges[0], p.edges[-1], 400)
            Fx = np.asarray(exact(xs), dtype=float)
            at_centres = np.asarray(exact(p.centers), dtype=float)
        else:
            xs, Fx = (np.asarray(a, dtype=float) for a in exact)
            at_centres = np.interp(p.centers, xs, Fx)
        ok = np.isfinite(p.free_energy_kT) & np.isfinite(at_centres)
        err = np.where(np.isfinite(p.error_kT) & (p.error_kT > 0), p.error_kT, np.inf)
        if ok.any() and np.isfinite(err[ok]).any():
            w = 1.0 / err[ok] ** 2  # inverse-variance weighted offset: well-sampled bins dominate
            shift = float(np.sum(w * (p.free_energy_kT[ok] - at_centres[ok])) / w.sum())
        else:
            shift = -float(np.nanmin(Fx))
        ax.plot(xs, (Fx + shift) * scale[0], color="black", ls="--", lw=1.2, label="exact")
    ax.set_xlabel(f"{profiles[0].coordinate}" + (f" / {profiles[0].unit}" if profiles[0].unit else ""))
    ax.set_ylabel("F / kT" if unit == "kT" else r"F / kJ mol$^{-1}$")
    ax.legend()
    if title:
        ax.set_title(title)
    return _save(fig, path)


def plot_surface(surface: FreeEnergySurface, path: str | os.PathLike, vmax: float | None = 12.0,
                 title: str | None = None, levels: int = 25) -> Path:
    """Filled-contour plot of a 2D free-energy surface (kT), e.g. a phi/psi Ramachandran map.

    Parameters
    ----------
    surface : FreeEnergySurface
    path : path
        Output PNG.
    vmax : float, optional
        Upper end of the colour scale in kT (higher values and empty bins are left white).
    title : str, optional
    levels : int
        Number of contour levels.

    Returns
    -------
    pathlib.Path
    """
    F = np.array(surface.free_energy_kT, dtype=float)
    if not np.isfinite(F).any():
        raise ValueError("the surface has no filled bins")
    top = float(np.nanmax(F)) if vmax is None else float(vmax)
    fig = _figure((5.0, 4.2))
    ax = fig.subplots()
    cx = 0.5 * (surface.edges_x[1:] + surface.edges_x[:-1])
    cy = 0.5 * (surface.edges_y[1:] + surface.edges_y[:-1])
    masked = np.ma.masked_where(~np.isfinite(F) | (F > top), F)
    cs = ax.contourf(cx, cy, masked.T, levels=np.linspace(0.0, top, levels), cmap="viridis")
    fig.colorbar(cs, ax=ax, label="F / kT")
    ux, uy = surface.units
    ax.set_xlabel(surface.coordinates[0] + (f" / {ux}" if ux else ""))
    ax.set_ylabel(surface.coordinates[1] + (f" / {uy}" if uy else ""))
    ax.set_title(title or f"free energy at {surface.temperature:g} K")
    return _save(fig, path)


def plot_ramachandran(panels: Sequence[tuple[str, Samples]], path: str | os.PathLike, vmax: float = 10.0,
                      bins: int = 60, coordinates: tuple[str, str] = ("phi", "psi"),
                      phi_lines: Sequence[float] = C7AX_PHI_RANGE) -> Path:
    """Ramachandran free energies ``F(phi, psi)`` (kT) of several sample sets, side by side.

    Each panel is the weighted 2D histogram of `openmm_bg.analysis.free_energy.free_energy_surface`
    (minimum 0), filled contours up to ``vmax``; empty bins and higher values are left white.

    Parameters
    ----------
    panels : sequence of (str, Samples)
        Title and sample set per panel; plain configurations (MD frames, raw generator draws) as
        `Samples.unweighted`.
    path : path
        Output PNG.
    vmax : float
        Top of the colour scale, kT.
    bins : int
        Bins per coordinate.
    coordinates : (str, str)
        Reaction coordinates of the systems on the x and y axes (rad).
    phi_lines : sequence of float
        Dotted vertical lines (rad); default the bounds of alanine dipeptide's C7ax state.

    Returns
    -------
    pathlib.Path
    """
    panels = list(panels)
    if not panels:
        raise ValueError("nothing to plot: panels is empty")
    fig = _figure((4.2 * len(panels) + 1.0, 4.0), constrained_layout=True)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, samples) in zip(axes, panels):
        surface = free_energy_surface(samples, *coordinates, bins=bins)
        f = np.array(surface.free_energy_kT, dtype=float)
        cx = 0.5 * (surface.edges_x[1:] + surface.edges_x[:-1])
        cy = 0.5 * (surface.edges_y[1:] + surface.edges_y[:-1])
        masked = np.ma.masked_where(~np.isfinite(f) | (f > vmax), f)
        cs = ax.contourf(cx, cy, masked.T, levels=np.linspace(0, vmax, 21), cmap="viridis")
        for x in phi_lines:
            ax.axvline(x, color="w", lw=0.6, ls=":")
        ax.set_title(title)
        ax.set_xlabel(f"{coordinates[0]} / rad")
    axes[0].set_ylabel(f"{coordinates[1]} / rad")
    fig.colorbar(cs, ax=list(axes), label="F / kT")
    return _save(fig, path, dpi=100, tight=False)


#: The curves `plot_history` can draw: record key, legend label, panel (y-axis label).
_HISTORY_CURVES = (
    ("ml", "ML loss (training batch)", "ML loss (-log p per frame)"),
    ("val_nll", "held-out NLL", "ML loss (-log p per frame)"),
    ("kl", "KL loss", "KL / FAB loss"),
    ("fab", "FAB loss", "KL / FAB loss"),
    ("u_mean", "mean energy of the KL samples", "mean energy of samples (kT)"),
    ("fab_ess", "ESS/N of the FAB annealing batch", "ESS/N of the FAB annealing batch"),
)


def history_panels(history: Sequence[dict]) -> list[tuple[str, list[tuple[str, np.ndarray, np.ndarray]]]]:
    """The panels `plot_history` draws: only curves with at least one finite value, grouped by axis.

    Parameters
    ----------
    history : sequence of dict
        `openmm_bg.training.Trainer.fit`'s records (``step`` and, where present, ``ml``,
        ``val_nll``, ``kl``, ``fab``, ``u_mean``, ``fab_ess``).

    Returns
    -------
    list of (str, list of (str, numpy.ndarray, numpy.ndarray))
        Per panel its y-axis label and its curves ``(label, steps, values)``, finite points only
        (a classic run: ML, KL, energy; an adaptive run: ML with the held-out NLL, FAB, ESS/N).

    Examples
    --------
    >>> [label for label, _ in history_panels([{"step": 0, "ml": 3.0, "fab": 1.0}])]
    ['ML loss (-log p per frame)', 'KL / FAB loss']
    """
    steps = np.array([r["step"] for r in history])
    panels: dict[str, list] = {}
    for key, label, axis in _HISTORY_CURVES:
        values = np.array([np.nan if r.get(key) is None else r[key] for r in history], dtype=float)
        finite = np.isfinite(values)
        if finite.any():
            panels.setdefault(axis, []).append((label, steps[finite], values[finite]))
    return list(panels.items())


def plot_history(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """Training curves of a `Trainer` run as a PNG: the loss terms and the sample diagnostics it recorded.

    Classic recipe: ML loss, KL loss and the mean energy of the KL samples against step. Adaptive
    recipe: ML loss with the held-out NLL, the FAB loss and the ESS/N of its annealing batches.
    Curves without a finite value are left out (`history_panels`).

    Parameters
    ----------
    history : sequence of dict
        `openmm_bg.training.Trainer.fit`'s records.
    path : path
        Output PNG.

    Returns
    -------
    pathlib.Path
    """
    panels = history_panels(history)
    if not panels:
        raise ValueError("history holds no finite loss to plot: was the training run empty?")
    fig = _figure((4 * len(panels), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (axis, curves) in zip(axes, panels):
        for label, steps, values in curves:
            style = {"marker": "o", "ms": 3, "lw": 1.0} if len(values) < 0.2 * len(history) else {"lw": 0.8}
            ax.plot(steps, values, label=label, **style)
        ax.set_xlabel("step")
        ax.set_ylabel(axis)
        if len(curves) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path, dpi=110)
