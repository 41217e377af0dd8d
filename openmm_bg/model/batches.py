"""Batches pushed through the generator on worker threads, with one torch thread each.

Drawing samples is a loop over batches: the flow (torch) then the energy (OpenMM). Run one batch
after another on one core and the other cores idle; give torch several intra-op threads and an
oversubscribed machine makes its OpenMP threads spin (20,000 alanine-dipeptide samples took 30 s
instead of 2 s under load). `ordered_map` instead runs whole batches on a few worker threads,
each with one torch thread: the flow of one batch overlaps the flow and the energy of the next
(torch and OpenMM release the GIL), and a busy machine only slows the threads down.

Results do not depend on the number of threads: every batch is computed by the same operations
on the same inputs, and the caller draws the random inputs in order before handing them out.

Memory: a batch of 4096 samples allocates and frees tensors of 2-11 MB hundreds of times. By
default glibc's malloc hands such blocks back to the kernel when they are freed (``mmap`` /
heap trimming, above a threshold that adapts) and the next allocation faults the pages in again:
on the shipped alanine-dipeptide generator ~27,000 page faults per batch on a worker thread,
a third of its CPU time. `keep_freed_memory` (called by ``BoltzmannGenerator.sample``) sets
glibc's ``M_MMAP_THRESHOLD`` to 32 MiB and ``M_TRIM_THRESHOLD`` to 64 MiB once per process, so
freed blocks are reused (~100 faults per batch; the process keeps up to 64 MiB of free memory per
malloc arena). It changes no number; set ``OPENMM_BG_KEEP_FREED_MEMORY=0`` to leave malloc alone.

Examples
--------
>>> with torch_threads(1):
...     squares = list(ordered_map(lambda k: k * k, range(5), threads=2))
>>> squares
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["default_threads", "resolve_threads", "torch_threads", "ordered_map", "MAX_DEFAULT_THREADS",
           "keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

T = TypeVar("T")
R = TypeVar("R")

#: Most worker threads used by default. Energies of one `OpenMMEnergy` are evaluated one batch at a
#: time (its context serves one caller), so beyond a few threads only the flow gains.
MAX_DEFAULT_THREADS = 4


#: Bytes: glibc serves blocks up to this size from its heaps instead of fresh ``mmap`` (glibc's maximum).
MMAP_THRESHOLD = 32 * 2**20
#: Bytes of free memory at the top of a malloc heap that glibc keeps instead of returning to the kernel.
TRIM_THRESHOLD = 64 * 2**20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters of <malloc.h>
_malloc_lock = threading.Lock()
_malloc_kept: bool | None = None


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks for reuse (`MMAP_THRESHOLD`, `TRIM_THRESHOLD`); once per process.

    Returns True where the settings are in force (Linux with glibc), False elsewhere or with
    ``OPENMM_BG_KEEP_FREED_MEMORY=0`` in the environment. Results are unchanged; only the page
    faults of re-allocating large tensors go away (see the module documentation).

    Examples
    --------
    >>> keep_freed_memory() == keep_freed_memory()  # idempotent
    True
    """
    global _malloc_kept
    with _malloc_lock:
        if _malloc_kept is None:
            _malloc_kept = False
            if os.environ.get("OPENMM_BG_KEEP_FREED_MEMORY", "1") != "0" and platform.libc_ver()[0] == "glibc":
                try:
                    libc = ctypes.CDLL(None)
                    _malloc_kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                                        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
                except (OSError, AttributeError):
                    _malloc_kept = False
        return _malloc_kept


def default_threads() -> int:
    """Worker threads used by default: the usable cores, at most `MAX_DEFAULT_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_THREADS, cores))


def resolve_threads(threads: int | None) -> int:
    """``threads`` checked (an integer >= 1), or `default_threads` for None."""
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1 (worker threads) or None for the default, got {threads!r}")
    return threads


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``torch.set_num_threads(n)``; the previous setting is restored after."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int) -> Iterator[R]:
    """``fn(item)`` for every item, computed on ``threads`` worker threads, yielded in input order.

    ``items`` is consumed lazily (at most ``2 * threads`` results are pending), so the caller may
    draw each item's random inputs as it is requested. With ``threads=1`` everything runs in the
    calling thread. An exception in ``fn`` is raised here, when its result is due.
    """
    if threads == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="openmm-bg") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
