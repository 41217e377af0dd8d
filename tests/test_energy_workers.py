"""Worker-pool lifecycle across processes: a forgotten pool or a killed parent never leaves workers behind."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager

import numpy as np
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


# ---------------------------------------------------------------------- fault injection
@contextmanager
def time_limit(seconds: float):
    """Fail instead of hanging: SIGALRM raises TimeoutError in the main thread after ``seconds``."""

    def expire(signum, frame):
        raise TimeoutError(f"the test did not finish within {seconds:g} s (a hang)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def ala_batch():
    from openmm_bg.energy import energy_for
    from openmm_bg.systems import load

    ala = load("alanine_dipeptide")
    x = ala.positions[None] + 0.003 * np.random.default_rng(0).standard_normal((40, 22, 3))
    # an in-process evaluation (one Reference context)
    return ala, x, energy_for(ala, platform="Reference")(x).numpy()


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert _wait_dead([pid], 10.0)


def test_killed_worker_is_replaced_and_energies_stay_exact(ala_batch):
    from openmm_bg.energy import OpenMMEnergy

    ala, x, expected = ala_batch
    with time_limit(120), OpenMMEnergy(ala, platform="Reference", n_workers=2) as energy:
        np.testing.assert_allclose(energy(x).numpy(), expected, rtol=1e-10)
        victim = energy.worker_pids[0]
        _kill(victim)
        np.testing.assert_allclose(energy(x).numpy(), expected, rtol=1e-10)
        assert victim not in energy.worker_pids and len(energy.worker_pids) == 2


def test_replacement_dying_while_starting_is_started_again(ala_batch, tmp_path, monkeypatch):
    from openmm_bg.energy.workers import WorkerPool

    ala, x, expected = ala_batch
    with time_limit(180), WorkerPool(ala.system, "Reference", n_workers=2) as pool:
        once = tmp_path / "fail-once"
        once.write_text("")
        monkeypatch.setenv("OPENMM_BG_TEST_WORKER_FAULT", "kill")  # the next worker to start kills itself
        monkeypatch.setenv("OPENMM_BG_TEST_WORKER_FAULT_FILE", str(once))
        _kill(pool.pids[1])
        np.testing.assert_allclose(pool.evaluate(x)[0] / ala.kT, expected, rtol=1e-10)
        pool.wait_until_ready()
        assert not once.exists(), "the injected start failure did not happen"
        assert pool.restarts == 2  # the killed worker's replacement, and its second try
        assert all(_alive(p) for p in pool.pids)
        np.testing.assert_allclose(pool.evaluate(x)[0] / ala.kT, expected, rtol=1e-10)  # the pool stays usable


@pytest.mark.parametrize(("fault", "cause"), [("kill", "killed by SIGKILL"), ("7", "exit code 7")])
def test_replacement_that_never_starts_closes_the_pool_with_the_cause(ala_batch, monkeypatch, fault, cause):
    from openmm_bg.energy import OpenMMEnergy
    from openmm_bg.energy.workers import WorkerError

    ala, x, expected = ala_batch
    with time_limit(180), OpenMMEnergy(ala, platform="Reference", n_workers=2) as energy:
        pids = energy.worker_pids
        monkeypatch.setenv("OPENMM_BG_TEST_WORKER_FAULT", fault)  # every new worker fails to start
        _kill(pids[0])
        with pytest.raises(WorkerError, match=rf"died while starting, 3 times in a row \(last: {cause}\)") as info:
            while True:  # the surviving worker answers until the failing slot has used its attempts
                np.testing.assert_allclose(energy(x).numpy(), expected, rtol=1e-10)
        assert "__main__" not in str(info.value)
        start = time.monotonic()
        with pytest.raises(WorkerError, match=rf"the worker pool is closed after a failure: .*{cause}"):
            energy(x)
        assert time.monotonic() - start < 1.0
        assert _wait_dead(pids, 10.0), "workers left behind by the closed pool"


def test_start_failure_of_a_new_pool_reports_the_signal(ala_batch, monkeypatch):
    from openmm_bg.energy.workers import WorkerError, WorkerPool

    ala, _, _ = ala_batch
    monkeypatch.setenv("OPENMM_BG_TEST_WORKER_FAULT", "kill")
    with time_limit(180), pytest.raises(WorkerError, match=r"3 times in a row \(last: killed by SIGKILL\)"):
        WorkerPool(ala.system, "Reference", n_workers=2)


KILLED_WHILE_BUSY = textwrap.dedent("""
    import os
    import signal
    import threading

    import numpy as np

    if __name__ == "__main__":
        from openmm_bg.energy import OpenMMEnergy
        from openmm_bg.systems import load

        ala = load("alanine_dipeptide")
        energy = OpenMMEnergy(ala, platform="Reference", n_workers=2)
        x = ala.positions[None] + 0.002 * np.random.default_rng(0).standard_normal((10000, 22, 3))
        print("PIDS", *energy.worker_pids, flush=True)
        threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
        for _ in range(1000):  # the workers are busy nearly all the time when the kill comes
            energy.evaluate(x)  # with forces: large replies, a worker is often sending when the parent dies
        print("END finished before the kill", flush=True)
""")


def test_workers_of_a_parent_killed_mid_batch_exit_quietly(tmp_path):
    path = tmp_path / "killed_while_busy.py"
    path.write_text(KILLED_WHILE_BUSY)
    # the workers inherit stderr: communicate() returns once they are gone too
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=tmp_path)
    assert proc.returncode == -9 and "END" not in proc.stdout, proc.stdout
    pids = [int(p) for p in proc.stdout.split("PIDS")[1].split()]
    assert _wait_dead(pids, 10.0)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
