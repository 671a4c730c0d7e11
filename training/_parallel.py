"""Independent jobs spread over worker processes, results in job order: the one way training
parallelises (preprocessing, candidate extraction, the trail stage's scores, whole nights
through the pipeline).

Workers are *spawned*, not forked: a forked child inherits locks held by the parent's other
threads (torch/OpenMP and onnxruntime pools, loggers) and can deadlock before it does any work.
A spawned worker imports the caller's main module again, so a script of yours that calls these
with workers > 1 needs the usual ``if __name__ == "__main__":`` guard (`guaita` has it).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

from tqdm import tqdm

Job = TypeVar("Job")
Result = TypeVar("Result")


def process_map(fn: Callable[[Job], Result], jobs: Sequence[Job], workers: int, *,
                desc: str | None = None, unit: str = "item", show: bool | None = None,
                chunksize: int = 1, serial_below: int = 2,
                initializer: Callable[..., Any] | None = None,
                initargs: tuple[Any, ...] = ()) -> Iterator[Result]:
    """`fn` over `jobs`, yielded in order. In this process when `workers` <= 1 or there are
    fewer than `serial_below` jobs (a pool's start-up would cost more than it saves); then
    `initializer` runs here too. `fn` and `initializer` must be module-level functions.

    `desc`: a progress bar with this title (None: none); `show` is tqdm's inverted `disable`
    (None: only on a terminal)."""
    disable = None if show is None else not show
    if desc is None:
        disable = True
    if workers <= 1 or len(jobs) < serial_below:
        if initializer is not None:
            initializer(*initargs)
        yield from tqdm(map(fn, jobs), total=len(jobs), desc=desc, unit=unit, disable=disable,
                        mininterval=2)
        return
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=initializer,
                             initargs=initargs) as pool:
        yield from tqdm(pool.map(fn, jobs, chunksize=chunksize), total=len(jobs), desc=desc,
                        unit=unit, disable=disable, mininterval=2)
