"""The analysis layer: weighted samples, importance-weight statistics, free energies.

- :mod:`.samples`: `Samples`, configurations with energies and exact log weights;
- :mod:`.reweighting`: Kish ESS, largest weight share, Pareto k, reweighted means and histograms;
- :mod:`.free_energy`: Delta A between conformational and thermodynamic states, profiles (pymbar);
- :mod:`.validity`: `valid_samples`, chemical validity of protein samples; :mod:`.protein`: backbone
  RMSD, chi1 rotamer populations and core-to-core transitions.

This layer knows samples and systems, not how the samples were made.

Examples
--------
>>> import numpy as np
>>> from openmm_bg.analysis import reweighting
>>> round(reweighting.kish_ess(np.zeros(10)), 6)
10.0
"""

from . import reweighting
from .samples import Samples

__all__ = ["Samples", "reweighting"]
