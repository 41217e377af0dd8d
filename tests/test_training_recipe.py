"""The adaptive training recipe: FAB gradient, time-block validation split, early stopping, rare states."""

import json
import math

import numpy as np
import pytest
import torch

from openmm_bg import BoltzmannGenerator
from openmm_bg.sampling import AnnealConfig, ValueAndGrad, anneal
from openmm_bg.training import Stage, Trainer
from openmm_bg.training.fab import ReplayBuffer, fab_loss, fab_target
from openmm_bg.training.validation import (
    EarlyStopping,
    cluster_block_split,
    held_out_nll,
    time_block_split,
    validation_split,
)


# ---------------------------------------------------------------- FAB: gradient of the alpha = 2 divergence
def _log_normal(x, mu, sigma):
    return -0.5 * ((x - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def _log_d2(mu_q, log_s_q, mu_p, s_p):
    """Closed form of log int p^2 / q dx for 1D Gaussians (finite for s_q^2 > s_p^2 / 2)."""
    s_q = torch.exp(log_s_q)
    a = 1 / s_p**2 - 1 / (2 * s_q**2)
    b = 2 * mu_p / s_p**2 - mu_q / s_q**2
    c = -(mu_p**2) / s_p**2 + mu_q**2 / (2 * s_q**2)
    return (torch.log(math.sqrt(2 * math.pi) * s_q) - 2 * math.log(math.sqrt(2 * math.pi) * s_p)
            + 0.5 * torch.log(math.pi / a) + b**2 / (4 * a) + c)


@pytest.mark.parametrize("mu_q, s_q", [(0.5, 1.2), (-0.4, 0.8)])  # s_q^2 = 1.44 and 0.64, both > s_p^2 / 2 = 0.5
def test_fab_gradient_matches_the_analytic_gradient_of_log_d2(mu_q, s_q):
    """AIS from q to p^2/q (q detached) + the FAB surrogate give grad log D_2 (N = 20000 particles).

    p = N(0.2, 1); parameters (mu_q, log sigma_q). Tolerance: 0.02 + 5 % of the exact value per
    component. Measured over four seeds with this schedule (32 levels x 2 MALA steps): largest error
    0.005 (case 1, gradient ~0.32) and 2.6 % (case 2, gradients -4.3 and -14.3, where p^2/q is twice
    as wide as q and the AIS weights keep an ESS of ~30 %); 8 levels x 1 step gave errors up to 23 %
    in case 2.
    """
    mu_p, s_p = 0.2, 1.0
    mu = torch.tensor(mu_q, dtype=torch.float64, requires_grad=True)
    log_s = torch.tensor(math.log(s_q), dtype=torch.float64, requires_grad=True)
    analytic = torch.autograd.grad(_log_d2(mu, log_s, mu_p, s_p), [mu, log_s])

    def log_q(x):  # the base, with the parameters detached (AIS only samples)
        return _log_normal(x[:, 0], mu.detach(), log_s.detach().exp())

    def log_p(x):
        return -0.5 * ((x[:, 0] - mu_p) / s_p) ** 2, (-(x - mu_p) / s_p**2)

    g = torch.Generator().manual_seed(0)
    x0 = mu.detach() + log_s.detach().exp() * torch.randn(20000, 1, generator=g, dtype=torch.float64)
    result = anneal(log_q, fab_target(log_q, ValueAndGrad(log_p)), x0,
                    AnnealConfig(adaptive=False, n_levels=32, mcmc_steps_per_level=2, step_size=0.8,
                                 resample_threshold=0.0, seed=1))
    x = result.positions[:, 0]
    loss = fab_loss(_log_normal(x, mu, log_s.exp()), result.log_weights)
    estimate = torch.autograd.grad(loss, [mu, log_s])
    for est, exact in zip(estimate, analytic):
        assert abs(float(est) - float(exact)) < 0.02 + 0.05 * abs(float(exact)), (float(est), float(exact))
    # mass covering: a q narrower than p is pushed wider (gradient of log sigma negative)
    if s_q < s_p:
        assert float(analytic[1]) < -0.1 and float(estimate[1]) < -0.1


def test_fab_loss_and_buffer_refuse_bad_input():
    with pytest.raises(ValueError, match="every FAB weight is zero"):
        fab_loss(torch.zeros(3), torch.full((3,), -math.inf))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        fab_loss(torch.zeros(2), torch.tensor([0.0, math.nan]))
    with pytest.raises(ValueError, match="replay buffer is empty"):
        ReplayBuffer(4, 1).sample(2, torch.Generator())


def test_buffer_weight_update_turns_old_target_weights_into_new_ones():
    """log w += log q_old - log q_new: the weights become those for the new target p^2 / q_new."""
    buf = ReplayBuffer(capacity=100, n_dof=1)
    x = torch.linspace(-2, 2, 50)[:, None]
    log_p = -0.5 * x[:, 0] ** 2
    log_q_old, log_q_new = -0.5 * (x[:, 0] / 1.5) ** 2, -0.5 * (x[:, 0] / 0.7) ** 2
    buf.add(x, 2 * log_p - log_q_old, log_q_old)  # samples of a uniform "proposal": weight = target
    buf.adjust(torch.arange(50), log_q_new)
    assert torch.allclose(buf.log_weights, (2 * log_p - log_q_new).double(), atol=1e-6)


# ---------------------------------------------------------------- held-out time blocks
def test_time_block_split_holds_out_whole_contiguous_blocks_spread_over_the_run():
    train, held = time_block_split(1000, fraction=0.2, n_blocks=10)
    assert len(held) == 200 and len(train) == 800
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(1000))
    runs = np.split(held, np.flatnonzero(np.diff(held) != 1) + 1)  # contiguous pieces
    assert [len(r) for r in runs] == [100, 100]
    assert all(r[0] % 100 == 0 for r in runs)  # on block boundaries
    assert (held < 500).any() and (held >= 500).any()  # both halves (two merged runs) are held out from
    # uneven lengths: blocks differ by at most one frame, every block held out whole
    train, held = time_block_split(103, fraction=0.3, n_blocks=10)
    assert len(held) in (30, 31, 32) and len(np.intersect1d(train, held)) == 0


def _pieces(indices):
    """Contiguous runs of sorted frame indices."""
    return np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)


def test_time_block_split_with_origins_holds_out_blocks_within_every_start():
    """Three starts of 600, 300 and 40 frames (the last one in a rare basin): each has ~20 % held out in
    contiguous blocks; the old split (one run) held out nothing of the last start."""
    origins = np.repeat([0, 1, 2], [600, 300, 40])
    train, held = time_block_split(len(origins), groups=origins)
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(len(origins)))
    for k in range(3):
        share = np.isin(np.flatnonzero(origins == k), held).mean()
        assert 0.15 <= share <= 0.25, (k, share)
    # no held-out block straddles two starts, and blocks are long (>= 8 frames) and contiguous
    assert all(len(np.unique(origins[piece])) == 1 and len(piece) >= 8 for piece in _pieces(held))
    assert not np.isin(np.arange(900, 940), time_block_split(len(origins))[1]).any()  # the old split
    # groups=None and one group are the same split (evenly spread blocks)
    one = time_block_split(1000, groups=np.zeros(1000, dtype=int))
    assert all(np.array_equal(a, b) for a, b in zip(one, time_block_split(1000), strict=True))
    with pytest.raises(ValueError, match="groups must be a 1D array of integer labels, one per frame \\(10\\)"):
        time_block_split(10, n_blocks=2, groups=np.zeros(9, dtype=int))
    with pytest.raises(ValueError, match="groups must hold integer labels"):
        time_block_split(10, n_blocks=2, groups=np.zeros(10))


def test_cluster_block_split_gives_a_rare_stretch_its_share_and_keeps_mixed_clusters_in_long_blocks():
    rng = np.random.default_rng(0)
    labels = np.concatenate([rng.integers(0, 2, 960), np.full(40, 2)])  # two mixed clusters, a rare stretch
    train, held = cluster_block_split(labels)
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(1000))
    for k in range(3):
        share = np.isin(np.flatnonzero(labels == k), held).mean()
        assert 0.15 <= share <= 0.25, (k, share)
    pieces = _pieces(held)
    assert sorted(len(p) for p in pieces if p[0] < 960) == [40] * 5  # the first split's blocks, untouched
    assert all(len(p) >= 4 for p in pieces)
    # a cluster that one evenly spread block would swallow whole keeps most of its frames for training
    labels = np.zeros(1000, dtype=int)
    labels[880:920] = 1  # exactly the held-out block 22 of 25
    train, held = cluster_block_split(labels)
    assert 0.15 <= np.isin(np.arange(880, 920), held).mean() <= 0.25
    with pytest.raises(ValueError, match="min_share must lie in \\[0, 1\\)"):
        cluster_block_split(labels, min_share=1.0)


def test_validation_split_uses_origins_then_clusters_then_plain_blocks(dw, dw_data):
    from openmm_bg.systems.toy import rare_banana, rare_banana_samples

    system, data = rare_banana(), rare_banana_samples(1000, rare_fraction=0.04, seed=0)
    rare = np.asarray(system.states["rare"](data))
    by_cluster = validation_split(system, data)
    assert by_cluster.method == "clusters"
    assert 4 <= rare[by_cluster.held_out].sum() <= 12  # 8 of the 40 rare frames
    assert rare[time_block_split(1000)[1]].sum() == 0  # evenly spread blocks (the old split) miss them all
    by_origin = validation_split(system, data, origins=np.repeat([0, 1], [960, 40]))
    assert by_origin.method == "origins" and "within each of 2 MD starts" in by_origin.describe()
    assert rare[by_origin.held_out].sum() == 8
    one_start = validation_split(system, data, origins=np.zeros(1000, dtype=int))
    assert one_start.method == "clusters"  # one start says nothing: clusters
    plain = validation_split(dw, dw_data.xyz[:200] * 0 + dw_data.xyz[:1])  # one configuration: one cluster
    assert plain.method == "time blocks" and len(plain.held_out) == 40
    assert by_cluster.digest != by_origin.digest and len(by_cluster.digest) == 16
    groups = by_cluster.held_out_groups  # each held-out frame's cluster, for early stopping by cluster
    assert len(groups) == len(by_cluster.held_out) and len(np.unique(groups[rare[by_cluster.held_out]])) == 1
    assert (by_origin.held_out_groups == (by_origin.held_out >= 960)).all() and plain.held_out_groups is None


def test_trainer_reads_the_origins_beside_its_data_file(tmp_path, dw, dw_data, dw_gen):
    from openmm_bg.md.multistart import origins_path

    data = tmp_path / "md.h5"
    dw_data.save(str(data))
    origins_path(data).write_text(json.dumps({"format": "openmm-bg multi-start 1", "n_frames": 300, "starts": [
        {"index": 0, "first_frame": 0, "n_frames": 250}, {"index": 1, "first_frame": 250, "n_frames": 50}]}))
    stages = [Stage("ml", steps=1, batch_size=16, patience=2)]
    trainer = Trainer(dw_gen, str(data), stages, progress=False)
    assert trainer.split.method == "origins" and trainer.split.n_groups == 2
    assert np.isin(np.arange(250, 300), trainer.split.held_out).sum() == 10
    given = Trainer(dw_gen, dw_data, stages, progress=False, origins=np.repeat([0, 1], [250, 50]))
    assert np.array_equal(given.split.held_out, trainer.split.held_out)
    assert trainer.run_record()["validation split"].startswith("origins ")


@pytest.mark.parametrize("kwargs, message", [
    ({"fraction": 0.0}, "must lie in \\(0, 1\\)"),
    ({"fraction": 1.0}, "must lie in \\(0, 1\\)"),
    ({"n_blocks": 1}, "n_blocks must be >= 2"),
    ({"n_blocks": 20}, "cannot be cut into n_blocks=20"),
])
def test_time_block_split_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        time_block_split(10, **kwargs)


def test_trainer_holds_out_time_blocks_only_when_asked(dw, dw_data, dw_gen):
    classic = Trainer(dw_gen, dw_data, [Stage("ml", steps=1, batch_size=16)], progress=False)
    assert classic.validation == 0.0 and len(classic.v_data) == 300 and len(classic.v_val) == 0
    stages = [Stage("ml", steps=1, batch_size=16, patience=2)]
    held = Trainer(dw_gen, dw_data, stages, progress=False)
    assert held.validation == 0.2 and len(held.v_data) == 240 and len(held.v_val) == 60
    assert held.run_record()["recipe"] == "classic" and held.run_record()["validation"] == 0.2
    with pytest.raises(ValueError, match="validation=0 but a stage needs held-out data"):
        Trainer(dw_gen, dw_data, stages, validation=0.0, progress=False)
    with pytest.raises(ValueError, match="recipe must be one of 'classic', 'adaptive'"):
        Trainer(dw_gen, dw_data, recipe="fab", progress=False)
    with pytest.raises(ValueError, match="ml_auto=True needs a starting ML weight"):
        Stage("x", steps=1, ml=0.0, fab=1.0, ml_auto=True)


# ---------------------------------------------------------------- early stopping
def test_early_stopping_counts_checks_without_improvement():
    stop = EarlyStopping(patience=3, min_delta=0.1)
    decisions = [stop.update(v, s) for s, v in enumerate([3.0, 2.0, 1.95, 1.92, 1.99])]
    assert decisions == [False, False, False, False, True]  # 1.95 and 1.92 improve by < 0.1
    assert (stop.best, stop.best_step) == (2.0, 1)


def test_early_stopping_by_groups_keeps_the_check_where_a_rare_group_gained_and_stops_on_real_overfitting():
    rng = np.random.default_rng(0)
    groups = np.repeat([0, 1], [200, 8])  # a main cluster and a rare one (8 held-out frames)
    base = np.concatenate([rng.normal(2.0, 1.0, 200), rng.normal(9.0, 1.0, 8)])
    by_total, by_group = EarlyStopping(patience=2), EarlyStopping(patience=2, groups=groups)
    # check 1: main a little worse (overfitting), rare 1 nat better; total lower at check 0
    later = base + np.where(groups == 0, 0.08, -1.0) + rng.normal(0, 0.01, 208)
    for stop in (by_total, by_group):
        stop.update(float(base.mean()), 0, frames=base if stop is by_group else None)
        stop.update(float(later.mean()), 1, frames=later if stop is by_group else None)
    assert later.mean() > base.mean() and by_total.best_step == 0  # the total picks the check before the gain
    assert by_group.best_step == 1 and by_group.best == pytest.approx(later.mean())
    # from here on every group gets worse: those checks count, and the stage stops
    worse = [later + 0.3 * (j + 1) + rng.normal(0, 0.01, 208) for j in range(2)]
    assert [by_group.update(float(w.mean()), 2 + j, frames=w) for j, w in enumerate(worse)] == [False, True]
    assert by_group.best_step == 1
    # one group only (or none with enough frames): the plain rule on the total
    plain = EarlyStopping(patience=2, groups=np.zeros(208, dtype=int))
    plain.update(float(base.mean()), 0, frames=base)
    plain.update(float(later.mean()), 1, frames=later)
    assert plain.best_step == 0
    state = by_group.state_dict()
    resumed = EarlyStopping(patience=2, groups=groups)
    resumed.load_state_dict(state)
    assert (resumed.best_step, resumed.bad_checks, len(resumed.state_dict()["checks"])) == (1, 2, 4)
    with pytest.raises(ValueError, match="needs frames, the NLL of each of the 208 held-out frames"):
        by_group.update(1.0, 5)


def test_ml_stage_stops_early_when_the_held_out_nll_rises_and_keeps_the_best_weights(dw):
    """Few frames, a large flow, a high learning rate: the ML stage overfits and stops early."""
    import openmm_bg

    data = openmm_bg.simulate(dw, n_frames=60, stride=20, seed=3, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(dw, data, n_blocks=4, hidden=(64, 64), seed=0)
    stage = Stage("ml", steps=1000, lr=1e-2, batch_size=48, patience=3, validate_every=10)
    trainer = Trainer(gen, data, [stage], validation=0.3, progress=False)
    history = trainer.fit()
    checks = [row for row in history if "val_nll" in row]
    assert len(history) < 1000 and history[-1].get("early_stop") == 1
    best = min(row["val_nll"] for row in checks)
    assert history[-1]["val_nll"] > best  # it stopped because the held-out NLL rose
    assert held_out_nll(gen.flow, trainer.v_val)[0] == pytest.approx(best, abs=1e-9)  # best weights restored
    assert gen.extra["training"]["stage_steps"] == {"ml": len(history)}


# ---------------------------------------------------------------- a rare state: adaptive keeps it, classic drops it
def _quadrature_share(system) -> float:
    """The rare state's Boltzmann population by quadrature on a fine grid."""
    from openmm_bg.systems.toy import rare_banana_energy

    x, y = np.linspace(-6, 5, 1101), np.linspace(-4, 4, 801)
    grid = np.stack([*np.meshgrid(x, y, indexing="ij"), np.zeros((1101, 801))], -1).reshape(-1, 1, 3)
    p = np.exp(-rare_banana_energy(torch.as_tensor(grid)).numpy())
    return float(p[system.states["rare"](grid)].sum() / p.sum())


def _rare_state(gen, system, n=20000, with_error=False):
    """Reweighted population of the rare state and the effective samples inside it (and the population's
    standard error, delta method for the self-normalised estimate, with ``with_error``)."""
    samples = gen.sample(n, seed=1)
    log_w = np.asarray(samples.log_weights)
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    w[~np.isfinite(w)] = 0.0
    rare = system.states["rare"](np.nan_to_num(samples.positions))
    ess = w[rare].sum() ** 2 / max(float((w[rare] ** 2).sum()), 1e-300)
    population = w[rare].sum() / w.sum()
    if not with_error:
        return population, ess
    return population, ess, float(np.sqrt((w**2 * (rare - population) ** 2).sum()) / w.sum())


@pytest.fixture(scope="module")
def banana():
    from openmm_bg.systems.toy import rare_banana, rare_banana_samples

    system = rare_banana()
    data = rare_banana_samples(1000, rare_fraction=0.2, seed=0)  # two "runs": main well, then the rare one
    return system, data, _quadrature_share(system)


def _trained(system, data, **trainer_options):
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16, 16), seed=0)
    Trainer(gen, data, progress=False, **trainer_options).fit()
    return gen


def test_cli_train_runs_and_records_the_adaptive_recipe(tmp_path, capsys):
    from openmm_bg.apps.cli import main
    from openmm_bg.model.fileformat import read_model_file

    data, model = tmp_path / "md.h5", tmp_path / "model.bg"
    assert main(["simulate", "double_well", "-n", "200", "--stride", "20", "--friction", "10", "-o", str(data)]) == 0
    assert main(["train", "double_well", "--data", str(data), "--recipe", "adaptive", "--steps-scale", "0.02",
                 "--n-blocks", "2", "--hidden", "16", "-o", str(model)]) == 0
    assert "recipe adaptive" in capsys.readouterr().out
    training = read_model_file(model)["extra"]["training"]
    assert training["recipe"] == "adaptive" and training["validation"] == 0.2
    assert set(training["stage_steps"]) == {"ml", "fab"}
    metrics = (tmp_path / "model_training.csv").read_text()
    assert "val_nll" in metrics.splitlines()[0] and "fab" in metrics.splitlines()[0]


def test_rare_banana_quadrature_share_is_four_percent(banana):
    system, data, share = banana
    assert share == pytest.approx(0.04, abs=5e-4)
    assert system.states["rare"](data).mean() == pytest.approx(0.2, abs=0.01)  # the data over-represent it


@pytest.mark.slow
def test_adaptive_recipe_keeps_the_rare_state(banana):
    """Full adaptive recipe (ML <= 1000 steps with early stopping, 500 FAB steps) on data holding the rare
    state at 20 %: its reweighted population within 20 % (relative) of quadrature, >= 50 effective samples.

    Measured (seed 0, 2 x 16 flow): population 0.0406 (quadrature 0.0400), 664 effective samples
    in the rare state, 1500 steps, 44k energy evaluations (with the ML learning rate decaying to
    5e-5 and early stopping on any non-improving check: 0.0432, 90, 48k). The classic default (4500
    steps, 768k energy evaluations) keeps this rare
    state too (0.0367, 158 effective samples; with a 4 x 32 flow 0.0398, 646), so on this toy the
    test cannot show the classic recipe dropping it. With the rare state at only 4 % of the data
    see `test_adaptive_recipe_keeps_a_rare_state_of_four_percent_of_the_data`.
    """
    system, data, share = banana
    gen = _trained(system, data, recipe="adaptive")
    population, ess = _rare_state(gen, system)
    assert abs(population / share - 1) < 0.2 and ess >= 50, (population, ess)


@pytest.mark.slow
def test_adaptive_recipe_keeps_a_rare_state_of_four_percent_of_the_data(banana):
    """The rare state at 4 % of the frames (its Boltzmann share), all in the last stretch of the data:
    population within 2 standard errors of quadrature (and 20 % relative), >= 30 effective samples.

    Measured (seed 0, 2 x 16 flow; 2026-12-02): population 0.0438 (quadrature 0.0400), 99 effective
    samples, 1000 ML + 500 FAB steps, 51k energy evaluations. It used to lose the state (0.0016, 2.3
    effective samples): the held-out NLL stands still for ~500 ML steps before the flow finds the
    rare well, early stopping ended ML at 225 steps, and even 1000 ML steps with the learning rate
    decaying to 5e-5 barely reached the well (rare frames' NLL 8.2, constant rate 6.5), which FAB,
    whose annealing starts from q, then could not hold. Now early stopping counts only checks
    where the flow overfits (`EarlyStopping` with the training NLL) and the ML rate is constant.
    Seed 1 passes too (0.0375 +- 0.0048, 56); seed 2 does not (0.0006, 1.0 effective samples: the
    main well overfits while the rare one is still being learned; ``benchmarks/README.md``).
    """
    from openmm_bg.systems.toy import rare_banana_samples

    system, _, share = banana
    data = rare_banana_samples(1000, rare_fraction=0.04, seed=0)
    gen = _trained(system, data, recipe="adaptive")
    population, ess, error = _rare_state(gen, system, with_error=True)
    assert abs(population - share) < 2 * error and abs(population / share - 1) < 0.2, (population, error)
    assert ess >= 30, ess


@pytest.mark.slow
def test_judging_checks_by_cluster_keeps_the_rare_state_where_the_total_held_out_nll_loses_it(banana):
    """Seed 2 at a 4 % data share, where the main well overfits while the rare one is still being
    learned: restoring the best check by the total held-out NLL lost the rare state (0.0006, 1.0
    effective samples); judged by cluster (`Trainer.by_group`) it is kept. Measured: 0.0356 +- 0.0064,
    29.2 effective samples, 52,736 energy evaluations (``benchmarks/README.md``)."""
    from openmm_bg.systems.toy import rare_banana_samples

    class ByGroup(Trainer):
        by_group = True

    system, _, share = banana
    data = rare_banana_samples(1000, rare_fraction=0.04, seed=2)
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16, 16), seed=2)
    trainer = ByGroup(gen, data, progress=False, recipe="adaptive")
    trainer.fit()
    assert trainer.run_record()["by group"] is True
    population, ess, error = _rare_state(gen, system, with_error=True)
    assert abs(population - share) < 2 * error and abs(population / share - 1) < 0.2, (population, error)
    assert ess >= 20, ess


def test_adaptive_ml_stage_runs_through_the_plateau_before_a_rare_state_of_four_percent(banana):
    """CI-sized part of the above: the adaptive ML stage alone on the 4 % data does not stop on the
    held-out NLL's plateau and ends with the flow in the rare well (held-out rare frames' NLL < 7.5
    nats; 8.8 at the start, 6.5 measured at the end; the old criterion stopped at 225 steps)."""
    from openmm_bg.systems.toy import rare_banana_samples

    system, _, _ = banana
    data = rare_banana_samples(1000, rare_fraction=0.04, seed=0)
    gen = BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16, 16), seed=0)
    trainer = Trainer(gen, data, progress=False, recipe="adaptive")
    trainer.stages, trainer._stage_steps = trainer.stages[:1], trainer._stage_steps[:1]
    rare = torch.as_tensor(np.asarray(system.states["rare"](data))[trainer.split.held_out])
    start = held_out_nll(gen.flow, trainer.v_val[rare])[0]
    history = trainer.fit()
    assert len(history) == trainer.stages[0].steps and not any(row.get("early_stop") for row in history)
    end = held_out_nll(gen.flow, trainer.v_val[rare])[0]
    assert start > 8.0 and end < 7.5, (start, end)


def test_adaptive_recipe_keeps_the_rare_state_fast_variant(banana):
    """The same at 0.4 x the step counts (400 ML steps, 200 FAB steps).

    Measured (seed 0): population 0.0412 (quadrature 0.0400), 308 effective samples in the rare state,
    23k energy evaluations (before early stopping counted only overfitting checks and the ML rate
    was constant: ML stopped after 230 steps, 0.0391, 117, 26k).
    """
    from openmm_bg.training.stages import adaptive_stages

    system, data, share = banana
    stages = adaptive_stages(2, len(time_block_split(len(data))[0]), scale=0.4)
    gen = _trained(system, data, stages=stages, recipe="adaptive")
    population, ess = _rare_state(gen, system)
    assert abs(population / share - 1) < 0.2 and ess >= 50, (population, ess)


# ---------------------------------------------------------------- a killed adaptive run resumes exactly
class _Killed(Exception):
    pass


def _adaptive_run(dw, data, checkpoint, kill_at=None):
    """ML with early stopping, then FAB with the ML weight set from held-out data (float64, small)."""
    gen = BoltzmannGenerator.build(dw, data, n_blocks=2, hidden=(16,), seed=0, dtype=torch.float64)
    stages = [Stage("ml", steps=40, lr=5e-3, batch_size=32, patience=2, validate_every=4),
              Stage("fab", steps=14, ml=0.1, fab=1.0, lr=1e-3, batch_size=32, kl_batch_size=32, fab_levels=2,
                    clip_grad=10.0, ml_auto=True, validate_every=3)]

    class Trainer_(Trainer):
        def _step(self, k, stage, i):
            if kill_at is not None and self.step == kill_at:
                raise _Killed(self.step)
            return super()._step(k, stage, i)

    trainer = Trainer_(gen, data, stages, seed=3, checkpoint=checkpoint, checkpoint_every=5, progress=False,
                       recipe="adaptive")
    return gen, trainer


def _without_time(history):
    """The metrics without wall times, NaN written as "nan" (NaN != NaN)."""
    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k != "time"}
            for row in history]


def test_a_killed_adaptive_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(dw, dw_data, tmp_path):
    """Killed twice (in the ML stage between checkpoints, and in the FAB stage between buffer refreshes), resumed
    each time: the weights, metrics, stage lengths (early stopping), ML weight, replay buffer and energy
    evaluations equal those of a run that was never stopped (float64, bit for bit)."""
    gen_a, whole = _adaptive_run(dw, dw_data, tmp_path / "whole.ckpt")
    history = whole.fit()
    assert whole.stage_steps[0] < 40 and any("fab" in row for row in history)  # ML stopped early, FAB ran
    assert len({row["w_ml"] for row in history if "w_ml" in row}) > 1  # held-out checks moved the ML weight
    first_fab = whole.stage_steps[0]
    ckpt = tmp_path / "killed.ckpt"
    for kill_at in (7, first_fab + 6):
        _, trainer = _adaptive_run(dw, dw_data, ckpt, kill_at=kill_at)
        with pytest.raises(_Killed):
            trainer.fit(resume=True)
    gen_b, resumed = _adaptive_run(dw, dw_data, ckpt)
    history_b = resumed.fit(resume=True)
    assert _without_time(history_b) == _without_time(history)
    assert resumed.stage_steps == whole.stage_steps and resumed.energy_evaluations == whole.energy_evaluations
    assert resumed._ml_weight == whole._ml_weight
    assert torch.equal(resumed._buffer.log_weights, whole._buffer.log_weights)
    for (name, a), b in zip(gen_a.flow.state_dict().items(), gen_b.flow.state_dict().values(), strict=True):
        assert (a.dtype == torch.float64 or not a.is_floating_point()) and torch.equal(a, b), name
    np.testing.assert_array_equal(gen_a.sample(50, seed=1).log_weights, gen_b.sample(50, seed=1).log_weights)
