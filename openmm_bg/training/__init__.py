"""Training a Boltzmann Generator: ML, KL and RC losses, staged schedules, checkpoints, resume.

Modules: :mod:`.stages` (`Stage`, `default_stages`, `adaptive_stages`, `load_stages`),
:mod:`.losses` (`ml_loss`, `kl_loss`, `rc_loss`), :mod:`.fab` (the FAB alpha = 2 loss, its
annealing target and replay buffer), :mod:`.validation` (held-out time blocks, early stopping),
:mod:`.regularization` (the lin-log energy cut, training only), :mod:`.trainer` (`Trainer`:
schedule, metrics, checkpoints, resume), :mod:`.distributed` (`DistributedTrainer`: data-parallel
training on the ranks of a torchrun job, fixed shards). Formulas: ``docs/design.md``, "Key formulas".

Recipes (``Trainer(..., recipe=...)``, ``openmm-bg train --recipe``): ``"classic"`` (the default,
`default_stages`: ML, then KL + 0.1 ML, tuned on alanine dipeptide) and ``"adaptive"``
(`adaptive_stages`: ML with early stopping on held-out contiguous time blocks, then FAB
fine-tuning, mass covering, with an ML weight set from the held-out NLL; sizes scale with the
degrees of freedom). The recipe is recorded in the run record and in the model's ``extra``.

Losses, per batch:

- ML (maximum likelihood on data): ``J_ML = E_data[-log p_X(x)]`` (up to the constant
  log-det of the fixed coordinate transform);
- KL (variational free energy): ``J_KL = E_z[u(F(z)) - log|det J_zx(z)|]``, with ``u``
  regularised by the lin-log cut (training only) and a penalty for inverted stereocentres;
- RC (reaction-coordinate spread): ``J_RC = E_{x~p_X}[log p(R(x))]`` with ``p`` a batchwise
  kernel density estimate of a reaction coordinate;
- FAB (alpha = 2 divergence, mass covering): ``J_FAB = -E_{p^2/q}[log q(x)]`` with the
  expectation taken by annealing from ``q`` towards ``p^2 / q`` (``q`` held fixed) and a
  prioritised replay buffer.

Examples
--------
>>> from openmm_bg.training import Stage, Trainer
>>> # dw_data: MD frames of the double well; dw_gen: a generator built on them (conftest.py)
>>> history = Trainer(dw_gen, dw_data, [Stage("ml", steps=20, batch_size=64)], progress=False).fit()
>>> len(history), history[-1]["stage"], history[-1]["n_skipped"]
(20, 'ml', 0)
"""

from .distributed import DistributedTrainer
from .fab import ReplayBuffer, fab_loss
from .losses import kl_loss, ml_loss, rc_loss
from .regularization import LinLogCut, linlogcut
from .stages import RECIPES, Stage, adaptive_stages, default_stages, load_stages
from .trainer import Trainer
from .validation import EarlyStopping, time_block_split

__all__ = ["Stage", "Trainer", "DistributedTrainer", "default_stages", "adaptive_stages", "RECIPES", "load_stages",
           "ml_loss", "kl_loss", "rc_loss", "fab_loss", "ReplayBuffer", "time_block_split", "EarlyStopping",
           "linlogcut", "LinLogCut"]


def __getattr__(name: str):
    # compatibility: plot_history lived here before it moved to the interface layer
    if name == "plot_history":
        from ..apps.plots import plot_history

        return plot_history
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
