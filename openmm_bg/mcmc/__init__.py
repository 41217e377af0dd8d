"""openmmtools MCMC moves that propose configurations from a Boltzmann Generator.

`BoltzmannGeneratorMove` (independence Metropolis-Hastings with flow samples) and
`LatentMetropolisMove` (random walk in the flow's latent space) are `openmmtools.mcmc.MCMCMove`
subclasses for ``MCMCSampler``, ``SequenceMove`` and the multistate samplers; `fixman_log_factor`
is the constraint correction they use (``docs/design.md``, "Constraints").

Examples
--------
>>> from openmm_bg.mcmc import BoltzmannGeneratorMove, LatentMetropolisMove
>>> BoltzmannGeneratorMove.__mro__[-3].__name__
'MCMCMove'
"""

from .moves import BoltzmannGeneratorMove, FixmanFactor, LatentMetropolisMove, clear_model_cache, fixman_log_factor

__all__ = ["BoltzmannGeneratorMove", "LatentMetropolisMove", "fixman_log_factor", "FixmanFactor",
           "clear_model_cache"]
