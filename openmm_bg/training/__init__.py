"""Training a Boltzmann Generator: ML, KL and RC losses, staged schedules, checkpoints, resume.

Modules: :mod:`.stages` (`Stage`, `default_stages`, `load_stages`), :mod:`.losses` (`ml_loss`,
`kl_loss`, `rc_loss`), :mod:`.regularization` (the lin-log energy cut, training only),
:mod:`.trainer` (`Trainer`: schedule, metrics, checkpoints, resume), :mod:`.distributed`
(`DistributedTrainer`: data-parallel training on the ranks of a torchrun job, fixed shards).
Formulas: ``docs/design.md``, "Key formulas".

Losses, per batch:

- ML (maximum likelihood on data): ``J_ML = E_data[-log p_X(x)]`` (up to the constant
  log-det of the fixed coordinate transform);
- KL (variational free energy): ``J_KL = E_z[u(F(z)) - log|det J_zx(z)|]``, with ``u``
  regularised by the lin-log cut (training only) and a penalty for inverted stereocentres;
- RC (reaction-coordinate spread): ``J_RC = E_{x~p_X}[log p(R(x))]`` with ``p`` a batchwise
  kernel density estimate of a reaction coordinate.

Examples
--------
>>> from openmm_bg.training import Stage, Trainer
>>> # dw_data: MD frames of the double well; dw_gen: a generator built on them (conftest.py)
>>> history = Trainer(dw_gen, dw_data, [Stage("ml", steps=20, batch_size=64)], progress=False).fit()
>>> len(history), history[-1]["stage"], history[-1]["n_skipped"]
(20, 'ml', 0)
"""

from .distributed import DistributedTrainer
from .losses import kl_loss, ml_loss, rc_loss
from .regularization import LinLogCut, linlogcut
from .stages import Stage, default_stages, load_stages
from .trainer import Trainer

__all__ = ["Stage", "Trainer", "DistributedTrainer", "default_stages", "load_stages", "ml_loss", "kl_loss",
           "rc_loss", "linlogcut", "LinLogCut"]


def __getattr__(name: str):
    # compatibility: plot_history lived here before it moved to the interface layer
    if name == "plot_history":
        from ..apps.plots import plot_history

        return plot_history
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
