"""Bad input to the model layer (issue 17): bad temperatures, sizes, counts and seeds of
`BoltzmannGenerator`, and damaged or malformed model files. Every case is one `ValueError` naming the
argument (or the file) and what is allowed, raised before any work; never a hang, a traceback from deep
inside, or garbage samples."""

import math

import numpy as np
import pytest
import torch

from openmm_bg import BoltzmannGenerator

BAD_TEMPERATURES = [math.nan, 0.0, -5.0, math.inf, -math.inf, "300", True]


# ---------------------------------------------------------------------------------- 1. temperatures
@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
def test_bad_target_temperatures_are_refused(dw_gen, dw_data, temperature):
    """Was: inf accepted (samples "at inf K"), NaN reported as "must be positive"."""
    gen = dw_gen
    x = dw_data.xyz[:3]
    z = torch.zeros(2, gen.n_dof)
    calls = [lambda: gen.sample(5, temperature=temperature), lambda: gen.log_prob(x, temperature=temperature),
             lambda: gen.log_weights(x, temperature=temperature),
             lambda: gen.reduced_energy(x, temperature=temperature),
             lambda: gen.propose(3, temperature=temperature), lambda: gen.sample_latent(3, temperature=temperature),
             lambda: gen.log_weight_latent(z, temperature=temperature)]
    for call in calls:
        with pytest.raises(ValueError, match="temperature must be a positive, finite temperature in K"):
            call()


@pytest.mark.parametrize("temperature", BAD_TEMPERATURES)
def test_bad_training_temperature_is_refused(dw_gen, temperature):
    g = dw_gen
    with pytest.raises(ValueError, match="training_temperature must be a positive, finite temperature in K"):
        BoltzmannGenerator(g.system, g.transform, g.standardize, g.flow, training_temperature=temperature)


def test_good_temperatures_still_work(dw_gen, dw_data):
    s = dw_gen.sample(20, temperature=np.float32(350.0), seed=0)
    assert s.temperature == 350.0 and bool(torch.isfinite(dw_gen.log_prob(dw_data.xyz[:2], temperature=350)).all())
