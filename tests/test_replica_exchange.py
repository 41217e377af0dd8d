"""Parallel tempering data (openmmtools): frames of the lowest temperature, stored, reused, resumed; bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import mdtraj
import numpy as np
import pytest

from openmm_bg.apps.cli import main
from openmm_bg.md import ReplicaExchangeRun, replica_exchange
from openmm_bg.md.replica_exchange import parse_temperature_ladder, replica_store_paths
from openmm_bg.systems import load
from openmm_bg.systems.trajectory import check_trajectory

ALA = load("alanine_dipeptide")


def _run(out, n_frames, **kw):
    return replica_exchange(ALA, n_frames=n_frames, stride=kw.pop("stride", 20), temperatures=kw.pop("t", "300:500:3"),
                            output=out, platform="Reference", progress=False, **kw)


def test_frames_of_the_lowest_temperature_are_training_data(tmp_path):
    out = tmp_path / "pt.h5"
    run = _run(out, 4)
    assert isinstance(run, ReplicaExchangeRun) and not run.reused
    assert run.trajectory.xyz.shape == (4, 22, 3) and run.trajectory.time[-1] == pytest.approx(4 * 20 * 0.001)
    assert run.temperatures == pytest.approx((300.0, np.sqrt(300 * 500), 500.0))
    assert run.acceptance.shape == (2,) and np.all((run.acceptance >= 0) & (run.acceptance <= 1))
    back = check_trajectory(ALA, out)  # what the trainer reads
    np.testing.assert_allclose(back.xyz, run.trajectory.xyz, atol=1e-5)
    hot = run.frames_at(2)
    assert hot.xyz.shape == (4, 22, 3) and np.abs(hot.xyz - run.trajectory.xyz).max() > 1e-3
    storage, checkpoint, settings = replica_store_paths(out)
    assert storage.exists() and checkpoint.exists()
    assert json.loads(settings.read_text())["temperatures"] == [300, 500, 3]


def test_a_second_call_reads_the_store_and_a_longer_one_extends_it(tmp_path):
    out = tmp_path / "pt.dcd"
    first = _run(out, 3)
    again = _run(out, 3)
    assert again.reused
    np.testing.assert_array_equal(again.trajectory.xyz, first.trajectory.xyz)
    longer = _run(out, 5)  # a finished run is extended without resume=True
    assert not longer.reused and longer.trajectory.n_frames == 5
    np.testing.assert_array_equal(longer.trajectory.xyz[:3], first.trajectory.xyz)
    assert np.abs(longer.trajectory.xyz[4] - longer.trajectory.xyz[2]).max() > 1e-4
    assert mdtraj.load(str(out), top=ALA.mdtraj_topology).n_frames == 5


def test_other_settings_are_refused_before_any_md(tmp_path):
    out = tmp_path / "pt.h5"
    _run(out, 2)
    storage = replica_store_paths(out)[0]
    stamp = storage.stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"other settings \(stride 20 -> 10\).*delete pt.h5.replicas.nc"):
        _run(out, 2, stride=10)
    with pytest.raises(ValueError, match=r"temperatures \[300.0, 500.0, 3\] -> \[300.0, 600.0, 3\]"):
        _run(out, 2, t=(300.0, 600.0, 3))
    assert storage.stat().st_mtime_ns == stamp


def test_a_stopped_run_needs_resume_and_continues_where_it_stopped(tmp_path):
    """A store with fewer iterations than its run asked for (what a killed run leaves; the real kill is
    the slow test below) is refused without resume=True and continued with it."""
    out = tmp_path / "pt.h5"
    first = _run(out, 3)
    settings = replica_store_paths(out)[2]
    record = json.loads(settings.read_text())
    settings.write_text(json.dumps({**record, "n_frames_asked": 6}))
    with pytest.raises(ValueError, match=r"stopped replica exchange run \(3 iterations\); continue it with resume"):
        _run(out, 6)
    run = _run(out, 6, resume=True)
    assert run.trajectory.n_frames == 6 and not run.reused
    np.testing.assert_array_equal(run.trajectory.xyz[:3], first.trajectory.xyz)


@pytest.mark.parametrize("temperatures, message", [
    ("300:450", "LOWEST:HIGHEST:N"),
    ("300:450:1", "number of temperatures must be an integer >= 2"),
    ("300:450:2.5", "number of temperatures must be an integer"),
    ("300:250:4", "highest temperature must be above the lowest"),
    ("-3:450:4", "lowest temperature"),
    ("300:inf:4", "highest temperature"),
    ("310:450:4", "must be the system's 300 K, got 310 K"),
])
def test_bad_ladders_are_refused_before_any_md(tmp_path, temperatures, message):
    with pytest.raises(ValueError, match=message):
        _run(tmp_path / "pt.h5", 2, t=temperatures)
    assert not any(tmp_path.iterdir())


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="n_frames"):
        _run(tmp_path / "pt.h5", 0)
    with pytest.raises(ValueError, match="friction"):
        _run(tmp_path / "pt.h5", 2, friction=0.0)
    with pytest.raises(ValueError, match="use one of"):
        _run(tmp_path / "pt.txt", 2)
    with pytest.raises(ValueError, match="global parameter 'kT'"):
        replica_exchange(load("double_well"), 2, 10, "300:400:2", tmp_path / "dw.h5", progress=False)
    assert parse_temperature_ladder(" 300:450:6 ") == (300.0, 450.0, 6)


def test_cli_replica_exchange_with_ns_and_all_temperatures(tmp_path):
    out = tmp_path / "md.h5"
    result = subprocess.run([sys.executable, "-m", "openmm_bg.apps.cli", "simulate", "alanine_dipeptide", "--ns",
                             "0.00006", "--stride", "20", "--platform", "Reference", "--replica-exchange", "300:400:2",
                             "--all-temperatures", "-o", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "replica exchange at 300, 400 K" in result.stdout and "wrote 3 frames" in result.stdout
    for noise in ("JAX", "experimental", "cite", "Warning"):  # pymbar's banner, openmmtools' notices
        assert noise not in result.stdout + result.stderr
    assert mdtraj.load(str(out)).n_frames == 3 and mdtraj.load(str(tmp_path / "md_400K.h5")).n_frames == 3


@pytest.mark.parametrize("args, message", [
    (["--replica-exchange", "300:450"], "LOWEST:HIGHEST:N"),
    (["--replica-exchange", "300:200:3"], "highest temperature must be above"),
    (["--all-temperatures"], "--all-temperatures needs --replica-exchange"),
    (["--ns", "1", "-n", "10"], "either -n/--frames or --ns"),
    (["--ns", "1e-9"], "shorter than one frame"),
])
def test_cli_errors(tmp_path, capsys, args, message):
    code = 2
    try:
        code = main(["simulate", "alanine_dipeptide", *args, "-o", str(tmp_path / "md.h5")])
    except SystemExit as exit_:  # argparse type errors
        code = exit_.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_killed_run_continues_with_resume(tmp_path):
    """A CLI run killed (SIGKILL) mid-way keeps its stored iterations; resume=True continues, refused without."""
    from openmm_bg.md.replica_exchange import _stored_iterations

    out = tmp_path / "pt.h5"
    storage, checkpoint, _ = replica_store_paths(out)
    args = [sys.executable, "-m", "openmm_bg.apps.cli", "simulate", "alanine_dipeptide", "-n", "5000", "--stride",
            "50", "--platform", "Reference", "--replica-exchange", "300:500:3", "-o", str(out)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 600
    while time.time() < deadline and process.poll() is None:  # the file grows by ~2 kB per iteration
        time.sleep(1)
        if checkpoint.exists() and checkpoint.stat().st_size > 100_000:
            break
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()
    done = _stored_iterations(storage)
    assert 5 <= done < 5000
    with pytest.raises(ValueError, match=f"stopped replica exchange run \\({done} iterations\\)"):
        _run(out, done + 5, stride=50, t="300:500:3")
    run = _run(out, done + 5, stride=50, t="300:500:3", resume=True)
    assert run.trajectory.n_frames == done + 5 and np.all(np.isfinite(run.trajectory.xyz))
    assert np.abs(run.trajectory.xyz[-1] - run.trajectory.xyz[done - 1]).max() > 1e-4
