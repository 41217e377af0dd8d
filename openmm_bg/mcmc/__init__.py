"""openmmtools MCMC moves that propose configurations from a Boltzmann Generator.

`BoltzmannGeneratorMove` (independence Metropolis-Hastings with flow samples) and
`LatentMetropolisMove` (random walk in the flow's latent space) are `openmmtools.mcmc.MCMCMove`
subclasses for ``MCMCSampler``, ``SequenceMove`` and the multistate samplers (:mod:`.moves`). They
only propose: the acceptance loop, statistics and random streams are `GeneratorMove`'s
(:mod:`.base`); `fixman_log_factor` is the constraint correction they use (:mod:`.fixman`,
``docs/design.md``, "Constraints"); what serialisation stores and the process-wide model cache are in
:mod:`.serialization`.

Examples
--------
>>> from openmm_bg.mcmc import BoltzmannGeneratorMove, LatentMetropolisMove
>>> BoltzmannGeneratorMove.__mro__[-3].__name__
'MCMCMove'
"""

from .base import GeneratorMove, MoveProposal
from .fixman import FixmanFactor, fixman_log_factor
from .moves import BoltzmannGeneratorMove, LatentMetropolisMove
from .serialization import clear_model_cache

__all__ = ["BoltzmannGeneratorMove", "LatentMetropolisMove", "GeneratorMove", "MoveProposal", "fixman_log_factor",
           "FixmanFactor", "clear_model_cache"]
