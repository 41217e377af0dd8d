"""openmmtools MCMC moves that propose configurations from a Boltzmann Generator.

`BoltzmannGeneratorMove` (independence Metropolis-Hastings with flow samples) and
`LatentMetropolisMove` (random walk in the flow's latent space) are `openmmtools.mcmc.MCMCMove`
subclasses for ``MCMCSampler``, ``SequenceMove`` and the multistate samplers (:mod:`.moves`). They
only propose: the acceptance loop, statistics and random streams are `GeneratorMove`'s
(:mod:`.base`); `fixman_log_factor` is the constraint correction they use (:mod:`.fixman`,
``docs/design.md``, "Constraints"); `TorsionMove` (:mod:`.torsion_move`) proposes new side-chain
torsions of one residue from an exact von Mises mixture (`TorsionMixture`, :mod:`.torsion_density`)
by turning whole rotors (:mod:`.rotors`), with the same base (`MetropolisHastingsMove`); what
serialisation stores and the process-wide model cache are in :mod:`.serialization`;
annealed proposals of `BoltzmannGeneratorMove` (``anneal=``, an exact annealed independence
sampler) and `pilot_schedule` are in :mod:`.annealed`.

Examples
--------
>>> from openmm_bg.mcmc import BoltzmannGeneratorMove, LatentMetropolisMove
>>> BoltzmannGeneratorMove.__mro__[-3].__name__
'MCMCMove'
"""

from .annealed import pilot_schedule
from .base import GeneratorMove, MetropolisHastingsMove, MoveProposal
from .fixman import FixmanFactor, fixman_log_factor
from .moves import BoltzmannGeneratorMove, LatentMetropolisMove
from .rotors import Rotor, set_torsions, side_chain_rotors, torsions_of
from .serialization import clear_model_cache
from .torsion_density import TorsionMixture
from .torsion_move import TorsionGroup, TorsionMove

__all__ = ["BoltzmannGeneratorMove", "LatentMetropolisMove", "GeneratorMove", "MoveProposal", "fixman_log_factor",
           "FixmanFactor", "clear_model_cache", "MetropolisHastingsMove", "TorsionMove", "TorsionGroup",
           "TorsionMixture", "Rotor", "side_chain_rotors", "set_torsions", "torsions_of", "pilot_schedule"]
