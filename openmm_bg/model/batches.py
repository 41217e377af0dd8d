"""Batches pushed through the generator on worker threads, with one torch thread each.

Drawing samples is a loop over batches: the flow (torch) then the energy (OpenMM). Run one batch
after another on one core and the other cores idle; give torch several intra-op threads and an
oversubscribed machine makes its OpenMP threads spin (20,000 alanine-dipeptide samples took 30 s
instead of 2 s under load). `ordered_map` instead runs whole batches on a few worker threads,
each with one torch thread: the flow of one batch overlaps the flow and the energy of the next
(torch and OpenMM release the GIL), and a busy machine only slows the threads down.

Results do not depend on the number of threads: every batch is computed by the same operations
on the same inputs, and the caller draws the random inputs in order before handing them out.

Examples
--------
>>> with torch_threads(1):
...     squares = list(ordered_map(lambda k: k * k, range(5), threads=2))
>>> squares
[0, 1, 4, 9, 16]
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

__all__ = ["default_threads", "resolve_threads", "torch_threads", "ordered_map", "MAX_DEFAULT_THREADS"]

T = TypeVar("T")
R = TypeVar("R")

#: Most worker threads used by default. Energies of one `OpenMMEnergy` are evaluated one batch at a
#: time (its context serves one caller), so beyond a few threads only the flow gains.
MAX_DEFAULT_THREADS = 4


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
