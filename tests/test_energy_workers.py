"""Worker-pool lifecycle across processes: a forgotten pool or a killed parent never leaves workers behind."""

import os
import subprocess
import sys
import textwrap
import time

import pytest

SCRIPT = textwrap.dedent("""
    import os
    import signal
    import sys
    import time

    if __name__ == "__main__":
        from openmm_bg.energy import OpenMMEnergy
        from openmm_bg.systems import load

        energy = OpenMMEnergy(load("double_well"), platform="Reference", n_workers=2)
        assert abs(energy([[[1.0, 0.5, 0.0]]]).item() + 3.875) < 1e-9
        print("PIDS", *energy.worker_pids, flush=True)
        if sys.argv[1] == "suicide":
            os.kill(os.getpid(), signal.SIGKILL)
        print("END", time.time(), flush=True)
        # no energy.close(): interpreter exit must stop the workers
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


def _run(tmp_path, mode: str):
    path = tmp_path / "forgets_close.py"
    path.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(path), mode], capture_output=True, text=True, timeout=90,
                          env=env, cwd=tmp_path)
    finished = time.time()
    lines = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines() if line.strip()}
    assert "PIDS" in lines, proc.stdout + proc.stderr
    return proc, [int(p) for p in lines["PIDS"]], lines, finished


def _wait_dead(pids, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def test_forgotten_pool_does_not_delay_exit(tmp_path):
    proc, pids, lines, finished = _run(tmp_path, "normal")
    assert proc.returncode == 0, proc.stderr
    # exit within seconds of the last statement (a wedged pool would hit the 90 s timeout; the margin
    # is for interpreter teardown on a loaded 2-core machine, measured at ~1 s idle and ~6 s under load)
    assert finished - float(lines["END"][0]) < 20.0
    assert _wait_dead(pids, 2.0)


def test_workers_leave_when_parent_is_killed(tmp_path):
    proc, pids, _, _ = _run(tmp_path, "suicide")
    assert proc.returncode == -9
    assert _wait_dead(pids, 10.0), "orphaned energy workers still running"


@pytest.mark.skipif(sys.platform != "linux", reason="uses /proc")
def test_alive_helper_sees_this_process():
    assert _alive(os.getpid())


NO_GUARD = textwrap.dedent("""
    from openmm_bg.energy import OpenMMEnergy
    from openmm_bg.systems import load

    energy = OpenMMEnergy(load("double_well"), platform="Reference", n_workers=2)
""")


@pytest.mark.slow
def test_missing_main_guard_gives_clear_error(tmp_path):
    path = tmp_path / "no_guard.py"
    path.write_text(NO_GUARD)
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode != 0
    assert "WorkerError" in proc.stderr and '__name__ == "__main__"' in proc.stderr
