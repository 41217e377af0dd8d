"""Shared pytest setup for ``tests/`` and the doctests of ``openmm_bg/`` (both collect this file).

- Fixed thread counts, so tests behave the same on a 2-core machine.
- The double-well prelude, once: ``dw`` (the built-in double well), ``dw_data`` (300 frames of
  Langevin MD on the Reference platform, 10 steps apart, seed 0) and ``dw_gen`` (a small untrained
  generator built on them, seed 0). Tests take them as fixtures; doctests that name them get them
  in their namespace. ``dw_gen`` is fresh for every test and doctest (training changes a
  generator in place); the system and the data are made once per session and must not be changed.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

#: How ``dw_data`` is made (``openmm_bg.simulate`` options).
DOUBLE_WELL_MD = {"n_frames": 300, "stride": 10, "seed": 0, "platform": "Reference", "progress": False}
#: How ``dw_gen`` is made (``BoltzmannGenerator.build`` options).
DOUBLE_WELL_GENERATOR = {"n_blocks": 2, "hidden": (16,), "seed": 0}
#: Names given to the doctests that use them.
DOCTEST_NAMES = ("dw", "dw_data", "dw_gen")


@pytest.fixture(scope="session")
def dw():
    """The built-in double well (``openmm_bg.systems.load("double_well")``)."""
    from openmm_bg.systems import load

    return load("double_well")


@pytest.fixture(scope="session")
def dw_data(dw):
    """300 MD frames of the double well (``mdtraj.Trajectory``, nm), see `DOUBLE_WELL_MD`."""
    import openmm_bg

    return openmm_bg.simulate(dw, **DOUBLE_WELL_MD)


@pytest.fixture
def dw_gen(dw, dw_data):
    """A small untrained `BoltzmannGenerator` for the double well, built on ``dw_data``."""
    from openmm_bg import BoltzmannGenerator

    return BoltzmannGenerator.build(dw, dw_data, **DOUBLE_WELL_GENERATOR)


@pytest.fixture(autouse=True)
def _double_well_doctest_names(request):
    """Put the double-well names a doctest uses into its namespace (nothing is built otherwise)."""
    test = getattr(request.node, "dtest", None)
    if test is None:
        return
    source = "\n".join(example.source for example in test.examples)
    namespace = request.getfixturevalue("doctest_namespace")
    for name in DOCTEST_NAMES:
        if re.search(rf"\b{name}\b", source):
            namespace[name] = request.getfixturevalue(name)
