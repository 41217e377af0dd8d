"""Training a Boltzmann Generator: ML, KL and RC losses, staged schedules, checkpoints, resume.

Losses (design notes), per batch:

- ML (maximum likelihood on data): ``J_ML = E_data[-log p_X(x)]`` (up to the constant
  log-det of the fixed coordinate transform);
- KL (variational free energy): ``J_KL = E_z[u(F(z)) - log|det J_zx(z)|]``, with ``u``
  regularised by the lin-log cut (training only) and a penalty for inverted stereocentres;
- RC (reaction-coordinate spread): ``J_RC = E_{x~p_X}[log p(R(x))]`` with ``p`` a batchwise
  kernel density estimate of a reaction coordinate.

A run is a list of `Stage`s (e.g. ML, then ML + KL with a rising KL weight). Steps whose loss is
not finite are skipped (not applied) and counted. Checkpoints are written atomically every
``checkpoint_every`` steps; `Trainer.fit` with ``resume=True`` continues a killed run from its last
checkpoint and ends where an uninterrupted run with the same seed ends.

Examples
--------
>>> import openmm_bg
>>> from openmm_bg.systems import load
>>> from openmm_bg.training import Stage, Trainer
>>> dw = load("double_well")
>>> data = openmm_bg.simulate(dw, n_frames=200, stride=10, seed=0, progress=False)
>>> gen = openmm_bg.BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,))
>>> history = Trainer(gen, data, [Stage("ml", steps=20, batch_size=64)], progress=False).fit()
>>> len(history), history[-1]["stage"], history[-1]["n_skipped"]
(20, 'ml', 0)
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .energy import linlogcut
from .generator import BoltzmannGenerator
from .simulation import check_trajectory
from .systems import ReactionCoordinate

__all__ = ["Stage", "Trainer", "ml_loss", "kl_loss", "rc_loss", "default_stages", "load_stages"]


@dataclass
class Stage:
    """One stage of a training schedule.

    Parameters
    ----------
    name : str
        Label in metrics and progress bars.
    steps : int
        Optimiser steps.
    ml, kl, rc : float
        Loss weights. ``kl_end`` makes the KL weight rise linearly from ``kl`` to ``kl_end``.
    kl_end : float, optional
        Final KL weight of a linear ramp.
    lr : float
        Adam learning rate.
    lr_end : float, optional
        Final learning rate of a cosine decay from ``lr`` over the stage (default: constant ``lr``).
    batch_size : int
        Data frames per ML batch.
    kl_batch_size : int, optional
        Prior samples per KL/RC batch (default ``batch_size``).
    temperature : float, optional
        K at which the KL term is taken (default the system's).
    energy_high, energy_max : float
        Lin-log cut of the KL energies, in kT above the reference energy (see
        `openmm_bg.energy.linlogcut`).
    chirality_weight : float
        Weight of the penalty on inverted stereocentres in the KL term.
    clip_grad : float
        Maximal gradient norm.
    """

    name: str
    steps: int
    ml: float = 1.0
    kl: float = 0.0
    rc: float = 0.0
    kl_end: float | None = None
    lr: float = 1e-3
    lr_end: float | None = None
    batch_size: int = 256
    kl_batch_size: int | None = None
    temperature: float | None = None
    energy_high: float = 1e3
    energy_max: float = 1e9
    chirality_weight: float = 10.0
    clip_grad: float = 100.0

    def kl_weight(self, step_in_stage: int) -> float:
        """KL weight at a step of this stage (linear ramp if ``kl_end`` is set)."""
        if self.kl_end is None or self.steps <= 1:
            return self.kl
        return self.kl + (self.kl_end - self.kl) * step_in_stage / (self.steps - 1)

    def learning_rate(self, step_in_stage: int) -> float:
        """Learning rate at a step of this stage (cosine decay to ``lr_end`` if it is set)."""
        if self.lr_end is None or self.steps <= 1:
            return self.lr
        progress = step_in_stage / (self.steps - 1)
        return self.lr_end + 0.5 * (self.lr - self.lr_end) * (1.0 + math.cos(math.pi * progress))


def default_stages(scale: float = 1.0, kl_scale: float | None = None) -> list[Stage]:
    """The standard schedule: ML pre-training, then KL-dominated training with a small ML term.

    ML: 1500 steps, learning rate 5e-4 decaying (cosine) to 5e-5 -- longer or faster ML training
    overfits a few thousand correlated MD frames and makes the generator too cold. KL: 3000 steps of
    ``KL + 0.1 ML`` (the ML term keeps rare states of the data in the proposal), learning rate
    3e-4 decaying to 1e-5. Measured on alanine dipeptide (``benchmarks/README.md``).

    Parameters
    ----------
    scale : float
        Multiplies the step counts of both stages.
    kl_scale : float, optional
        Multiplies the KL stage's step count instead (default ``scale``). Longer is not always
        better: KL seeks modes, and on alanine dipeptide 6000 KL steps drained the rare C7ax basin
        that 3000 kept.
    """
    kl_scale = scale if kl_scale is None else kl_scale
    return [Stage("ml", steps=max(1, int(1500 * scale)), lr=5e-4, lr_end=5e-5),
            Stage("kl", steps=max(1, int(3000 * kl_scale)), ml=0.1, kl=1.0, lr=3e-4, lr_end=1e-5,
                  kl_batch_size=256)]


def load_stages(path: str | os.PathLike) -> list[Stage]:
    """Read stages from a TOML file with ``[[stage]]`` tables (keys as `Stage`'s fields)."""
    import tomllib

    try:
        with open(path, "rb") as fh:
            config = tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"stage config not found: {str(path)!r}") from None
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML: {err}") from err
    stages = config.get("stage")
    if not stages:
        raise ValueError(f"{path}: no [[stage]] tables found")
    fields = set(Stage.__dataclass_fields__)
    out = []
    for k, table in enumerate(stages):
        unknown = set(table) - fields
        if unknown:
            raise ValueError(f"{path}: stage {k + 1} has unknown keys {sorted(unknown)}; allowed: {sorted(fields)}")
        out.append(Stage(**{"name": f"stage{k + 1}", **table}))
    return out


# ---------------------------------------------------------------------- losses
def ml_loss(gen: BoltzmannGenerator, v: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of standardised data ``v`` ``[batch, n_dof]`` under the flow (scalar)."""
    return -gen.flow.log_prob(v).mean()


def kl_loss(gen: BoltzmannGenerator, z: torch.Tensor, temperature: float, reference_energy: float,
            high: float, max_energy: float, chirality_weight: float):
    """Reverse KL (variational free energy) of latent samples ``z``; returns ``(loss, x, info)``.

    ``x`` is ``[batch, n_atoms, 3]`` (float64, graph attached, NaN rows out of domain) for reuse by
    the RC loss; ``info`` holds the mean raw energy and rejection counts.
    """
    x, log_det, ok = gen.forward(z)
    scale = gen.temperature / temperature
    u = gen.energy(x.masked_fill(~ok[:, None, None], 0.0)) * scale
    u_cut = linlogcut(u, high=high, max=max_energy, reference=reference_energy * scale)
    u_cut = torch.where(ok, u_cut, torch.full_like(u_cut, float(u_cut.detach().max()) if ok.any() else 0.0))
    loss = (u_cut - torch.where(ok, log_det, torch.zeros_like(log_det))).mean()
    n_inverted = 0
    if gen.stereo is not None and chirality_weight > 0:
        vol = gen.stereo.signed_volumes(x)
        ref = torch.as_tensor(gen.stereo.reference_sign, dtype=vol.dtype, device=vol.device)
        magnitude = vol.detach().abs().mean(0).clamp_min(1e-6)
        penalty = torch.relu(-vol * ref / magnitude).sum(-1)
        penalty = torch.where(ok, penalty, torch.zeros_like(penalty))
        loss = loss + chirality_weight * penalty.mean()
        n_inverted = int(((vol * ref <= 0).any(-1) & ok).sum())
    finite_u = u.detach()[ok & torch.isfinite(u.detach())]
    info = {"u_mean": float(finite_u.mean()) if finite_u.numel() else math.inf,
            "out_of_domain": int((~ok).sum()), "inverted": n_inverted}
    return loss, x, info


def rc_loss(x: torch.Tensor, ok: torch.Tensor, coordinate: ReactionCoordinate,
            bandwidth: float | None = None) -> torch.Tensor:
    """``E[log p(R(x))]`` with ``p`` a Gaussian KDE of the batch's own values (scalar).

    Minimising it spreads samples along ``R``. Periodic coordinates use wrapped differences.
    """
    r = coordinate(x[ok])
    if r.numel() < 2:
        return x.new_zeros(())
    lo, hi = coordinate.bounds
    h = bandwidth if bandwidth is not None else 0.05 * (hi - lo)
    d = r[:, None] - r[None, :]
    if coordinate.periodic:
        period = hi - lo
        d = torch.remainder(d + 0.5 * period, period) - 0.5 * period
    log_k = -0.5 * (d / h) ** 2
    log_p = torch.logsumexp(log_k, dim=1) - math.log(r.numel()) - math.log(h * math.sqrt(2 * math.pi))
    return log_p.mean()


# ---------------------------------------------------------------------- trainer
class Trainer:
    """Runs a schedule of `Stage`s on a generator, with metrics, checkpoints and resume.

    Parameters
    ----------
    generator : BoltzmannGenerator
        Trained in place.
    data : mdtraj.Trajectory, path or array
        Training frames ``[n_frames, n_atoms, 3]`` (nm).
    stages : sequence of Stage
        The schedule (default `default_stages`).
    seed : int
        Seeds batches and latent samples: same seed, same result.
    rc : str or ReactionCoordinate, optional
        Coordinate for the RC loss (a name of the system's coordinates).
    checkpoint : path, optional
        Checkpoint file, written atomically every ``checkpoint_every`` steps and at the end.
    checkpoint_every : int
        Steps between checkpoints.
    metrics : path, optional
        CSV (or ``.json``) file of per-step metrics, rewritten at every checkpoint and at the end.
    progress : bool
        Show a progress bar.
    """

    def __init__(self, generator: BoltzmannGenerator, data, stages: Sequence[Stage] | None = None, seed: int = 0,
                 rc: str | ReactionCoordinate | None = None, checkpoint: str | os.PathLike | None = None,
                 checkpoint_every: int = 100, metrics: str | os.PathLike | None = None, progress: bool = True):
        self.gen = generator
        self.stages = list(stages) if stages is not None else default_stages()
        if not self.stages:
            raise ValueError("give at least one Stage")
        self.seed = int(seed)
        traj = check_trajectory(generator.system, data)
        with torch.no_grad():
            z_data, _, ok = generator.inverse(traj.xyz)
            y, _ = generator.transform.inverse(torch.as_tensor(traj.xyz, dtype=torch.float64))
            v, _ = generator.standardize.inverse(y)
        if not ok.all():
            raise ValueError(f"{int((~ok).sum())} training frames lie outside the generator's domain")
        self.v_data = v.to(generator.flow_dtype).to(generator.device)
        del z_data
        if isinstance(rc, str):
            if rc not in generator.system.reaction_coordinates:
                raise KeyError(f"system {generator.system.name!r} has no reaction coordinate {rc!r}; it has "
                               f"{sorted(generator.system.reaction_coordinates)}")
            rc = generator.system.reaction_coordinates[rc]
        self.rc = rc
        if any(s.rc > 0 for s in self.stages) and rc is None:
            raise ValueError("a stage has an RC weight but no reaction coordinate was given (rc=...)")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.metrics = Path(metrics) if metrics is not None else None
        self.progress = progress
        self.history: list[dict] = []
        self.step = 0
        self.n_skipped = 0
        self.energy_evaluations = 0
        self._rng = torch.Generator(device=generator.device).manual_seed(self.seed)
        self._optimizer: torch.optim.Optimizer | None = None
        self._optimizer_stage = -1
        self._reference_energy: float | None = None

    @property
    def total_steps(self) -> int:
        """Steps of all stages together."""
        return sum(s.steps for s in self.stages)

    def _stage_at(self, step: int) -> tuple[int, Stage, int]:
        start = 0
        for k, stage in enumerate(self.stages):
            if step < start + stage.steps:
                return k, stage, step - start
            start += stage.steps
        raise IndexError(step)

    def _optimizer_for(self, k: int, stage: Stage) -> torch.optim.Optimizer:
        if self._optimizer is None or self._optimizer_stage != k:
            self._optimizer = torch.optim.Adam(self.gen.flow.parameters(), lr=stage.lr)
            self._optimizer_stage = k
        return self._optimizer

    def _reference(self) -> float:
        if self._reference_energy is None:
            ref = self.gen.energy.reference_energy
            if ref is None or not math.isfinite(ref):
                with torch.no_grad():
                    ref = float(self.gen.energy(self.gen.system.positions[None])[0])
            self._reference_energy = float(ref)
        return self._reference_energy

    # ------------------------------------------------------------------ one step
    def _step(self, k: int, stage: Stage, i: int) -> dict:
        gen = self.gen
        opt = self._optimizer_for(k, stage)
        for group in opt.param_groups:
            group["lr"] = stage.learning_rate(i)
        opt.zero_grad(set_to_none=True)
        w_kl = stage.kl_weight(i)
        row = {"step": self.step + 1, "stage": stage.name, "lr": stage.learning_rate(i), "ml": math.nan,
               "kl": math.nan, "rc": math.nan,
               "w_kl": w_kl, "u_mean": math.nan, "out_of_domain": 0, "inverted": 0}
        loss = torch.zeros((), dtype=torch.float64, device=gen.device)
        if stage.ml > 0:
            idx = torch.randint(0, len(self.v_data), (min(stage.batch_size, len(self.v_data)),),
                                generator=self._rng, device=gen.device)
            ml = ml_loss(gen, self.v_data[idx])
            loss = loss + stage.ml * ml.to(torch.float64)
            row["ml"] = ml.item()
        if w_kl > 0 or stage.rc > 0:
            t = gen.temperature if stage.temperature is None else stage.temperature
            z = gen.sample_latent(stage.kl_batch_size or stage.batch_size, self._rng, t)
            kl, x, info = kl_loss(gen, z, t, self._reference(), stage.energy_high, stage.energy_max,
                                  stage.chirality_weight)
            self.energy_evaluations += z.shape[0]
            row.update(info)
            if w_kl > 0:
                loss = loss + w_kl * kl
                row["kl"] = kl.item()
            if stage.rc > 0:
                ok = torch.isfinite(x).all(-1).all(-1)
                rcl = rc_loss(x, ok, self.rc)
                loss = loss + stage.rc * rcl
                row["rc"] = rcl.item()
        row["loss"] = loss.item()
        if not torch.isfinite(loss):
            self.n_skipped += 1
            row["skipped"] = 1
            row["grad_norm"] = math.nan
        else:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(gen.flow.parameters(), stage.clip_grad)
            if torch.isfinite(norm):
                opt.step()
                row["skipped"] = 0
            else:
                self.n_skipped += 1
                row["skipped"] = 1
            row["grad_norm"] = float(norm)
        row["n_skipped"] = self.n_skipped
        row["energy_evaluations"] = self.energy_evaluations
        return row

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> list[dict]:
        """Run (or, with ``resume``, continue) the schedule; returns the per-step metrics."""
        from tqdm.auto import tqdm

        if resume:
            if self.checkpoint is None:
                raise ValueError("resume=True needs a checkpoint path")
            if self.checkpoint.is_file():
                self.load_checkpoint(self.checkpoint)
        self.gen.flow.train()
        start = time.perf_counter()
        with tqdm(total=self.total_steps, initial=self.step, disable=not self.progress, desc="training",
                  unit="step") as bar:
            while self.step < self.total_steps:
                k, stage, i = self._stage_at(self.step)
                row = self._step(k, stage, i)
                row["time"] = time.perf_counter() - start
                self.history.append(row)
                self.step += 1
                bar.update()
                bar.set_postfix(stage=stage.name, loss=f"{row['loss']:.3g}")
                if self.checkpoint is not None and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint(self.checkpoint)
        self.gen.flow.eval()
        if self.checkpoint is not None:
            self.save_checkpoint(self.checkpoint)
        elif self.metrics is not None:
            self.write_metrics(self.metrics)
        return self.history

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        """Everything needed to continue: weights, optimiser, RNG, counters, history, stages."""
        return {"step": self.step, "n_skipped": self.n_skipped, "energy_evaluations": self.energy_evaluations,
                "flow_state": {k: v.detach().cpu().clone() for k, v in self.gen.flow.state_dict().items()},
                "optimizer_state": None if self._optimizer is None else self._optimizer.state_dict(),
                "optimizer_stage": self._optimizer_stage, "rng_state": self._rng.get_state(),
                "history": list(self.history), "stages": [asdict(s) for s in self.stages], "seed": self.seed,
                "reference_energy": self._reference_energy}

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write the training state atomically (temporary file, then rename), plus the metrics."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(self.state(), tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        if self.metrics is not None:
            self.write_metrics(self.metrics)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a state written by `save_checkpoint` (same generator architecture and stages)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            stages = state["stages"]
        except Exception as err:  # corrupt or foreign file
            raise ValueError(f"{path}: not a readable openmm-bg training checkpoint ({err})") from err
        if stages != [asdict(s) for s in self.stages] or state["seed"] != self.seed:
            raise ValueError(f"{path} belongs to another schedule or seed; start a new checkpoint file or "
                             "resume with the same stages and seed")
        self.gen.flow.load_state_dict(state["flow_state"])
        self.step, self.n_skipped = state["step"], state["n_skipped"]
        self.energy_evaluations = state["energy_evaluations"]
        self.history = list(state["history"])
        self._rng.set_state(state["rng_state"])
        self._reference_energy = state["reference_energy"]
        self._optimizer = None
        if state["optimizer_state"] is not None:
            k = state["optimizer_stage"]
            opt = self._optimizer_for(k, self.stages[k])
            opt.load_state_dict(state["optimizer_state"])

    def write_metrics(self, path: str | os.PathLike) -> None:
        """Write the per-step metrics as CSV (or JSON for a ``.json`` path), atomically."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix == ".json":
            tmp.write_text(json.dumps(self.history, indent=1))
        else:
            keys = sorted({k for row in self.history for k in row})
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=keys)
                writer.writeheader()
                writer.writerows(self.history)
        os.replace(tmp, path)


def plot_history(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """Training curves (ML loss, KL loss and the mean energy of the KL samples against step) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([r["step"] for r in history])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for key, ax in zip(("ml", "kl", "u_mean"), axes):
        values = np.array([r.get(key, np.nan) for r in history], dtype=float)
        ax.plot(steps, values, lw=0.8)
        ax.set_xlabel("step")
        ax.set_ylabel({"ml": "ML loss", "kl": "KL loss (kT)", "u_mean": "mean energy of samples (kT)"}[key])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
