"""A pool of worker processes, each owning one OpenMM context.

OpenMM has no batch API and a context is not thread-safe, so parallel evaluation of a batch
runs in processes. `WorkerPool` starts ``n_workers`` processes with the *spawn* start method
(fork is unsafe once OpenMM, CUDA or torch threads exist), each deserialising the System and
building a `ContextEvaluator` (see `_worker_process.py`). A batch is cut into a few
contiguous chunks per worker (never one message per configuration) which are handed out as
workers become free, so a worker slowed down by other load does not hold up the batch.

Robustness:

- a worker that dies (killed, segfault) is detected through its process sentinel, replaced,
  and its chunk re-evaluated by another worker; a chunk that kills a second worker raises
  `WorkerError` instead of looping;
- a replacement that dies while starting is started again, up to `MAX_START_ATTEMPTS` times in a
  row; then the pool closes and `WorkerError` gives the real cause (exit code or signal name),
  as does every later call;
- `close()`, garbage collection of the pool, or interpreter exit stop the workers within
  seconds (idle workers leave on a message, others are terminated; workers are daemonic and
  also leave when the parent's end of their pipe closes);
- while a batch is evaluated, torch's intra-op thread count in the parent is capped so that the
  parent does not compete with the workers for cores.

Because of *spawn*, a script that creates a pool must protect its entry point::

    if __name__ == "__main__":
        main()

otherwise each worker re-runs the script's top level when it starts.

Examples
--------
>>> from openmm_bg.systems import load
>>> dw = load("double_well")
>>> with WorkerPool(dw.system, "Reference", n_workers=2) as pool:  # doctest: +SKIP
...     energy, forces = pool.evaluate(dw.positions[None].repeat(10, 0))
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import runpy
import signal
import sys
import time
import weakref
from collections import deque
from contextlib import contextmanager
from multiprocessing.connection import wait

import numpy as np
import openmm

__all__ = ["WorkerPool", "WorkerError", "capped_torch_threads", "MAX_START_ATTEMPTS"]

logger = logging.getLogger(__name__)

#: A worker slot whose process dies this many times in a row before it is ready closes the pool.
MAX_START_ATTEMPTS = 3

#: Script each worker runs (by path, so that workers do not import torch).
_ENTRY_POINT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_worker_process.py")


class WorkerError(RuntimeError):
    """A worker process failed in a way that re-evaluation cannot fix."""


@contextmanager
def capped_torch_threads(n_threads: int):
    """Temporarily lower torch's intra-op thread count to at most ``n_threads`` (if torch is loaded)."""
    torch = sys.modules.get("torch")
    old = torch.get_num_threads() if torch is not None else 0
    if torch is None or old <= n_threads:
        yield
        return
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def exit_cause(exitcode: int | None) -> str:
    """How a process ended, in words: ``"exit code 1"``, ``"killed by SIGKILL"``."""
    if exitcode is None:
        return "no exit code (still running)"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class _Worker:
    """Parent-side handle of one worker process."""

    __slots__ = ("process", "conn", "state", "chunk", "pid", "attempt", "started")

    def __init__(self, process, conn, attempt: int = 1):
        self.process = process
        self.conn = conn
        self.state = "starting"  # -> "idle" <-> "busy"
        self.chunk: tuple[int, int] | None = None
        self.pid: int | None = None
        self.attempt = attempt  # starts in a row of this slot, this one included
        self.started = time.monotonic()


def _stop_workers(workers: list[_Worker], owner_pid: int, timeout: float = 2.0) -> None:
    """Ask workers to leave, then terminate/kill stragglers; empties ``workers``."""
    if os.getpid() != owner_pid:  # a forked child must not shut down its parent's pool
        return
    for w in workers:
        if w.state == "starting":  # still importing; it would read the message only when ready
            w.process.terminate()
            continue
        try:
            w.conn.send(None)
        except Exception:  # noqa: S110 - best effort: the worker may already be gone; it is killed below
            pass
    deadline = time.monotonic() + timeout
    for w in workers:
        w.process.join(max(0.0, deadline - time.monotonic()))
    for w in workers:
        if w.process.is_alive():
            w.process.terminate()
            w.process.join(1.0)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(1.0)
        try:
            w.conn.close()
        except Exception:  # noqa: S110 - closing a pipe whose other end died; nothing left to release
            pass
    workers.clear()


class WorkerPool:
    """Worker processes evaluating energies and forces with their own OpenMM contexts.

    Parameters
    ----------
    system : openmm.System
        The potential (sent to the workers as XML).
    platform : str
        OpenMM platform name for every worker's context.
    properties : dict of str -> str, optional
        Platform properties, e.g. ``{"Threads": "1"}``.
    n_workers : int
        Number of processes (>= 1).
    chunks_per_worker : int
        A batch is cut into about this many chunks per worker, handed out dynamically.
    start_timeout : float
        Seconds to wait for a worker to build its context before raising `WorkerError`.
    timeout : float or None
        Seconds to wait for a chunk before raising `WorkerError`; ``None`` waits as long as the
        worker lives (a dead worker is always detected).

    Attributes
    ----------
    pids : list of int
        Process ids of the current workers.
    restarts : int
        Number of workers replaced so far (after dying).
    last_n_chunks : int
        Number of chunks (messages) the last batch was cut into.

    Examples
    --------
    >>> from openmm_bg.systems import load
    >>> ala = load("alanine_dipeptide")
    >>> pool = WorkerPool(ala.system, "Reference", n_workers=2)  # doctest: +SKIP
    >>> energy, forces = pool.evaluate(ala.positions[None])  # kJ/mol, kJ/mol/nm  # doctest: +SKIP
    >>> pool.close()  # doctest: +SKIP
    """

    def __init__(self, system: openmm.System, platform: str, properties: dict[str, str] | None = None,
                 n_workers: int = 2, chunks_per_worker: int = 4, start_timeout: float = 300.0,
                 timeout: float | None = None):
        if n_workers < 1:
            raise ValueError(f"n_workers must be >= 1, got {n_workers}")
        self.platform = platform
        self.properties = dict(properties or {})
        self.n_workers = int(n_workers)
        self.n_atoms = system.getNumParticles()
        self.chunks_per_worker = int(chunks_per_worker)
        self.start_timeout = float(start_timeout)
        self.timeout = timeout
        self.restarts = 0
        self.last_n_chunks = 0
        self._ever_ready = False
        self._failure: str | None = None
        self._xml = openmm.XmlSerializer.serialize(system)
        self._mp = multiprocessing.get_context("spawn")
        self._owner_pid = os.getpid()
        self._workers: list[_Worker] = []
        self._finalizer = weakref.finalize(self, _stop_workers, self._workers, self._owner_pid)
        for _ in range(self.n_workers):
            self._workers.append(self._start_worker())
        self.wait_until_ready()

    # ------------------------------------------------------------------ lifecycle
    def _start_worker(self, attempt: int = 1) -> _Worker:
        parent, child = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=runpy.run_path, name="openmm_bg-energy-worker", daemon=True, args=(_ENTRY_POINT,),
            kwargs={"init_globals": {"_WORKER_ARGS": (child, self._xml, self.platform, self.properties)},
                    "run_name": "__openmm_bg_worker__"})
        process.start()
        child.close()
        return _Worker(process, parent, attempt)

    def _fail(self, message: str) -> None:
        """Close the pool for good and raise `WorkerError`; later calls repeat the reason."""
        self._failure = message
        self.close()
        raise WorkerError(message)

    def _closed_error(self) -> WorkerError:
        reason = f" after a failure: {self._failure}" if self._failure else ""
        return WorkerError(f"the worker pool is closed{reason}; create a new one")

    def _restart_starting(self, index: int) -> None:
        """Start again a worker that died before it was ready, or give up after `MAX_START_ATTEMPTS`."""
        w = self._workers[index]
        w.process.join(1.0)
        cause = exit_cause(w.process.exitcode)
        try:
            w.conn.close()
        except OSError:  # noqa: S110 - the pipe of a dead process; nothing left to release
            pass
        if not self._ever_ready and w.process.exitcode == 1:
            self._fail(f"an energy worker process exited while starting ({cause}); if the script that creates "
                       "the energy runs it at its top level, protect that with an "
                       "`if __name__ == \"__main__\":` guard (workers start by importing the main script)")
        if w.attempt >= MAX_START_ATTEMPTS:
            self._fail(f"an energy worker process died while starting, {w.attempt} times in a row (last: {cause}); "
                       "the pool is closed. Check the machine's memory and process limits, and whether something "
                       "kills new processes")
        logger.warning("energy worker died while starting (%s); starting it again (attempt %d of %d)", cause,
                       w.attempt + 1, MAX_START_ATTEMPTS)
        self._workers[index] = self._start_worker(w.attempt + 1)
        self.restarts += 1

    def wait_until_ready(self) -> None:
        """Block until every worker (including replacements still starting) has built its context."""
        if self.closed:
            raise self._closed_error()
        while any(w.state == "starting" for w in self._workers):
            starting = [w for w in self._workers if w.state == "starting"]
            ready = wait([w.conn for w in starting] + [w.process.sentinel for w in starting],
                         timeout=self._start_wait(starting))
            if not ready:
                self._fail(f"energy worker processes did not start within {self.start_timeout:g} s")
            for i, w in enumerate(list(self._workers)):
                if w in starting and (w.conn in ready or w.process.sentinel in ready):
                    try:
                        alive = self._handle_reply(w, None, None)
                    except WorkerError:
                        self.close()
                        raise
                    if not alive:
                        self._restart_starting(i)

    def _start_wait(self, starting: list[_Worker]) -> float:
        """Seconds left before the longest-starting worker exceeds ``start_timeout``."""
        return max(0.0, min(w.started for w in starting) + self.start_timeout - time.monotonic())

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers (for monitoring; a replaced worker has a new pid)."""
        return [w.process.pid for w in self._workers]

    @property
    def closed(self) -> bool:
        """True after `close()`."""
        return not self._finalizer.alive

    def close(self) -> None:
        """Stop the workers (idle ones leave at once, others are terminated after 2 s)."""
        self._finalizer()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("a WorkerPool cannot be pickled; create one in each process")

    # ------------------------------------------------------------------ evaluation
    def _replace(self, index: int) -> None:
        old = self._workers[index]
        if old.process.is_alive():
            old.process.kill()
        old.process.join(1.0)
        old.conn.close()
        logger.info("energy worker %s ended (%s); starting a replacement", old.process.pid,
                    exit_cause(old.process.exitcode))
        self._workers[index] = self._start_worker()
        self.restarts += 1

    def _handle_reply(self, w: _Worker, energy: np.ndarray | None, force: np.ndarray | None) -> bool:
        """Receive what ``w`` sent; return False if the worker turned out to be dead."""
        try:
            message = w.conn.recv() if w.conn.poll() else None
        except (EOFError, OSError):
            message = None
        if message is None:
            if w.process.is_alive():  # spurious wake-up
                return True
            w.process.join(0.1)
            return False
        kind = message[0]
        if kind == "error" and w.state == "starting":  # building the context failed: not a fault to retry
            self._fail(f"an energy worker could not build its OpenMM context:\n{message[1]}")
        if kind == "error":
            raise WorkerError(f"energy worker failed:\n{message[1]}")
        if kind == "ready":
            w.pid = message[1]
            w.state = "idle"
            self._ever_ready = True
            return True
        start, stop = message[0]
        energy[start:stop] = message[1]
        if force is not None:
            force[start:stop] = message[2]
        w.state, w.chunk = "idle", None
        return True

    def evaluate(self, positions: np.ndarray, forces: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Energies (kJ/mol) and forces (kJ/mol/nm) of a batch, evaluated by the workers.

        Parameters
        ----------
        positions : numpy.ndarray
            ``[batch, n_atoms, 3]`` in nm.
        forces : bool
            Also compute forces.

        Returns
        -------
        energy : numpy.ndarray
            ``[batch]`` float64, ``+inf`` for failed configurations.
        forces : numpy.ndarray or None
            ``[batch, n_atoms, 3]`` float64, zero for failed configurations.
        """
        if self.closed:
            raise self._closed_error()
        if os.getpid() != self._owner_pid:
            raise WorkerError("a WorkerPool cannot be used from a forked child process")
        x = np.ascontiguousarray(positions, dtype=np.float64)
        if x.ndim != 3 or x.shape[1:] != (self.n_atoms, 3):
            raise ValueError(f"positions must have shape [batch, {self.n_atoms}, 3], got {x.shape}")
        batch = len(x)
        energy = np.full(batch, np.inf)
        force = np.zeros((batch, self.n_atoms, 3)) if forces else None
        if batch == 0:
            return energy, force
        size = max(8, math.ceil(batch / (self.n_workers * self.chunks_per_worker)))
        pending = deque((s, min(s + size, batch)) for s in range(0, batch, size))
        self.last_n_chunks = len(pending)
        deaths: dict[tuple[int, int], int] = {}
        completed = False
        limit = max(1, (os.cpu_count() or 1) - self.n_workers)
        try:
            with capped_torch_threads(limit):
                for i, w in enumerate(self._workers):  # replace workers that died while idle
                    if w.state == "idle" and not w.process.is_alive():
                        self._replace(i)
                while pending or any(w.state == "busy" for w in self._workers):
                    self._dispatch(x, pending, forces, deaths)
                    active = [w for w in self._workers if w.state in ("busy", "starting")]
                    busy = any(w.state == "busy" for w in active)
                    ready = wait([w.conn for w in active] + [w.process.sentinel for w in active],
                                 timeout=self.timeout if busy else self._start_wait(active))
                    if not ready and not busy:
                        self._fail(f"energy worker processes did not start within {self.start_timeout:g} s")
                    if not ready:
                        raise WorkerError(f"no energy worker answered within {self.timeout:g} s")
                    for i, w in enumerate(list(self._workers)):
                        if w not in active or not (w.conn in ready or w.process.sentinel in ready):
                            continue
                        starting = w.state == "starting"
                        if self._handle_reply(w, energy, force):
                            continue
                        if starting:
                            self._restart_starting(i)
                        else:
                            self._requeue(w, pending, deaths)
                            self._replace(i)
            completed = True
        finally:
            if not completed:  # interrupted: busy workers hold stale work; restart them
                for i, w in enumerate(self._workers):
                    if w.state == "busy" and not self.closed:
                        self._replace(i)
        return energy, force

    def _requeue(self, w: _Worker, pending: deque, deaths: dict) -> None:
        if w.chunk is None:
            return
        deaths[w.chunk] = deaths.get(w.chunk, 0) + 1
        if deaths[w.chunk] > 1:
            raise WorkerError(f"energy workers died twice while evaluating configurations "
                              f"{w.chunk[0]}..{w.chunk[1] - 1} of the batch (exit code "
                              f"{w.process.exitcode}); one of them probably crashes OpenMM")
        pending.appendleft(w.chunk)
        w.chunk = None

    def _dispatch(self, x: np.ndarray, pending: deque, forces: bool, deaths: dict) -> None:
        for i, w in enumerate(self._workers):
            if not pending:
                return
            if w.state != "idle":
                continue
            chunk = pending.popleft()
            w.state, w.chunk = "busy", chunk
            try:
                w.conn.send((chunk, x[chunk[0]:chunk[1]], forces))
            except (BrokenPipeError, ConnectionResetError, EOFError, OSError):
                self._requeue(w, pending, deaths)
                self._replace(i)
