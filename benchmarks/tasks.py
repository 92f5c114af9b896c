"""Functions run *on the workers* by the benchmark workloads.

They live in their own small module so that worker processes of either
system can import them by reference (``benchmarks.tasks.add``): the
benchmark children run from the repository root with PYTHONPATH set to it,
and worker processes inherit that environment.  Keep this module free of
heavy imports: numpy is imported lazily inside the array tasks.
"""

import time


def noop():
    """Used with ``client.run`` to list worker addresses."""
    return 0


def add(x, y):
    return x + y


def inc(x):
    return x + 1


def sleep_gate(seconds):
    """A task that holds its worker thread for ``seconds`` and returns 0.

    W8 makes 100,000 tasks depend on it so that they stay pending on the
    scheduler while its memory is measured.
    """
    time.sleep(seconds)
    return 0


def make_array(n_items, value, tag=None):
    """A float64 array of ``n_items`` items, all equal to ``value``.

    ``tag`` only makes the task key unique.
    """
    import numpy as np

    return np.full(n_items, float(value), dtype=np.float64)


def array_nbytes(arr, tag=None):
    """Touch an array where it lives; ``tag`` only makes the task key unique."""
    return int(arr.nbytes)


def array_sum(arr, tag=None):
    """Sum an array; ``tag`` only makes the task key unique (dask hashes args)."""
    return float(arr.sum())


def dask_scheduler_task_count(dask_scheduler):
    """Run on dask's scheduler (``client.run_on_scheduler``) by W8 only."""
    return len(dask_scheduler.tasks)


def getpid():
    """Used with ``client.run`` to check that workers are separate processes."""
    import os

    return os.getpid()
