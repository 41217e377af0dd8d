"""Plain sampling's speed defaults (issue 13) and that they leave the samples exactly as they were.

`BoltzmannGenerator.sample` draws batches of 4096 latent points in order from one seeded generator
and pushes them through the flow and the energy on `default_threads()` worker threads (the usable
cores, at most 4), each with one torch thread, with the energies from the shipped in-process OpenMM
evaluator (``benchmarks/sampling_speed.py`` measures the alternatives). These tests pin those
choices (not wall-clock times) and check, on the shipped alanine-dipeptide generator, that the
energies are float64 and bit for bit those of the plain loop (one batch after another, one torch
thread) and of the code before the flow's column gathers became ``index_select``.
"""

import inspect
import math
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.flows.coupling import AffineCoupling
from openmm_bg.flows.spline_coupling import SplineCoupling
from openmm_bg.model.batches import MAX_DEFAULT_THREADS, default_threads, keep_freed_memory, torch_threads

MODEL = Path(__file__).resolve().parents[1] / "systems" / "models" / "alanine_dipeptide_vacuum.bg"


@pytest.fixture(scope="module")
def shipped():
    return BoltzmannGenerator.load(MODEL, openmm_bg.systems.load("alanine_dipeptide"))


def test_sampling_defaults_are_the_chosen_ones(shipped):
    params = inspect.signature(BoltzmannGenerator.sample).parameters
    assert params["batch_size"].default == 4096  # measured optimum per sample on 1 core; other sizes draw others
    assert params["threads"].default is None and params["anneal"].default is None
    assert MAX_DEFAULT_THREADS == 4
    assert default_threads() == max(1, min(4, len(os.sched_getaffinity(0))))  # 2 on the 2-core machine
    energy = shipped.energy  # in-process OpenMM (no worker processes, not the torch force field)
    assert energy.backend == "openmm" and energy.n_workers == 1
    before = torch.get_num_threads()
    shipped.sample(10, seed=0)
    assert torch.get_num_threads() == before  # one torch thread inside sample only


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only")
def test_sampling_keeps_freed_memory_instead_of_page_faults(shipped):
    """With glibc's default thresholds a batch of 4096 faulted ~27,000 pages in again on a worker thread
    (2.7-4.7 page faults per sample over a whole run); with freed memory kept, ~0.2 per sample (mostly
    the result arrays, written once)."""
    shipped.sample(4096, seed=0, threads=2)  # warm: contexts, platform choice, heaps
    assert keep_freed_memory()
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    n = 3 * 4096
    shipped.sample(n, seed=1, threads=2)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / n
    assert faults < 1.0, f"{faults:.2f} page faults per sample"
    off = subprocess.run([sys.executable, "-c", "from openmm_bg.model.batches import keep_freed_memory as k; "
                          "print(k())"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OPENMM_BG_KEEP_FREED_MEMORY": "0"})
    assert off.stdout.strip() == "False", off.stderr


def _serial_loop(gen, n: int, seed: int, batch_size: int = 4096):
    """What sample computes, written out: batch after batch in this thread, one torch thread."""
    g = torch.Generator().manual_seed(seed)
    energies, log_q = [], []
    with torch_threads(1), torch.no_grad():
        for start in range(0, n, batch_size):
            p = gen.propose(min(batch_size, n - start), generator=g)
            u = torch.full_like(p.log_q, math.inf)
            u[p.ok] = gen.reduced_energy(p.x[p.ok]).to(u)
            energies.append(u.numpy())
            log_q.append(p.log_q.numpy())
    return np.concatenate(energies), np.concatenate(log_q)


def test_default_energies_are_float64_and_exactly_those_of_the_serial_loop(shipped):
    n = 2 * 4096 + 123  # two full batches and a partial one
    s = shipped.sample(n, seed=3)
    energies, log_q = _serial_loop(shipped, n, seed=3)
    assert s.energies.dtype == np.float64 and s.log_prob.dtype == np.float64
    np.testing.assert_array_equal(s.energies, energies)
    np.testing.assert_array_equal(s.log_prob, log_q)
    # recorded with the code before this change (flow columns gathered by advanced indexing; bit for bit
    # equal on the machine that recorded them; the tolerance only allows for another CPU's float32 GEMM)
    np.testing.assert_allclose(s.energies[:4], [-21.958261600304944, -13.297008924008324, -16.261406178828288,
                                                -16.609386210444995], rtol=1e-5)
    np.testing.assert_allclose(s.energies[-2:], [-23.518970116041825, -10.428108051541207], rtol=1e-5)
    np.testing.assert_allclose(s.log_prob[:2], [223.5613191854627, 217.04313891279673], rtol=1e-5)
    assert np.isfinite(s.energies).sum() == n


def _old_formulation(layer, z: torch.Tensor, inverse: bool) -> torch.Tensor:
    """A coupling layer written as before: columns gathered by ``[..., idx]``, clone and assign."""
    out = z.clone()
    if isinstance(layer, AffineCoupling):
        s, t = layer._params(z[..., layer.idx_c])
        x_t = z[..., layer.idx_t]
        out[..., layer.idx_t] = (x_t - t) * torch.exp(-s) if inverse else x_t * torch.exp(s) + t
    else:
        out[..., layer.idx_t] = layer._spline(z[..., layer.idx_t], z[..., layer.idx_c], inverse=inverse)[0]
    return out


def test_flow_gathers_match_advanced_indexing(shipped):
    """Every coupling layer's forward and inverse equal the clone-and-assign formulation bit for bit."""
    z = shipped.sample_latent(300, torch.Generator().manual_seed(1))
    layers = shipped.flow.layers.transforms
    kinds = set()
    with torch.no_grad():
        for layer in layers:
            y, ld = layer(z)
            np.testing.assert_array_equal(y.numpy(), _old_formulation(layer, z, inverse=False).numpy())
            back, _ = layer.inverse(y)
            np.testing.assert_array_equal(back.numpy(), _old_formulation(layer, y, inverse=True).numpy())
            assert ld.dtype == z.dtype and ld.shape == (300,)
            kinds.add(type(layer))
            z = y
    assert kinds == {AffineCoupling, SplineCoupling}
