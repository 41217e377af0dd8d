"""Faults lose nothing: a killed `openmm-bg simulate` keeps its frames and continues with --resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import openmm_bg
from openmm_bg.md.partial import PartialRun
from openmm_bg.systems import load
from openmm_bg.systems.trajectory import check_trajectory
from openmm_bg.systems.trajectory_files import dcd_header_frames

MD = ["alanine_dipeptide", "-n", "300", "--stride", "500", "--seed", "3", "--platform", "Reference"]


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "openmm_bg.apps.cli", "simulate", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _kill_after(output, n_frames: int, timeout: float = 120.0) -> int:
    """Start the CLI, SIGKILL it once ``n_frames`` frames are on disk; frames on disk at the kill."""
    partial = PartialRun(output)
    proc = subprocess.Popen([sys.executable, "-m", "openmm_bg.apps.cli", "simulate", *MD, "-o", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if partial.frames_path.is_file() and (dcd_header_frames(partial.frames_path) or 0) >= n_frames:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
                return dcd_header_frames(partial.frames_path)
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    pytest.fail(f"the run ended (exit {proc.returncode}) or timed out before {n_frames} frames were on disk")


def test_killed_simulate_keeps_its_frames_and_resumes_to_the_uninterrupted_result(tmp_path):
    output = tmp_path / "md.h5"
    on_disk = _kill_after(output, 20)
    assert on_disk >= 20 and not output.exists()
    ala = load("alanine_dipeptide")
    kept = check_trajectory(ala, PartialRun(output).frames_path)
    assert kept.n_frames >= on_disk
    # the next run refuses to overwrite them and says how to go on
    again = _cli(*MD, "-o", str(output))
    assert again.returncode == 2
    assert "left" in again.stderr and "frames in" in again.stderr and "--resume" in again.stderr
    assert PartialRun(output).load()["frames"] > 0  # checkpoints are made during the run, not only at its start
    # --resume continues from the checkpoint and gives the uninterrupted run's frames
    resumed = _cli(*MD, "-o", str(output), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "continuing: a stopped run of md.h5 left" in resumed.stdout
    assert "wrote 300 frames" in resumed.stdout
    assert output.is_file() and not PartialRun(output).frames_path.exists()
    assert not PartialRun(output).checkpoint_path.exists()
    reference = openmm_bg.simulate(ala, n_frames=300, stride=500, seed=3, platform="Reference", progress=False)
    final = check_trajectory(ala, output)
    assert final.n_frames == 300
    np.testing.assert_allclose(final.xyz, reference.xyz, atol=2e-5)  # DCD keeps Angstrom in float32
    np.testing.assert_allclose(final.time, reference.time)


def test_interrupted_run_in_python_resumes_and_refuses_other_settings(tmp_path):
    """Ctrl-C (a real SIGINT) during simulate keeps the partial files; resume=True completes the run."""
    ala = load("alanine_dipeptide")
    output = tmp_path / "ala.dcd"
    args = {"n_frames": 400, "stride": 200, "seed": 1, "platform": "Reference", "progress": False, "output": output}
    partial = PartialRun(output)
    with pytest.raises(KeyboardInterrupt) as info:
        _interrupt_after(partial, 20, lambda: openmm_bg.simulate(ala, **args))
    assert any("continue with resume=True" in note for note in info.value.__notes__)
    assert partial.exists() and partial.frames_on_disk() >= 20 and not output.exists()
    with pytest.raises(ValueError, match=r"a stopped run of ala.dcd left \d+ frames.*resume=True"):
        openmm_bg.simulate(ala, **args)
    with pytest.raises(ValueError, match=r"cannot continue the stopped run of ala.dcd with other settings "
                                         r"\(seed 1 -> 2\)"):
        openmm_bg.simulate(ala, **{**args, "seed": 2}, resume=True)
    with pytest.raises(ValueError, match=r"n_frames must be at least the \d+ frames"):
        openmm_bg.simulate(ala, **{**args, "n_frames": 1}, resume=True)
    resumed = openmm_bg.simulate(ala, **args, resume=True)
    full = openmm_bg.simulate(ala, **{**args, "output": None})
    np.testing.assert_allclose(resumed.xyz, full.xyz, atol=2e-5)
    assert not partial.exists() and check_trajectory(ala, output).n_frames == 400
    # resume=True without a stopped run simply runs
    assert openmm_bg.simulate(ala, **{**args, "n_frames": 5}, resume=True).n_frames == 5


def _checkpoint_frames(partial) -> int:
    try:
        return partial.load()["frames"]
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0


def _interrupt_after(partial, n_frames, run, checkpoint_frames: int = 2):
    """Send this process SIGINT (as Ctrl-C does) once ``n_frames`` frames of ``partial`` are on disk and
    its checkpoint covers at least ``checkpoint_frames`` of them (checkpoints are timed, so on a
    loaded machine the first ones can lag behind the frames)."""
    import threading

    def watch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if partial.frames_on_disk() >= n_frames and _checkpoint_frames(partial) >= checkpoint_frames:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.005)

    # a process started in the background by a non-interactive shell inherits SIGINT ignored; Ctrl-C's
    # KeyboardInterrupt is what is tested, so install Python's handler for the run
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        run()
    finally:
        watcher.join(5)
        signal.signal(signal.SIGINT, previous)
    pytest.fail("the run finished before it was interrupted")
