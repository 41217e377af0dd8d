"""Argument checks before any work: one ValueError naming the argument and its allowed range."""

import math
import re

import numpy as np
import pytest

import openmm_bg
from openmm_bg import _validation as check
from openmm_bg.systems import load
from openmm_bg.systems.trajectory import check_trajectory


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, -math.inf, True, "1", None])
def test_positive_refuses(bad):
    with pytest.raises(ValueError, match=r"^timestep must be positive and finite \(ps\), got"):
        check.positive("timestep", bad, "ps")


def test_helpers_convert_and_accept_their_range():
    assert check.positive("x", np.float32(0.5)) == 0.5
    assert check.non_negative("friction", 0) == 0.0 and isinstance(check.non_negative("f", 1), float)
    assert check.positive_int("n", np.int64(3)) == 3 and check.positive_int("n", 1e4) == 10000
    assert check.non_negative_int("seed", 0) == 0
    assert check.integer("k", -4) == -4
    import openmm.unit as unit

    assert check.temperature_kelvin("temperature", 310 * unit.kelvin) == 310.0
    for bad, fn in [(-1e-9, check.non_negative), (math.nan, check.non_negative), (0, check.positive_int),
                    (2.5, check.positive_int), (-1, check.non_negative_int), (math.inf, check.integer),
                    (False, check.integer)]:
        with pytest.raises(ValueError, match="^arg must be"):
            fn("arg", bad)
    for bad in [0, -5, math.nan, math.inf, 3 * unit.nanometer]:
        with pytest.raises(ValueError, match="^temperature must be a .*temperature in K"):
            check.temperature_kelvin("temperature", bad)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_frames": 0}, r"n_frames must be an integer >= 1, got 0"),
    ({"n_frames": 2.5}, r"n_frames must be an integer >= 1"),
    ({"stride": -3}, r"stride must be an integer >= 1, got -3"),
    ({"timestep": 0.0}, r"timestep must be positive and finite \(ps\), got 0.0"),
    ({"timestep": math.nan}, r"timestep must be positive and finite \(ps\)"),
    ({"friction": -1.0}, r"friction must be >= 0 and finite \(1/ps\), got -1.0"),
    ({"friction": math.inf}, r"friction must be >= 0 and finite"),
    ({"temperature": 0}, r"temperature must be a positive, finite temperature in K, got 0"),
    ({"temperature": -300.0}, r"temperature must be a positive"),
    ({"temperature": math.nan}, r"temperature must be a positive"),
    ({"temperature": math.inf}, r"temperature must be a positive"),
    ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
    ({"seed": 1.5}, r"seed must be an integer >= 0"),
    ({"equilibration_steps": -10}, r"equilibration_steps must be an integer >= 0"),
    ({"platform": "NoSuchPlatform"}, r"platform must be one of the OpenMM platforms.*'Reference'"),
    ({"output": "out.mp4"}, r"output 'out.mp4': the suffix sets the format; use one of \.h5, \.dcd"),
    ({"output": "/no/such/folder/md.h5"}, r"output folder '/no/such/folder' does not exist"),
    ({"positions": np.zeros((2, 3))}, r"positions must be finite with shape \(1, 3\) \(nm\), got shape \(2, 3\)"),
])
def test_simulate_refuses_bad_arguments_before_any_work(kwargs, message):
    dw = load("double_well")
    args = {"n_frames": 2, "stride": 5, "seed": 0, "platform": "Reference", "progress": False, **kwargs}
    with pytest.raises(ValueError, match=message):
        openmm_bg.simulate(dw, **args)


def test_simulate_accepts_zero_friction_and_explicit_temperature():
    dw = load("double_well")
    traj = openmm_bg.simulate(dw, n_frames=3, stride=5, friction=0, temperature=150, seed=0,
                              platform="Reference", progress=False)
    assert traj.n_frames == 3 and np.all(np.isfinite(traj.xyz))


def test_check_trajectory_refuses_bad_inputs(tmp_path):
    ala = load("alanine_dipeptide")
    with pytest.raises(ValueError, match="system must be a MolecularSystem"):
        check_trajectory(ala.system, ala.positions[None])
    with pytest.raises(ValueError, match="data must be an mdtraj.Trajectory, a trajectory file or positions"):
        check_trajectory(ala, {"xyz": 1})
    with pytest.raises(ValueError, match="data has no frames"):
        check_trajectory(ala, np.zeros((0, 22, 3)))
    with pytest.raises(ValueError, match="top must be None .* got int"):
        check_trajectory(ala, ala.positions[None], top=3)
    with pytest.raises(FileNotFoundError, match="topology file not found"):
        check_trajectory(ala, ala.positions[None], top=tmp_path / "none.pdb")


@pytest.mark.parametrize(("argv", "message"), [
    (["-n", "0"], "argument -n/--frames: must be an integer >= 1, got 0"),
    (["--stride", "x"], "argument --stride: not a number: 'x'"),
    (["--timestep", "-0.001"], r"argument --timestep: must be positive and finite \(ps\), got -0.001"),
    (["--temperature", "0"], "argument --temperature: must be a positive, finite temperature in K, got 0"),
    (["--friction", "nan"], r"argument --friction: must be >= 0 and finite \(1/ps\), got nan"),
])
def test_cli_simulate_refuses_bad_arguments(tmp_path, capsys, argv, message):
    from openmm_bg.apps.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["simulate", "double_well", *argv, "-o", str(tmp_path / "md.h5")])
    assert exit_info.value.code == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "md.h5").exists()
