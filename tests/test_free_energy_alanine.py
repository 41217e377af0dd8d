"""Alanine dipeptide, vacuum vs implicit solvent (OBC1) at 300 K: the free-energy difference with a
Boltzmann Generator as the normalised reference state agrees with BAR on plain MD of both states
(slow: several minutes on 2 busy cores).

A 60-dof generator trained for ~2 minutes here has heavy-tailed weights (ESS ~0.1 %): estimates from
the generator alone (importance sampling, or BAR generator <-> each state) are then flagged
unreliable rather than asserted; MBAR over the generator and the MD of both states must agree with
direct BAR."""

import math

import numpy as np
import pytest

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.analysis.free_energy import thermodynamic_free_energy
from openmm_bg.systems import load
from openmm_bg.training import Stage, Trainer


@pytest.mark.slow
def test_vacuum_to_implicit_solvent_bg_agrees_with_md_bar():
    vacuum = load("alanine_dipeptide")
    implicit = load("alanine_dipeptide", solvent="implicit")
    md_vacuum = openmm_bg.simulate(vacuum, n_frames=1000, stride=250, seed=0, equilibration_steps=5000,
                                   progress=False)
    md_implicit = openmm_bg.simulate(implicit, n_frames=300, stride=200, seed=1, equilibration_steps=2000,
                                     progress=False)
    gen = BoltzmannGenerator.build(vacuum, md_vacuum, n_blocks=4, hidden=(64, 64), seed=0)
    Trainer(gen, md_vacuum, [Stage("ml", 300, batch_size=256),
                             Stage("ml+kl", 250, kl=0.3, kl_end=1.0, lr=5e-4, batch_size=128,
                                   kl_batch_size=128)], seed=0, progress=False).fit()
    samples = gen.sample(4000, seed=1)
    # the generator as the normalised reference between the states: BAR generator <-> vacuum and
    # generator <-> implicit (with the MD of each), Delta f = f_implicit - f_vacuum
    bg = thermodynamic_free_energy(vacuum, implicit, samples=samples, generators=gen, md_a=md_vacuum,
                                   md_b=md_implicit, method="bar")
    # plain MD of both states, directly: BAR vacuum <-> implicit (no generator involved)
    md = thermodynamic_free_energy(vacuum, implicit, md_a=md_vacuum, md_b=md_implicit)
    # everything in one MBAR
    both = thermodynamic_free_energy(vacuum, implicit, samples=samples, generators=gen, md_a=md_vacuum,
                                     md_b=md_implicit)
    # the generator alone (importance sampling to each state): a briefly trained 60-dof generator
    # has heavy-tailed weights, which the result must say
    alone = thermodynamic_free_energy(vacuum, implicit, samples=samples, warn=False)
    print(f"\nBG (BAR via generator): {bg}\nMD (BAR): {md}\nBG + MD (MBAR): {both}\nBG alone: {alone}")
    assert bg.method == "bar" and md.method == "bar" and both.method == "mbar"
    # solvation stabilises the peptide by tens of kT; same temperature: kJ/mol = kT * reduced
    assert md.delta_f < -10 and md.delta_a_kJ_mol == pytest.approx(md.delta_f * vacuum.kT)
    assert 0 < md.error_f < 0.5 and 0 < both.error_f < 0.5
    # generator + MD of both states in one MBAR agrees with direct BAR on the MD
    assert abs(both.delta_f - md.delta_f) < 4 * math.hypot(both.error_f, md.error_f)
    assert np.isfinite(both.delta_a_kJ_mol)  # absolute f from the normalised generator
    # estimates that lean on the generator alone must either agree or say they are unreliable
    for result in (bg, alone):
        if result.reliable:
            assert abs(result.delta_f - md.delta_f) < 4 * math.hypot(result.error_f, md.error_f), str(result)
        else:
            assert "UNRELIABLE" in str(result)
