"""Entry point of an energy worker process, run by path so that workers start fast.

`openmm_bg.energy.workers.WorkerPool` starts each worker (spawn start method) with target
``runpy.run_path(<this file>, init_globals={"_WORKER_ARGS": ...}, run_name="__openmm_bg_worker__")``.
Run this way, the worker imports only numpy, OpenMM and ``context.py`` (loaded by path), not the
``openmm_bg`` package and torch, which takes seconds on a busy machine. (The parent's
``__main__`` module is still re-imported by multiprocessing, as with any spawned process.)

Protocol on the pipe: the worker sends ``("ready", pid)`` or ``("error", traceback)`` once its
context exists, then answers each ``(tag, positions, forces)`` with ``(tag, energy, forces)``
(or ``("error", traceback)``) and leaves on ``None`` or when the parent's end closes. A worker
whose parent is gone (killed together with it, or before it) leaves quietly, without a traceback.

Test hook (fault injection, used by the test suite only): when the environment variable
``OPENMM_BG_TEST_WORKER_FAULT`` is ``"kill"`` a starting worker kills itself with SIGKILL, when
it is a number the worker exits with that code, before building its context. With
``OPENMM_BG_TEST_WORKER_FAULT_FILE`` set as well, only a worker that deletes that file fails
(one failure per file). Workers read the environment they were spawned with.
"""

import importlib.util
import os
import signal
import sys
import traceback


def _load_context_module():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "context.py")
    spec = importlib.util.spec_from_file_location("_openmm_bg_worker_context", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: Exceptions of a pipe whose other end (the parent) is gone.
_PARENT_GONE = (BrokenPipeError, ConnectionResetError, EOFError, OSError)


def _injected_start_fault() -> None:
    """The test hook described in the module docstring."""
    how = os.environ.get("OPENMM_BG_TEST_WORKER_FAULT")
    if not how:
        return
    once = os.environ.get("OPENMM_BG_TEST_WORKER_FAULT_FILE")
    if once:
        try:
            os.remove(once)
        except FileNotFoundError:  # the one failure was used up by another worker
            return
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(int(how))


def serve(conn, system_xml: str, platform: str, properties: dict) -> None:
    """Build a context and answer evaluation requests until told to stop or the parent is gone."""
    try:
        _serve(conn, system_xml, platform, properties)
    except _PARENT_GONE:  # the parent died (killed, or exited): nobody to report to
        return


def _serve(conn, system_xml: str, platform: str, properties: dict) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and shuts us down
    _injected_start_fault()
    if "torch" in sys.modules:  # imported by the parent's __main__; the worker needs no threads
        sys.modules["torch"].set_num_threads(1)
    try:
        import openmm

        system = openmm.XmlSerializer.deserialize(system_xml)
        evaluator = _load_context_module().ContextEvaluator(system, platform, properties)
    except Exception:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", os.getpid()))
    while True:
        message = conn.recv()
        if message is None:
            return
        tag, positions, forces = message
        try:
            energy, force = evaluator.evaluate(positions, forces)
            conn.send((tag, energy, force))
        except Exception:
            conn.send(("error", traceback.format_exc()))


if __name__ == "__openmm_bg_worker__":
    serve(*globals()["_WORKER_ARGS"])
