"""`Trainer`: runs a schedule of `Stage`s on a generator, with metrics, checkpoints and resume.

A run is a list of `Stage`s (e.g. ML, then ML + KL with a rising KL weight). Steps whose loss is
not finite are skipped (not applied) and counted. Checkpoints are written atomically every
``checkpoint_every`` steps; `Trainer.fit` with ``resume=True`` continues a killed run from its last
checkpoint and ends where an uninterrupted run with the same seed ends. A checkpoint records what its
run was made from (`Trainer.run_record`: a hash of the training frames, the generator's build
configuration, the system's fingerprint and temperature, the stages, seed and RC); resuming from a
checkpoint of another run, or of an older version that kept no record, raises
`CheckpointMismatchError` instead of silently continuing the other run.

Examples
--------
>>> from openmm_bg.training import Stage, Trainer
>>> # dw_data: MD frames of the double well; dw_gen: a generator built on them (conftest.py)
>>> trainer = Trainer(dw_gen, dw_data, [Stage("ml", steps=20, batch_size=64)], seed=0, progress=False)
>>> history = trainer.fit()
>>> len(history), history[-1]["stage"], history[-1]["n_skipped"]
(20, 'ml', 0)
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from .. import _validation as check
from .._output import output_file
from ..model.annealed import latent_path
from ..model.generator import BoltzmannGenerator, system_fingerprint
from ..sampling import AnnealConfig, anneal
from ..systems import MolecularSystem, ReactionCoordinate
from ..systems.trajectory import check_trajectory
from .fab import ReplayBuffer, fab_target
from .losses import kl_loss, ml_loss, rc_loss
from .stages import RECIPES, Stage, adaptive_stages, default_stages
from .validation import (
    DEFAULT_VALIDATION_FRACTION,
    EarlyStopping,
    GroupNLL,
    ValidationSplit,
    data_origins,
    frame_nll,
    held_out_nll,
    mean_nll,
    validation_split,
)

__all__ = ["Trainer", "training_coordinate", "CheckpointMismatchError", "FAB_REFRESH", "FAB_BUFFER_RUNS"]

#: Steps between the annealing runs of a FAB stage (the buffer is sampled at every step).
FAB_REFRESH = 4
#: The replay buffer holds the samples of this many annealing runs.
FAB_BUFFER_RUNS = 16
#: Bounds of the ML weight that held-out data set (`Stage.ml_auto`).
ML_AUTO_BOUNDS = (0.01, 10.0)

#: Build options of the generator that a resumed run must share: ``BoltzmannGenerator.config`` key -> label.
_GENERATOR_KEYS = {"flow": "flow", "n_blocks": "n_blocks", "hidden": "hidden", "seed": "build seed",
                   "dtype": "dtype", "flow_options": "flow options"}


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by another training run (other data, generator, system, stages or seed).

    ``differences`` names what differs (e.g. ``["training data", "hidden"]``).
    """

    def __init__(self, message: str, differences: Sequence[str] = ()):
        super().__init__(message)
        self.differences = list(differences)


def training_coordinate(system: MolecularSystem, rc: str | ReactionCoordinate | None,
                        stages: Sequence[Stage]) -> ReactionCoordinate | None:
    """The coordinate of the RC loss: ``rc`` looked up in ``system``, checked against the ``stages``' needs.

    Raises
    ------
    KeyError
        ``rc`` is a name the system does not have (the message lists the names it has).
    ValueError
        ``rc`` is neither None, a name nor a `ReactionCoordinate`, or a stage has an RC weight and
        ``rc`` is None.
    """
    if isinstance(rc, str):
        if rc not in system.reaction_coordinates:
            raise KeyError(f"system {system.name!r} has no reaction coordinate {rc!r}; it has "
                           f"{sorted(system.reaction_coordinates)}")
        rc = system.reaction_coordinates[rc]
    elif rc is not None and not isinstance(rc, ReactionCoordinate):
        raise ValueError(f"rc must be None, a name of the system's reaction coordinates "
                         f"{sorted(system.reaction_coordinates)} or a ReactionCoordinate, got {type(rc).__name__}")
    if rc is None and any(s.rc > 0 for s in stages):
        raise ValueError("a stage has an RC weight but no reaction coordinate was given (rc=...)")
    return rc


def _with_defaults(record: dict) -> dict:
    """A run record of an older version read with today's defaults (classic recipe, no held-out data)."""
    record = {"recipe": "classic", "validation": 0.0, **record}
    try:
        record["stages"] = [asdict(Stage(**s)) for s in record.get("stages") or []]
    except (TypeError, ValueError):
        pass  # not stages this version can read: they will differ
    return record


def _checked_stages(stages) -> list[Stage]:
    """Copies of ``stages``, each checked again (a field may have been changed after construction)."""
    if isinstance(stages, Stage) or not isinstance(stages, Sequence):
        raise ValueError(f"stages must be a list of Stage, got {type(stages).__name__}")
    if not stages:
        raise ValueError("give at least one Stage")
    for k, stage in enumerate(stages):
        if not isinstance(stage, Stage):
            raise ValueError(f"stages[{k}] must be a Stage, got {type(stage).__name__}")
    return [replace(s) for s in stages]


def _evenly_spaced(n: int, m: int, device) -> torch.Tensor:
    """``min(m, n)`` indices spread evenly over ``0 .. n - 1`` (the training frames early stopping compares with)."""
    return torch.linspace(0, n - 1, max(1, min(m, n)), device=device).round().long()


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
        Steps between checkpoints (>= 1).
    metrics : path, optional
        CSV (or ``.json``) file of per-step metrics, rewritten at every checkpoint and at the end.
    progress : bool
        Show a progress bar.
    recipe : {"classic", "adaptive"}
        The default schedule when ``stages`` is None: ``"classic"`` (`default_stages`: ML, then
        KL + 0.1 ML) or ``"adaptive"`` (`adaptive_stages`: ML with early stopping on held-out
        time blocks, then FAB with an ML weight set from held-out data, sizes scaled with the
        degrees of freedom). Recorded in the run record and in the model (``generator.extra``).
    validation : float, optional
        Share of the frames held out as whole contiguous time blocks (`validation_split`), in
        [0, 1); default 0.2 when a stage needs held-out data (`Stage.needs_validation`), else 0
        (train on every frame, as before). The held-out blocks lie within each MD start when the
        frames' origins are known, else within each cluster of the data (`validation_split`);
        ``Trainer.split`` says how they were chosen.
    origins : array-like of int, optional
        ``[n_frames]``: the MD start of each frame (`openmm_bg.md.read_origins`); default: read from
        the origins file beside ``data`` (`openmm_bg.md.multistart.origins_path`) when ``data`` is a
        path and that file exists.

    Notes
    -----
    Held-out NLL checks (every ``validate_every`` steps of a stage that needs them) are recorded
    in the metrics as ``val_nll``. With ``ml_auto`` the tolerance of the ML weight's controller is
    ``max(3 SE, 0.02 n_dof)`` nats above the best held-out NLL of the run (``SE`` its standard
    error at that check).

    Raises
    ------
    ValueError
        Before any work, for an argument out of its range: not a generator, no stages or a
        non-`Stage`, an unknown recipe, a validation share outside [0, 1) or 0 with a stage that
        needs held-out data, a seed that is not an integer >= 0, ``checkpoint_every < 1``, a checkpoint or
        metrics file in a folder that does not exist or is not writable; then for training frames
        that do not fit the system or the generator's domain.
    KeyError
        ``rc`` names a coordinate the system does not have.
    """

    #: Shards of a batch (None: one batch from one stream; see `openmm_bg.training.distributed`).
    shards: int | None = None
    #: Judge held-out checks per group of frames (clusters or MD starts, `GroupNLL`): the restored weights
    #: (no group may lose what it gained) and ``ml_auto`` (the ML weight doubles when a group falls behind).
    #: Off: on `openmm_bg.systems.toy.rare_banana` it keeps a 4 % rare state on seeds where it was
    #: lost but lowers the effective samples on others (``benchmarks/README.md``).
    by_group: bool = False

    def __init__(self, generator: BoltzmannGenerator, data, stages: Sequence[Stage] | None = None, seed: int = 0,
                 rc: str | ReactionCoordinate | None = None, checkpoint: str | os.PathLike | None = None,
                 checkpoint_every: int = 100, metrics: str | os.PathLike | None = None, progress: bool = True,
                 recipe: str = "classic", validation: float | None = None, origins=None):
        if not isinstance(generator, BoltzmannGenerator):
            raise ValueError(f"generator must be a BoltzmannGenerator, got {type(generator).__name__}")
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(map(repr, RECIPES))}, got {recipe!r}")
        self.gen = generator
        self.recipe = recipe
        if validation is not None:
            validation = check.number("validation", validation)
            if not 0.0 <= validation < 1.0:
                raise ValueError(f"validation (the held-out share of the frames) must lie in [0, 1), "
                                 f"got {validation!r}")
        explicit = _checked_stages(stages) if stages is not None else None
        if explicit is not None and validation == 0 and any(st.needs_validation for st in explicit):
            raise ValueError("validation=0 but a stage needs held-out data (patience or ml_auto); hold out a share "
                             "of the frames, e.g. validation=0.2")
        self.seed = check.non_negative_int("seed", seed)
        self.rc = training_coordinate(generator.system, rc, explicit or default_stages())  # defaults: no RC
        self.checkpoint = output_file("checkpoint", checkpoint) if checkpoint is not None else None
        self.checkpoint_every = check.positive_int("checkpoint_every", checkpoint_every)
        self.metrics = output_file("metrics", metrics) if metrics is not None else None
        traj = check_trajectory(generator.system, data)
        with torch.no_grad():
            z_data, _, ok = generator.inverse(traj.xyz)
            y, _ = generator.transform.inverse(torch.as_tensor(traj.xyz, dtype=torch.float64))
            v, _ = generator.standardize.inverse(y)
        if not ok.all():
            raise ValueError(f"{int((~ok).sum())} training frames lie outside the generator's domain")
        self._data_hash = hashlib.sha256(np.ascontiguousarray(traj.xyz, dtype=np.float32).tobytes()).hexdigest()
        self._system_fingerprint = system_fingerprint(generator.system)
        v = v.to(generator.flow_dtype).to(generator.device)
        del z_data
        if explicit is None:
            needs = recipe == "adaptive"
        else:
            needs = any(st.needs_validation for st in explicit)
        default = DEFAULT_VALIDATION_FRACTION if needs else 0.0
        self.validation = float(validation if validation is not None else default)
        self.split: ValidationSplit | None = None
        if self.validation > 0:
            self.split = validation_split(generator.system, traj.xyz, self.validation,
                                          origins=data_origins(data, origins), reference=generator.coverage_reference)
            self.v_data = v[torch.as_tensor(self.split.train)]
            self.v_val = v[torch.as_tensor(self.split.held_out)]
        else:
            self.v_data, self.v_val = v, v[:0]
        if explicit is None:
            explicit = (adaptive_stages(generator.n_dof, len(self.v_data)) if recipe == "adaptive"
                        else default_stages())
        self.stages = explicit
        self.progress = progress
        self.history: list[dict] = []
        self.step = 0
        self.n_skipped = 0
        self.energy_evaluations = 0
        self._rng = torch.Generator(device=generator.device).manual_seed(self.seed)
        self._optimizer: torch.optim.Optimizer | None = None
        self._optimizer_stage = -1
        self._reference_energy: float | None = None
        # adaptive parts: stage lengths after early stopping, held-out checks, ML weight, FAB buffer
        self._stage_steps = [s.steps for s in self.stages]
        self._stopping: EarlyStopping | None = None
        self._best_flow: dict | None = None
        self._best_val = math.inf
        self._ml_weight: float | None = None
        self._ml_groups: tuple[int, GroupNLL] | None = None
        self._buffer: ReplayBuffer | None = None
        self._fab_step_size = 0.1
        self._fab_rng = torch.Generator().manual_seed(self.seed)

    @property
    def stage_steps(self) -> list[int]:
        """Steps of each stage: its ``steps``, or fewer once it stopped early."""
        return list(self._stage_steps)

    @property
    def total_steps(self) -> int:
        """Steps of all stages together (a stage that stopped early counts the steps it ran)."""
        return sum(self._stage_steps)

    def _stage_at(self, step: int) -> tuple[int, Stage, int]:
        start = 0
        for k, stage in enumerate(self.stages):
            if step < start + self._stage_steps[k]:
                return k, stage, step - start
            start += self._stage_steps[k]
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
    def _start_step(self, k: int, stage: Stage, i: int) -> tuple[torch.optim.Optimizer, float, dict]:
        """The optimiser (learning rate set, gradients cleared), the KL weight and the step's metrics row."""
        opt = self._optimizer_for(k, stage)
        for group in opt.param_groups:
            group["lr"] = stage.learning_rate(i)
        opt.zero_grad(set_to_none=True)
        w_kl = stage.kl_weight(i)
        row = {"step": self.step + 1, "stage": stage.name, "lr": stage.learning_rate(i), "ml": math.nan,
               "kl": math.nan, "rc": math.nan,
               "w_kl": w_kl, "u_mean": math.nan, "out_of_domain": 0, "inverted": 0}
        return opt, w_kl, row

    def _step(self, k: int, stage: Stage, i: int) -> dict:
        gen = self.gen
        opt, w_kl, row = self._start_step(k, stage, i)
        loss = torch.zeros((), dtype=torch.float64, device=gen.device)
        w_ml = self._ml_weight_of(k, stage)
        if stage.ml_auto:
            row["w_ml"] = w_ml
        if stage.ml > 0:
            idx = torch.randint(0, len(self.v_data), (min(stage.batch_size, len(self.v_data)),),
                                generator=self._rng, device=gen.device)
            ml = ml_loss(gen, self.v_data[idx])
            loss = loss + w_ml * ml.to(torch.float64)
            row["ml"] = ml.item()
        fab_index = fab_log_q = None
        if stage.fab > 0:
            fab_index, fab_log_q = self._fab_batch(stage, i, row)
            if fab_index is not None:
                fab = -fab_log_q.to(torch.float64).mean()
                loss = loss + stage.fab * fab
                row["fab"] = fab.item()
        if w_kl > 0 or stage.rc > 0:
            t = gen.training_temperature if stage.temperature is None else stage.temperature
            z = gen.sample_latent(stage.kl_batch_size or stage.batch_size, self._rng, t)
            kl, proposal, info = kl_loss(gen, z, t, self._reference(), stage.energy_high, stage.energy_max,
                                         stage.chirality_weight)
            self.energy_evaluations += z.shape[0]
            row.update(info)
            if w_kl > 0:
                loss = loss + w_kl * kl
                row["kl"] = kl.item()
            if stage.rc > 0:
                rcl = rc_loss(proposal.x, proposal.ok, self.rc)  # valid rows only
                loss = loss + stage.rc * rcl
                row["rc"] = rcl.item()
        row["loss"] = loss.item()
        row = self._apply_gradients(opt, stage, row, loss.backward)
        if fab_index is not None and not row["skipped"]:  # p^2/q moved with q: log w += log q_old - log q_new
            self._buffer.adjust(fab_index, fab_log_q.detach())
        return row

    def _apply_gradients(self, opt: torch.optim.Optimizer, stage: Stage, row: dict, backward) -> dict:
        """Run ``backward()``, clip and step if ``row["loss"]`` is finite (else count the step skipped); the row."""
        if not math.isfinite(row["loss"]):
            self.n_skipped += 1
            row["skipped"] = 1
            row["grad_norm"] = math.nan
        else:
            backward()
            norm = torch.nn.utils.clip_grad_norm_(self.gen.flow.parameters(), stage.clip_grad)
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
                if stage.needs_validation and ((i + 1) % stage.validate_every == 0 or i + 1 == self._stage_steps[k]):
                    self._check_held_out(k, stage, i, row)
                    bar.total = self.total_steps
                row["time"] = time.perf_counter() - start
                self.history.append(row)
                self.step += 1
                bar.update()
                bar.set_postfix(stage=stage.name, loss=f"{row['loss']:.3g}")
                if self.checkpoint is not None and self.step % self.checkpoint_every == 0:
                    self.save_checkpoint(self.checkpoint)
        self.gen.flow.eval()
        self.gen.extra["training"] = {"recipe": self.recipe, "validation": self.validation,
                                      "stage_steps": {s.name: n for s, n in zip(self.stages, self._stage_steps)}}
        if self.checkpoint is not None:
            self.save_checkpoint(self.checkpoint)
        elif self.metrics is not None:
            self.write_metrics(self.metrics)
        return self.history

    # ------------------------------------------------------------------ adaptive parts
    def _ml_weight_of(self, k: int, stage: Stage) -> float:
        """The ML weight at this step: the stage's, or (``ml_auto``) the one held-out data set."""
        if not stage.ml_auto:
            return stage.ml
        if self._ml_weight is None or self._ml_weight[0] != k:
            self._ml_weight = (k, stage.ml)
        return self._ml_weight[1]

    def _held_out_nll(self, v: torch.Tensor) -> tuple[float, float]:
        """`held_out_nll` of the flow at ``v`` (a sharded run takes rank 0's, so every rank decides alike)."""
        return held_out_nll(self.gen.flow, v)

    def _early_stopping(self, stage: Stage) -> EarlyStopping:
        """Early stopping for ``stage``, by group of held-out frames (clusters, starts) where there are groups."""
        return EarlyStopping(stage.patience or 1, groups=self._held_out_groups())

    def _held_out_groups(self) -> np.ndarray | None:
        """The group of each held-out frame when checks are judged by group (`by_group`), else None."""
        return self.split.held_out_groups if self.by_group and self.split is not None else None

    def _check_held_out(self, k: int, stage: Stage, i: int, row: dict) -> None:
        """A held-out NLL check: early stopping (``patience``) and the ML weight (``ml_auto``)."""
        gen = self.gen
        if self._held_out_groups() is not None:  # judged by group: the NLL of every held-out frame
            frames = frame_nll(gen.flow, self.v_val)
            val, se = mean_nll(frames)
        else:
            frames = None
            val, se = self._held_out_nll(self.v_val)
        row["val_nll"] = val
        self._best_val = min(self._best_val, val)
        if stage.patience is not None:
            if self._stopping is None or self._stopping[0] != k:
                self._stopping = (k, self._early_stopping(stage))
                self._best_flow = None
            stopping = self._stopping[1]
            probe = self.v_data[_evenly_spaced(len(self.v_data), len(self.v_val), self.v_data.device)]
            stop = stopping.update(val, self.step, train=self._held_out_nll(probe)[0], tolerance=se,
                                   frames=frames)
            if stopping.improved_at(self.step):
                self._best_flow = {name: t.detach().clone() for name, t in gen.flow.state_dict().items()}
            last = i + 1 == self._stage_steps[k]
            stop = stop and i + 1 >= stage.steps // 5
            if (stop or last) and self._best_flow is not None and not stopping.improved_at(self.step):
                gen.flow.load_state_dict(self._best_flow)  # the weights of the best check
                row["restored_step"] = stopping.best_step + 1
            if stop and not last:
                self._stage_steps[k] = i + 1
                row["early_stop"] = 1
        if stage.ml_auto:
            tolerance = max(3.0 * se, 0.02 * gen.n_dof)
            w = self._ml_weight_of(k, stage)
            behind = 0.0  # how far the worst group of held-out frames lies above its own best (GroupNLL)
            groups = self._held_out_groups()
            if groups is not None:
                if self._ml_groups is None or self._ml_groups[0] != k:
                    self._ml_groups = (k, GroupNLL(groups))
                behind = self._ml_groups[1].excess(self._ml_groups[1].add(frames))
            if val > self._best_val + tolerance or behind > 0:
                w = min(2.0 * w, ML_AUTO_BOUNDS[1])
            elif val < self._best_val + 0.5 * tolerance and behind == 0:
                w = max(0.5 * w, ML_AUTO_BOUNDS[0])
            self._ml_weight = (k, w)

    def _fab_batch(self, stage: Stage, i: int, row: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Replay-buffer samples (drawn ∝ weight) and their log q; refreshes the buffer by annealing."""
        gen = self.gen
        n = stage.kl_batch_size or stage.batch_size
        if self._buffer is None:
            self._buffer = ReplayBuffer(FAB_BUFFER_RUNS * n, gen.n_dof)
        if i % FAB_REFRESH == 0 or len(self._buffer) == 0:
            self._fab_refresh(stage, n, row)
        return self._fab_draw(self._buffer, n, self._fab_rng)

    def _fab_draw(self, buffer: ReplayBuffer, n: int, rng: torch.Generator):
        """``n`` samples of ``buffer`` drawn ∝ weight and their (differentiable) log q; ``(None, None)`` if none."""
        if len(buffer) == 0:
            return None, None
        gen = self.gen
        index = buffer.sample(n, rng)
        log_q = gen.flow.log_prob(buffer.v[index].to(gen.flow_dtype))
        keep = torch.isfinite(log_q.detach())
        if not bool(keep.all()):  # now outside the flow's domain: weight zero from here on
            buffer.adjust(index[~keep], log_q.detach()[~keep])
            index, log_q = index[keep], log_q[keep]
        return (index, log_q) if index.numel() else (None, None)

    def _fab_refresh(self, stage: Stage, n: int, row: dict) -> None:
        """One annealing run of ``n`` particles from q towards p^2/q (flow fixed), into the buffer."""
        gen = self.gen
        t = gen.training_temperature if stage.temperature is None else stage.temperature
        with torch.no_grad():
            z0 = gen.sample_latent(n, self._rng, t).to(torch.float64)
        seed = int(torch.randint(0, 2**62, (1,), generator=self._fab_rng))
        info = self._fab_anneal(stage, z0, seed, self._fab_step_size, self._buffer)
        self.energy_evaluations += info.pop("energy_evaluations")
        self._fab_step_size = info.pop("step_size", self._fab_step_size)
        row.update(info)

    def _fab_anneal(self, stage: Stage, z0: torch.Tensor, seed: int, step_size: float, buffer: ReplayBuffer) -> dict:
        """Anneal the latent points ``z0`` from q towards p^2/q (flow fixed) and add the result to ``buffer``.

        Returns the run's ``energy_evaluations`` and ``fab_jump``, then either ``fab_failed`` (every
        particle had weight zero: nothing added) or ``fab_ess`` (ESS / N), ``fab_levels`` and the
        kernel's last ``step_size``.
        """
        gen = self.gen
        n = z0.shape[0]
        t = gen.training_temperature if stage.temperature is None else stage.temperature
        path = latent_path(gen, t, batch_size=n)
        config = AnnealConfig(n_levels=stage.fab_levels, step_size=step_size, resample_threshold=0.0, seed=seed)
        try:
            with warnings.catch_warnings(record=True) as caught:  # a jump to beta = 1 is exact, only noisier
                warnings.simplefilter("always", RuntimeWarning)
                result = anneal(path.log_q, fab_target(path.log_q, path.log_target), z0, config)
            jump = int(any("last level jumps" in str(w.message) for w in caught))
        except RuntimeError:  # every particle has weight zero (p = 0 at all of them): nothing to add
            return {"energy_evaluations": path.n_energy_evaluations, "fab_failed": 1}
        with torch.no_grad():
            v, _ = gen.flow.forward(result.positions.to(gen.flow_dtype))
            log_q = gen.flow.log_prob(v).to(torch.float64)
        buffer.add(v, result.log_weights, log_q)
        return {"energy_evaluations": path.n_energy_evaluations, "fab_jump": jump, "fab_ess": result.ess() / n,
                "fab_levels": result.n_levels, "step_size": float(result.step_sizes[-1])}

    # ------------------------------------------------------------------ persistence
    def run_record(self) -> dict:
        """What this run is made from; a checkpoint is resumed only by a run with the same record.

        Keys: ``"training data"`` (SHA-256 of the frames, float32 nm), the generator's build options
        (``flow``, ``n_blocks``, ``hidden``, ``build seed``, ``dtype``, ``flow options``), ``"system"`` (its
        fingerprint: atoms, masses, constraints, forces), ``"temperature"`` (the training temperature, K),
        ``"stages"``, ``"seed"`` (the trainer's), ``"rc"`` (the RC loss coordinate's name), ``"recipe"``
        and ``"validation"`` (the held-out share) with ``"validation split"`` (how the held-out frames
        were chosen and a digest of their indices); for a sharded run
        (`openmm_bg.training.distributed.DistributedTrainer`) also ``"shards"``. A record of an older
        version without ``"recipe"`` and ``"validation"`` (or without the newer `Stage` fields) reads
        as the classic recipe with nothing held out.
        """
        config = self.gen.config
        record = {"training data": self._data_hash}
        record.update({label: config.get(key) for key, label in _GENERATOR_KEYS.items()})
        record.update({"system": self._system_fingerprint, "temperature": float(self.gen.training_temperature),
                       "stages": [asdict(s) for s in self.stages], "seed": self.seed,
                       "rc": None if self.rc is None else self.rc.name, "recipe": self.recipe,
                       "validation": self.validation,
                       "validation split": None if self.split is None else f"{self.split.method} {self.split.digest}"})
        if self.shards is not None:  # sharded runs (training.distributed) depend on the shard count
            record["shards"] = self.shards
        if self.by_group:
            record["by group"] = True
        return record

    def state(self) -> dict:
        """Everything needed to continue: weights, optimiser, RNG, counters, history, stages, run record."""
        return {"step": self.step, "n_skipped": self.n_skipped, "energy_evaluations": self.energy_evaluations,
                "flow_state": {k: v.detach().cpu().clone() for k, v in self.gen.flow.state_dict().items()},
                "optimizer_state": None if self._optimizer is None else self._optimizer.state_dict(),
                "optimizer_stage": self._optimizer_stage, "rng_state": self._rng.get_state(),
                "history": list(self.history), "stages": [asdict(s) for s in self.stages], "seed": self.seed,
                "reference_energy": self._reference_energy, "run": self.run_record(),
                "adaptive": {"stage_steps": list(self._stage_steps), "best_val": self._best_val,
                             "stopping": None if self._stopping is None else
                             (self._stopping[0], self._stopping[1].state_dict()),
                             "best_flow": self._best_flow, "ml_weight": self._ml_weight,
                             "ml_groups": None if self._ml_groups is None else
                             (self._ml_groups[0], self._ml_groups[1].state_dict()),
                             "buffer": None if self._buffer is None else
                             (self._buffer.capacity, self._buffer.state_dict()),
                             "fab_step_size": self._fab_step_size, "fab_rng": self._fab_rng.get_state()}}

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

    def read_checkpoint(self, path: str | os.PathLike) -> dict:
        """The state stored in a checkpoint of this run (see `run_record`), without applying it.

        Raises
        ------
        ValueError
            Not a readable checkpoint.
        CheckpointMismatchError
            Written by another run (the message names what differs) or by an older version that
            kept no record of its run.
        """
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            state["stages"], state["flow_state"]  # noqa: B018 -- the keys every checkpoint has
        except Exception as err:  # corrupt or foreign file
            raise ValueError(f"{path}: not a readable openmm-bg training checkpoint ({err})") from err
        restart = ("start over with --restart (in Python: Trainer.fit(resume=False)) or use another "
                   "checkpoint file")
        saved = state.get("run")
        if not isinstance(saved, dict):
            raise CheckpointMismatchError(f"cannot resume from {path}: it was written by an older openmm-bg "
                                          f"that did not record what the run was made from; {restart}",
                                          ["run record"])
        current = self.run_record()
        saved = _with_defaults(saved)
        if isinstance(saved.get("system"), dict) and "group_masses" not in saved["system"]:  # written before the entry
            current["system"] = {k: v for k, v in current["system"].items() if k != "group_masses"}
        differences = [key for key in {**saved, **current} if saved.get(key) != current.get(key)]
        if differences:
            raise CheckpointMismatchError(f"cannot resume from {path}: it was written by another training run "
                                          f"(different {', '.join(differences)}); {restart}", differences)
        return state

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore a state written by `save_checkpoint` by this run (see `read_checkpoint`)."""
        self._apply_state(self.read_checkpoint(path), path)

    def _apply_state(self, state: dict, path: str | os.PathLike) -> None:
        """Restore a checked state of `read_checkpoint` (read from ``path``)."""
        try:
            self.gen.flow.load_state_dict(state["flow_state"])
        except RuntimeError as err:  # torch lists every mismatched tensor: keep it to one line
            first = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), str(err))
            raise ValueError(f"{path}: the stored weights do not fit this generator ({first}); start over "
                             "with --restart (in Python: Trainer.fit(resume=False))") from None
        self.step, self.n_skipped = state["step"], state["n_skipped"]
        self.energy_evaluations = state["energy_evaluations"]
        self.history = list(state["history"])
        self._rng.set_state(state["rng_state"])
        self._reference_energy = state["reference_energy"]
        adaptive = state.get("adaptive")
        if adaptive is not None:
            self._stage_steps = list(adaptive["stage_steps"])
            self._best_val, self._best_flow = adaptive["best_val"], adaptive["best_flow"]
            self._ml_weight, self._fab_step_size = adaptive["ml_weight"], adaptive["fab_step_size"]
            self._ml_groups = None
            if adaptive.get("ml_groups") is not None and self._held_out_groups() is not None:
                k, checks = adaptive["ml_groups"]
                self._ml_groups = (k, GroupNLL(self._held_out_groups()))
                self._ml_groups[1].load_state_dict(checks)
            self._fab_rng.set_state(adaptive["fab_rng"])
            self._stopping = None
            if adaptive["stopping"] is not None:
                k, stopping = adaptive["stopping"]
                self._stopping = (k, self._early_stopping(self.stages[k]))
                self._stopping[1].load_state_dict(stopping)
            self._buffer = None
            if adaptive["buffer"] is not None:
                capacity, buffer = adaptive["buffer"]
                self._buffer = ReplayBuffer(capacity, self.gen.n_dof)
                self._buffer.load_state_dict(buffer)
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
