"""Bad input to the model layer (issue 17): bad temperatures, sizes, counts and seeds of
`BoltzmannGenerator`, and damaged or malformed model files. Every case is one `ValueError` naming the
argument (or the file) and what is allowed, raised before any work; never a hang, a traceback from deep
inside, or garbage samples."""

import contextlib
import math
import signal

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


# ---------------------------------------------------------------------------------- 2. sizes, counts, seeds
@contextlib.contextmanager
def _time_limit(seconds: float):
    """Fail (instead of hanging) when the block takes longer than ``seconds``."""

    def expired(signum, frame):
        raise TimeoutError(f"did not return within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("batch_size", [0, -3, 1.5, "64", None, True])
def test_sample_refuses_a_bad_batch_size_at_once(dw_gen, batch_size):
    """Was: ``gen.sample(10, batch_size=0)`` looped forever."""
    with _time_limit(20), pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        dw_gen.sample(10, batch_size=batch_size)


@pytest.mark.parametrize("n", [0, -1, 2.5, "10", None, True])
def test_sample_refuses_a_bad_count(dw_gen, n):
    with _time_limit(20), pytest.raises(ValueError, match="n must be an integer >= 1"):
        dw_gen.sample(n)


@pytest.mark.parametrize("seed", [-1, 2.5, "0", 2**64, True])
def test_sample_refuses_a_bad_seed(dw_gen, seed):
    """Was: 2.5 silently truncated to 2, "0" and 2**64 failed inside torch."""
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        dw_gen.sample(5, seed=seed)


@pytest.mark.parametrize("n", [-1, 2.5, "3", True])
def test_propose_and_sample_latent_refuse_a_bad_count(dw_gen, n):
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        dw_gen.propose(n)
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        dw_gen.sample_latent(n)


def test_counts_given_as_integral_floats_still_work(dw_gen):
    assert len(dw_gen.sample(1e1, batch_size=4.0, seed=3.0)) == 10 and dw_gen.propose(0).x.shape[0] == 0


@pytest.mark.parametrize("options, message", [
    ({"n_blocks": 0}, "n_blocks must be an integer >= 1"),
    ({"n_blocks": 2.5}, "n_blocks must be an integer >= 1"),
    ({"hidden": ()}, "hidden must be a non-empty sequence"),
    ({"hidden": (16, 0)}, r"hidden\[1\] must be an integer >= 1"),
    ({"flow": "glow"}, "flow must be 'realnvp' or 'spline'"),
    ({"bins": 1, "flow": "spline"}, "bins must be an integer >= 2"),
    ({"seed": 0.5}, "seed must be an integer"),
    ({"dtype": torch.int32}, "dtype must be torch.float32 or torch.float64"),
    ({"n_bins": 8}, r"unknown flow option\(s\) \['n_bins'\]"),
])
def test_build_checks_its_arguments_before_reading_the_data(dw, options, message):
    """The data path does not exist: the argument error comes first (no work before the checks)."""
    with pytest.raises(ValueError, match=message):
        BoltzmannGenerator.build(dw, "/nonexistent/frames.dcd", **options)
