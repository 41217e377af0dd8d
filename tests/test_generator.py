"""Boltzmann Generator: exact densities, weights, free energies on toy systems, save/load."""

import math

import mdtraj
import numpy as np
import pytest
import torch
from scipy import integrate

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.energy import energy_for
from openmm_bg.model import read_model_file
from openmm_bg.model.generator import ModelMismatchError
from openmm_bg.systems import load
from openmm_bg.training import Stage, Trainer
from openmm_bg.transforms import randomize_orientation


def _two_well_data(system, starts, n_frames=500, stride=10, friction=10.0):
    trajs = []
    for k, start in enumerate(starts):
        x0 = system.positions.copy()
        x0[0, :2] = start
        trajs.append(openmm_bg.simulate(system, n_frames=n_frames, stride=stride, seed=k, platform="Reference",
                                        positions=x0, friction=friction, progress=False))
    return mdtraj.join(trajs)


@pytest.fixture(scope="module")
def double_well():
    system = load("double_well")
    return system, _two_well_data(system, [(-1.7, 0.0), (1.6, 0.0)])


def test_double_well_free_energy_between_wells(double_well):
    """Trained ~20 s, the reweighted BG reproduces Delta A between the wells within 0.15 kT."""
    system, data = double_well
    gen = BoltzmannGenerator.build(system, data, n_blocks=4, hidden=(64, 64), seed=0)
    stages = [Stage("ml", 300, batch_size=256),
              Stage("ml+kl", 300, kl=0.1, kl_end=1.0, kl_batch_size=256, lr=5e-4)]
    history = Trainer(gen, data, stages, seed=0, progress=False).fit()
    assert len(history) == 600 and history[-1]["n_skipped"] == 0
    samples = gen.sample(20000, seed=1)
    x1 = samples.positions[:, 0, 0]
    w = samples.weights
    delta_a = -np.log(w[x1 > 0].sum() / w[x1 < 0].sum())

    def boltzmann(x):
        return np.exp(-(x**4 - 6 * x**2 + x))

    exact = -np.log(integrate.quad(boltzmann, 0, 6)[0] / integrate.quad(boltzmann, -6, 0)[0])
    assert exact == pytest.approx(3.38, abs=0.01)
    assert abs(delta_a - exact) < 0.15, (delta_a, exact)
    assert samples.ess_fraction > 0.2
    assert samples.diagnostics(warn=False).reliable


def test_mueller_brown_reweighted_density_matches_quadrature():
    """Reweighted samples on a 6x6 grid of cells: total variation to the exact cell probabilities < 0.06."""
    system = load("mueller_brown")
    data = _two_well_data(system, [(-0.56, 1.44), (0.62, 0.03), (-0.05, 0.47)], n_frames=400, friction=20.0)
    gen = BoltzmannGenerator.build(system, data, n_blocks=4, hidden=(64, 64), seed=0)
    Trainer(gen, data, [Stage("ml", 300), Stage("kl", 300, kl=0.2, kl_end=1.0, kl_batch_size=256, lr=5e-4)],
            progress=False).fit()
    samples = gen.sample(20000, seed=3)
    edges_x, edges_y = np.linspace(-1.5, 1.2, 7), np.linspace(-0.4, 2.0, 7)
    xy = samples.positions[:, 0, :2]
    hist = np.histogram2d(xy[:, 0], xy[:, 1], bins=[edges_x, edges_y], weights=samples.weights)[0]
    gx, gy = np.meshgrid(np.linspace(-1.5, 1.2, 271), np.linspace(-0.4, 2.0, 241), indexing="ij")
    grid = np.zeros((gx.size, 1, 3))
    grid[:, 0, 0], grid[:, 0, 1] = gx.ravel(), gy.ravel()
    p = np.exp(-system.analytic_energy(torch.tensor(grid)).numpy()).reshape(gx.shape)
    exact = np.histogram2d(gx.ravel(), gy.ravel(), bins=[edges_x, edges_y], weights=p.ravel())[0]
    exact /= exact.sum()
    tv = 0.5 * np.abs(hist / hist.sum() - exact).sum()
    assert tv < 0.06, tv
    assert samples.ess_fraction > 0.1


@pytest.fixture(scope="module")
def alanine():
    system = load("alanine_dipeptide")
    data = openmm_bg.simulate(system, n_frames=300, stride=50, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(32, 32), seed=0)
    Trainer(gen, data, [Stage("ml", 30, batch_size=128)], progress=False).fit()
    return system, data, gen


def test_alanine_density_is_cartesian_and_orientation_free(alanine):
    system, data, gen = alanine
    x = torch.tensor(data.xyz[:20], dtype=torch.float64)
    lp = gen.log_prob(x)
    assert torch.isfinite(lp).all()
    g = torch.Generator().manual_seed(0)
    moved, _ = randomize_orientation(x, generator=g, center=torch.tensor([1.0, -2.0, 0.5]))
    torch.testing.assert_close(gen.log_prob(moved), lp, atol=1e-4, rtol=0)
    samples = gen.sample(500, seed=0)
    finite = np.isfinite(samples.log_prob)
    assert finite.mean() > 0.95
    again = gen.log_prob(samples.positions[finite]).detach().numpy()
    np.testing.assert_allclose(again, samples.log_prob[finite], atol=2e-3)
    assert samples.positions.shape == (500, 22, 3) and samples.energies.dtype == np.float64
    lw = gen.log_weights(samples.positions[finite][:50]).numpy()
    np.testing.assert_allclose(lw, samples.log_weights[finite][:50], atol=2e-3)


def test_mirror_images_get_weight_zero_and_are_counted(alanine):
    system, data, gen = alanine
    x = torch.tensor(data.xyz[:10], dtype=torch.float64)
    mirrored = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    assert gen.inverted(mirrored).all() and not gen.inverted(x).any()
    # same energy (the force field cannot tell), but weight zero
    np.testing.assert_allclose(gen.reduced_energy(mirrored).numpy(), gen.reduced_energy(x).numpy(), rtol=1e-5)
    assert torch.isneginf(gen.log_weights(mirrored)).all()
    assert torch.isfinite(gen.log_weights(x)).all()
    samples = openmm_bg.Samples(system, mirrored.numpy(), gen.reduced_energy(mirrored).numpy(),
                                np.zeros(10), rejected=gen.inverted(mirrored).numpy())
    assert samples.counts["inverted_chirality"] == 10


def test_sampling_at_another_temperature_has_exact_weights(double_well):
    system, data = double_well
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16,), seed=0)
    hot = gen.sample(2000, temperature=600.0, seed=0)
    assert hot.temperature == 600.0
    x = hot.positions[:5]
    u300 = energy_for(system, platform="Reference")(x).numpy()
    np.testing.assert_allclose(hot.energies[:5], u300 * 300.0 / 600.0, rtol=1e-10)
    np.testing.assert_allclose(gen.log_prob(x, temperature=600.0).detach().numpy(), hot.log_prob[:5], atol=1e-4)
    cold = gen.sample(2000, seed=0)
    assert np.std(hot.positions[:, 0, 1]) > 1.2 * np.std(cold.positions[:, 0, 1])


def test_save_load_round_trip_and_errors(alanine, tmp_path):
    system, data, gen = alanine
    path = gen.save(tmp_path / "ala.bg")
    loaded = BoltzmannGenerator.load(path, system)
    a, b = gen.sample(50, seed=7), loaded.sample(50, seed=7)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.log_weights, b.log_weights)
    with pytest.raises(ModelMismatchError, match="constraints differ"):
        BoltzmannGenerator.load(path, load("alanine_dipeptide", constraints="hbonds"))
    with pytest.raises(ModelMismatchError, match="number of atoms differ"):
        BoltzmannGenerator.load(path, load("trpzip2"))
    with pytest.warns(UserWarning, match="force parameters"):
        BoltzmannGenerator.load(path, load("alanine_dipeptide", solvent="implicit"))
    corrupt = tmp_path / "corrupt.bg"
    corrupt.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        BoltzmannGenerator.load(corrupt, system)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        BoltzmannGenerator.load(tmp_path / "missing.bg", system)
    other = tmp_path / "other.pt"
    torch.save({"weights": 1}, other)
    with pytest.raises(ValueError, match="not an openmm-bg generator file"):
        BoltzmannGenerator.load(other, system)


def test_periodic_system_refused():
    from openmmtools.testsystems import AlanineDipeptideExplicit

    explicit = AlanineDipeptideExplicit()
    system = openmm_bg.systems.from_openmm(explicit.system, explicit.topology, explicit.positions)
    with pytest.raises(ValueError, match="periodic"):
        BoltzmannGenerator.build(system, system.positions[None])


def test_log_weight_formula_matches_definition(double_well):
    """log w = -u(x) - log p_X(x), with p_X the flow density pushed through the transform."""
    system, data = double_well
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16,), seed=0)
    samples = gen.sample(10, seed=0)
    u = energy_for(system, platform="Reference")(samples.positions).numpy()
    z, log_det, ok = gen.inverse(samples.positions)
    log_p = -0.5 * (z.double() ** 2).sum(-1) - 0.5 * z.shape[1] * math.log(2 * math.pi) + log_det
    np.testing.assert_allclose(samples.log_weights, -u - log_p.detach().numpy(), atol=1e-4)


def test_propose_is_the_one_path_of_sample(alanine):
    """sample, propose(n), propose(z=) and log_prob agree; invalid rows are finite placeholders with
    log_q = -inf; log_weight_latent is log_weights on the same configurations, and differentiable."""
    system, data, gen = alanine
    samples = gen.sample(300, seed=4, temperature=900.0)
    p = gen.propose(300, temperature=900.0, generator=torch.Generator().manual_seed(4))
    ok = p.ok.numpy()
    np.testing.assert_array_equal(samples.log_prob, p.log_q.detach().numpy())
    np.testing.assert_array_equal(samples.positions[ok], p.x.detach().numpy()[ok])
    assert np.isnan(samples.positions[~ok]).all()
    again = gen.propose(z=p.z, temperature=900.0)
    assert torch.equal(again.x, p.x) and torch.equal(again.log_q, p.log_q)
    np.testing.assert_allclose(gen.log_prob(p.x[p.ok], temperature=900.0).detach().numpy(),
                               p.log_q[p.ok].detach().numpy(), atol=2e-3)
    # a hot prior leaves the domain: placeholders, no NaN, and the batch stays differentiable
    hot = gen.propose(200, temperature=30000.0, generator=torch.Generator().manual_seed(0))
    assert 0 < int((~hot.ok).sum()) < 200
    assert torch.isfinite(hot.x).all() and (hot.log_q[~hot.ok] == -math.inf).all()
    assert (hot.log_det[~hot.ok] == 0).all() and torch.isfinite(hot.log_q[hot.ok]).all()
    z = p.z[:20].clone().requires_grad_(True)
    log_w, prop = gen.log_weight_latent(z, temperature=900.0)
    expected = gen.log_weights(prop.x.detach(), temperature=900.0)
    np.testing.assert_allclose(log_w.detach().numpy(), expected.numpy(), atol=2e-3)
    log_w[torch.isfinite(log_w)].sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="n or latent points"):
        gen.propose()
    with pytest.raises(ValueError, match="shape"):
        gen.propose(z=torch.zeros(3, gen.n_dof + 1))


def test_the_model_owns_its_training_temperature(double_well, tmp_path):
    """Loaded with a system at another temperature, a generator keeps its training temperature: its
    default samples are those of sample(temperature=T) of the generator bound to the training system."""
    system, data = double_well
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16,), seed=0)
    assert gen.training_temperature == 300.0 and gen.extra == {}
    path = gen.save(tmp_path / "dw.bg", extra={"note": "x"})
    hot = BoltzmannGenerator.load(path, system.with_temperature(600.0))
    assert hot.training_temperature == 300.0 and hot.temperature == 600.0 and hot.extra == {"note": "x"}
    a, b = hot.sample(500, seed=5), gen.sample(500, temperature=600.0, seed=5)
    np.testing.assert_array_equal(a.positions, b.positions)
    np.testing.assert_array_equal(a.log_prob, b.log_prob)
    np.testing.assert_allclose(a.energies, b.energies, rtol=1e-12)
    assert a.provenance["training_temperature"] == 300.0 and a.provenance["temperature"] == 600.0
    # re-saving keeps the metadata; a format-1 file (no stored temperature) takes the system's
    hot.save(tmp_path / "again.bg")
    assert BoltzmannGenerator.load(tmp_path / "again.bg", system).extra == {"note": "x"}
    payload = read_model_file(path)  # the payload inside the checksummed envelope of format 3
    del payload["training_temperature"]
    payload["format_version"] = 1
    torch.save(payload, tmp_path / "v1.bg")
    assert BoltzmannGenerator.load(tmp_path / "v1.bg", system.with_temperature(450.0)).training_temperature == 450.0
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "future.bg")
    with pytest.raises(ValueError, match="newer openmm-bg"):
        BoltzmannGenerator.load(tmp_path / "future.bg", system)


def test_transforms_carry_what_they_do_not_model(alanine, double_well):
    """frame/place: the rigid-body motion (molecules) or the confined components (toy systems)."""
    system, data, gen = alanine
    assert gen.transform.rotation_invariant and gen.stereo is not None
    x, _ = randomize_orientation(torch.tensor(data.xyz[:4], dtype=torch.float64),
                                 generator=torch.Generator().manual_seed(1), center=torch.tensor([1.0, 2.0, 3.0]))
    y, _ = gen.transform.inverse(x)
    body, _ = gen.transform(y)
    assert not torch.allclose(body, x, atol=1e-3)
    torch.testing.assert_close(gen.transform.place(body, gen.transform.frame(x)), x, atol=1e-9, rtol=0)
    dw, dw_data = double_well
    toy = BoltzmannGenerator.build(dw, dw_data, n_blocks=1, hidden=(8,), seed=0)
    assert not toy.transform.rotation_invariant and toy.stereo is None
    x = torch.tensor([[[0.5, -0.2, 0.03]], [[-1.0, 0.4, -0.01]]], dtype=torch.float64)
    y, _ = toy.transform.inverse(x)
    body, _ = toy.transform(y)
    assert (body[..., 2] == 0).all()
    torch.testing.assert_close(toy.transform.place(body, toy.transform.frame(x)), x, atol=1e-12, rtol=0)
