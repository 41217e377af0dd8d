"""openmmtools, imported quietly: pymbar (which openmmtools imports) prints a "JAX NOT FOUND" banner
and a timeseries notice on import, so pymbar is imported first with both silenced
(`openmm_bg._quiet_imports`, shared with md/), and a user's output stays clean.

Examples
--------
>>> from openmm_bg.mcmc._openmmtools import MCMCMove
>>> MCMCMove.__name__
'MCMCMove'
"""

from .._quiet_imports import openmmtools_module

openmmtools_module()

from openmmtools import cache  # noqa: E402
from openmmtools.mcmc import MCMCMove  # noqa: E402

__all__ = ["cache", "MCMCMove"]
