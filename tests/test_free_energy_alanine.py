"""Alanine dipeptide, vacuum vs implicit solvent (OBC1) at 300 K: the free-energy difference from a
Boltzmann Generator agrees with BAR on plain MD of both states (slow: a few minutes)."""

import math

import numpy as np
import pytest

import openmm_bg
from openmm_bg import BoltzmannGenerator
from openmm_bg.free_energy import thermodynamic_free_energy
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
    # BG alone: the generator is the normalised reference for both states (MBAR = EXP here)
    bg = thermodynamic_free_energy(vacuum, implicit, samples=samples)
    # plain MD of both states: BAR
    md = thermodynamic_free_energy(vacuum, implicit, md_a=md_vacuum, md_b=md_implicit)
    # everything in one MBAR
    both = thermodynamic_free_energy(vacuum, implicit, samples=samples, generators=gen, md_a=md_vacuum,
                                     md_b=md_implicit)
    print(f"\nBG: {bg}\nMD: {md}\nBG + MD: {both}")
    assert bg.method == "mbar" and md.method == "bar" and both.method == "mbar"
    # solvation stabilises the peptide by tens of kT; same temperature: kJ/mol = kT * reduced
    assert md.delta_f < -10 and md.delta_a_kJ_mol == pytest.approx(md.delta_f * vacuum.kT)
    assert 0 < md.error_f < 0.5 and 0 < bg.error_f < 1.0
    combined = math.hypot(bg.error_f, md.error_f)
    assert abs(bg.delta_f - md.delta_f) < 4 * combined, (bg.delta_f, md.delta_f, combined)
    assert abs(both.delta_f - md.delta_f) < 4 * math.hypot(both.error_f, md.error_f)
    assert np.isfinite(bg.delta_a_kJ_mol)  # absolute f from the normalised generator
