"""Training machinery: skipped steps, RC loss, stage files, checkpoints and kill-and-resume."""

import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.systems import ReactionCoordinate, load
from openmm_bg.training import Stage, Trainer, load_stages, rc_loss


def test_nonfinite_steps_are_skipped_not_applied(dw_gen, dw_data):
    gen, data = dw_gen, dw_data
    # an absurd learning rate: the first step ruins the flow, later losses are not finite
    history = Trainer(gen, data, [Stage("bad", 5, lr=1e30, kl=1.0, energy_max=math.inf)], progress=False).fit()
    assert history[-1]["n_skipped"] >= 1
    assert all(torch.isfinite(p).all() for p in gen.flow.parameters())


def test_rc_loss_prefers_spread_samples():
    rc = ReactionCoordinate("x", lambda x: x[..., 0, 0], periodic=True, bounds=(-math.pi, math.pi))
    g = torch.Generator().manual_seed(0)
    spread = torch.zeros(400, 1, 3)
    spread[:, 0, 0] = torch.rand(400, generator=g) * 2 * math.pi - math.pi
    narrow = torch.zeros(400, 1, 3)
    narrow[:, 0, 0] = 0.1 * torch.randn(400, generator=g)
    ok = torch.ones(400, dtype=torch.bool)
    assert rc_loss(spread, ok, rc) < rc_loss(narrow, ok, rc)
    # uniform on the circle: the KDE density is ~1 / (2 pi)
    assert float(rc_loss(spread, ok, rc)) == pytest.approx(-math.log(2 * math.pi), abs=0.15)


def test_rc_stage_needs_a_coordinate(dw_gen, dw_data):
    gen, data = dw_gen, dw_data
    with pytest.raises(ValueError, match="no reaction coordinate"):
        Trainer(gen, data, [Stage("rc", 5, rc=1.0)])
    with pytest.raises(KeyError, match="no reaction coordinate 'phi'"):
        Trainer(gen, data, [Stage("rc", 5, rc=1.0)], rc="phi")
    history = Trainer(gen, data, [Stage("rc", 3, rc=0.5, kl=0.1)], rc="x1", progress=False).fit()
    assert np.isfinite(history[-1]["rc"])


def test_cosine_learning_rate_reaches_the_optimiser(dw_gen, dw_data):
    gen, data = dw_gen, dw_data
    stage = Stage("ml", 5, lr=1e-3, lr_end=1e-5)
    assert [stage.learning_rate(i) for i in (0, 2, 4)] == pytest.approx([1e-3, 0.5 * (1e-3 + 1e-5), 1e-5])
    assert Stage("ml", 5, lr=1e-3).learning_rate(4) == 1e-3
    trainer = Trainer(gen, data, [stage], progress=False)
    history = trainer.fit()
    assert [row["lr"] for row in history] == pytest.approx([stage.learning_rate(i) for i in range(5)])
    assert trainer._optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)


def test_load_stages_from_toml(tmp_path):
    path = tmp_path / "stages.toml"
    path.write_text('[[stage]]\nname = "ml"\nsteps = 10\n\n[[stage]]\nsteps = 20\nkl = 0.01\nkl_end = 0.1\n')
    stages = load_stages(path)
    assert [s.steps for s in stages] == [10, 20] and stages[1].name == "stage2"
    assert stages[1].kl_weight(19) == pytest.approx(0.1)
    path.write_text('[[stage]]\nsteps = 10\nlearning_rate = 1\n')
    with pytest.raises(ValueError, match="unknown keys \\['learning_rate'\\]"):
        load_stages(path)


RESUME_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    import openmm_bg
    from openmm_bg.systems import load
    from openmm_bg.training import Stage, Trainer
    system = load("double_well")
    data = openmm_bg.simulate(system, n_frames=300, stride=10, seed=0, platform="Reference", progress=False)
    gen = openmm_bg.BoltzmannGenerator.build(system, data, n_blocks=2, hidden=(16,), seed=0)
    stages = [Stage("ml", 40, batch_size=64), Stage("kl", 40, kl=0.5, kl_batch_size=64)]
    trainer = Trainer(gen, data, stages, seed=5, checkpoint=sys.argv[1], checkpoint_every=5,
                      metrics=sys.argv[2], progress=False)
    trainer.fit(resume=True)
    torch.save(gen.flow.state_dict(), sys.argv[3])
""")


def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT)
    ckpt, metrics = tmp_path / "run.ckpt", tmp_path / "metrics.csv"

    def run(out, kill_after_checkpoint=False):
        proc = subprocess.Popen([sys.executable, str(script), str(ckpt), str(metrics), str(out)])
        if kill_after_checkpoint:
            deadline = time.time() + 120
            while time.time() < deadline and proc.poll() is None:
                if ckpt.exists() and torch.load(ckpt, weights_only=False)["step"] >= 45:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.05)
        assert proc.wait(timeout=300) in (0, -signal.SIGKILL)

    run(tmp_path / "killed.pt", kill_after_checkpoint=True)
    assert not (tmp_path / "killed.pt").exists(), "the run finished before it could be killed"
    step_at_kill = torch.load(ckpt, weights_only=False)["step"]
    assert 45 <= step_at_kill < 80
    run(tmp_path / "resumed.pt")
    resumed = torch.load(tmp_path / "resumed.pt")
    ckpt.unlink()
    run(tmp_path / "straight.pt")
    straight = torch.load(tmp_path / "straight.pt")
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)
    lines = metrics.read_text().splitlines()
    assert len(lines) == 81  # header + one row per step, no duplicates from the resumed part


def test_corrupt_checkpoint_is_a_clear_error(dw_gen, dw_data, tmp_path):
    gen, data = dw_gen, dw_data
    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(b"not a checkpoint")
    trainer = Trainer(gen, data, [Stage("ml", 2)], checkpoint=ckpt, progress=False)
    with pytest.raises(ValueError, match="not a readable openmm-bg training checkpoint"):
        trainer.fit(resume=True)


def test_rc_loss_of_a_step_sees_only_valid_proposals():
    """Out-of-domain proposals hold a finite placeholder (the mean structure): the RC term of a training
    step must leave them out (selected by Proposal.ok, not by finite positions)."""
    ala = load("alanine_dipeptide")
    data = openmm_bg.simulate(ala, n_frames=100, stride=20, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(ala, data, n_blocks=2, hidden=(16,), seed=0)
    hot = 30000.0  # a prior 10x wider: about half of the proposals leave the angles' domain
    trainer = Trainer(gen, data, [Stage("rc", 1, ml=0.0, rc=1.0, temperature=hot, batch_size=256)], seed=3,
                      rc="phi", progress=False)
    with torch.no_grad():
        p = gen.propose(z=gen.sample_latent(256, torch.Generator().manual_seed(3), hot), temperature=hot)
    n_bad = int((~p.ok).sum())
    assert 20 < n_bad < 236 and bool(torch.isfinite(p.x).all())
    phi = ala.reaction_coordinates["phi"]
    expected = float(rc_loss(p.x, p.ok, phi))
    with_placeholders = float(rc_loss(p.x, torch.ones_like(p.ok), phi))
    assert abs(expected - with_placeholders) > 0.1
    row = trainer.fit()[0]
    assert row["out_of_domain"] == n_bad
    assert row["rc"] == pytest.approx(expected, abs=1e-9)


def test_kl_loss_returns_the_proposal_and_ignores_invalid_rows():
    """kl_loss evaluates energies of valid rows only; invalid rows carry no gradient and the loss of a
    batch with invalid rows is finite and differentiable."""
    from openmm_bg.training import kl_loss

    ala = load("alanine_dipeptide")
    data = openmm_bg.simulate(ala, n_frames=100, stride=20, seed=0, platform="Reference", progress=False)
    gen = BoltzmannGenerator.build(ala, data, n_blocks=2, hidden=(16,), seed=0)
    z = gen.sample_latent(128, torch.Generator().manual_seed(0), 30000.0)
    loss, p, info = kl_loss(gen, z, 30000.0, 0.0, 1e3, 1e9, 10.0)
    assert info["out_of_domain"] == int((~p.ok).sum()) > 0
    assert bool(torch.isfinite(p.x).all()) and bool(torch.isfinite(loss))
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in gen.flow.parameters() if q.grad is not None)
