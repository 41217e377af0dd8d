"""Files written before the package was split into layers keep working: the shipped pretrained model
(file format 1) and an openmmtools MultiStateReporter storage with Boltzmann-Generator moves written by
openmm-bg at commit 3c72f30 (``tests/data/make_premove_storage.py`` made ``tests/data/premove/``)."""

import shutil
import warnings
from pathlib import Path

import numpy as np
import openmm
import openmm.unit as unit
import pytest
from openmmtools import cache

from openmm_bg import BoltzmannGenerator
from openmm_bg.mcmc import BoltzmannGeneratorMove, LatentMetropolisMove, clear_model_cache
from openmm_bg.model import read_model_file
from openmm_bg.systems import load

ROOT = Path(__file__).resolve().parents[1]
PREMOVE = Path(__file__).resolve().parent / "data" / "premove"
STORED_MODEL_PATH = "/tmp/openmm_bg_premove/double_well.bg"  # where the generating script saved it


def test_shipped_model_of_format_1_loads_and_samples():
    path = ROOT / "systems" / "models" / "alanine_dipeptide_vacuum.bg"
    payload = read_model_file(path)
    assert payload["format_version"] == 1 and payload["training_temperature"] is None
    gen = BoltzmannGenerator.load(path, load("alanine_dipeptide"))
    assert gen.training_temperature == 300.0 and gen.extra["system_spec"]["name"] == "alanine_dipeptide"
    samples = gen.sample(400, seed=0)
    assert np.isfinite(samples.log_weights).mean() > 0.9
    assert samples.has_proposal_density and samples.ess > 10


def _point_storage_at(storage: Path, model: Path) -> None:
    """Rewrite the model path the stored moves hold (absolute, from when the storage was written)."""
    import netCDF4

    with netCDF4.Dataset(storage, "a") as nc:
        group = nc.groups["mcmc_moves"]
        for name in group.variables:
            text = group.variables[name][0]
            assert STORED_MODEL_PATH in text
            group.variables[name][0] = text.replace(STORED_MODEL_PATH, str(model))


@pytest.fixture
def premove_storage(tmp_path):
    for f in PREMOVE.iterdir():
        shutil.copy(f, tmp_path / f.name)
    _point_storage_at(tmp_path / "rex.nc", tmp_path / "double_well.bg")
    clear_model_cache()
    yield tmp_path / "rex.nc", tmp_path / "double_well.bg"
    clear_model_cache()


def test_premove_storage_moves_read_back_and_apply(premove_storage):
    from openmmtools.multistate import MultiStateReporter

    storage, model = premove_storage
    reporter = MultiStateReporter(str(storage), open_mode="r")
    try:
        moves = reporter.read_mcmc_moves()
        thermo, _ = reporter.read_thermodynamic_states()
        sampler_states = reporter.read_sampler_states(iteration=2)
    finally:
        reporter.close()
    assert len(moves) == 2 and len(thermo) == 2
    bg, latent = moves[0].move_list
    assert type(bg) is BoltzmannGeneratorMove and type(latent) is LatentMetropolisMove
    assert bg.model_path == str(model) and bg.generator is None
    # the statistics written by the pre-move code (tests/data/premove/README.txt)
    assert bg.statistics == {"n_accepted": 4, "n_proposed": 6, "n_out_of_domain": 0, "n_inverted": 0,
                             "n_failed_energy": 0}
    assert bg.n_proposals == 3 and bg.scale_prior and latent.step_size == 0.3 and latent.n_steps == 2
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"), capacity=4)
    ss = sampler_states[0]
    before = ss.positions.value_in_unit(unit.nanometer).copy()
    for move in (bg, latent):
        n = move.n_proposed
        move.apply(thermo[1], ss, context_cache=context_cache)
        assert move.n_proposed > n
    gen = bg.generator
    assert gen is latent.generator and gen.training_temperature == 300.0  # format 1: the system's
    x = ss.positions.value_in_unit(unit.nanometer)
    assert np.isfinite(x).all() and x[0, 2] == before[0, 2]  # the confined z is kept
    samples = gen.sample(200, seed=0)
    assert np.isfinite(samples.log_weights).all()


def test_premove_replica_exchange_resumes(premove_storage):
    from openmmtools.multistate import ReplicaExchangeSampler

    storage, _ = premove_storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sampler = ReplicaExchangeSampler.from_storage(str(storage))
    try:
        assert sampler.iteration == 2
        # the toy systems' global parameter kT clashes with openmmtools' default integrator: Verlet contexts
        context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"), capacity=4)
        for state in sampler._thermodynamic_states:
            context_cache.get_context(state, openmm.VerletIntegrator(1.0 * unit.femtosecond))
        sampler.energy_context_cache = sampler.sampler_context_cache = context_cache
        sampler.extend(1)
        assert sampler.iteration == 3
        bg = [m.move_list[0] for m in sampler._mcmc_moves]
        assert sum(m.n_proposed for m in bg) == 3 * 2 * 3  # 3 iterations, 2 states, 3 proposals
        assert bg[0].generator is bg[1].generator is not None
    finally:
        sampler._reporter.close()
