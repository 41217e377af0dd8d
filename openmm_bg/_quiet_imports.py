"""pymbar and openmmtools imported quietly, for every layer (md/, analysis/, mcmc/).

pymbar 4 logs a "JAX NOT FOUND" banner and a timeseries notice on import (printed by logging's
last-resort handler to stderr), and openmmtools imports pymbar; `pymbar_module` imports it once
with both silenced, and `openmmtools_module` imports openmmtools after it, so a user's output
stays clean.

Examples
--------
>>> from openmm_bg._quiet_imports import openmmtools_module
>>> openmmtools_module().mcmc.LangevinDynamicsMove.__name__
'LangevinDynamicsMove'
"""

from __future__ import annotations

import contextlib
import io
import logging

__all__ = ["pymbar_module", "openmmtools_module"]

_PYMBAR = None


def pymbar_module():
    """Import pymbar once, silencing its "JAX NOT FOUND" banner and timeseries notice.

    Raises the pymbar loggers' levels and redirects stdout/stderr during the import only.
    """
    global _PYMBAR
    if _PYMBAR is None:
        names = ["pymbar", "pymbar.mbar_solvers", "pymbar.timeseries", "pymbar.mbar"]
        loggers = [logging.getLogger(n) for n in names]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                import pymbar
                import pymbar.other_estimators  # noqa: F401
                import pymbar.timeseries  # noqa: F401
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
        _PYMBAR = pymbar
    return _PYMBAR


class _DropExperimentalNotice(logging.Filter):
    """Drops openmmtools.multistate's "API is experimental" warning, logged by every sampler and reporter."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "API is experimental" not in record.getMessage()


_MULTISTATE_LOGGERS = ("openmmtools.multistate.multistatereporter", "openmmtools.multistate.multistatesampler",
                       "openmmtools.multistate.paralleltempering", "openmmtools.multistate.replicaexchange")


def openmmtools_module():
    """Import openmmtools (with ``mcmc``, ``multistate``, ``cache`` and ``states``) after a quiet pymbar.

    Also drops the "openmmtools.multistate API is experimental" warning that each multistate
    sampler and reporter logs (other messages of those loggers pass).
    """
    pymbar_module()
    import openmmtools
    import openmmtools.cache
    import openmmtools.mcmc
    import openmmtools.multistate
    import openmmtools.states  # noqa: F401

    for name in _MULTISTATE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropExperimentalNotice) for f in logger.filters):
            logger.addFilter(_DropExperimentalNotice())
    return openmmtools
