"""``nbcluster demo``: a local cluster, the reference workloads with progress, and their times."""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from operator import add

HOST = "127.0.0.1"

# The published comparison these workloads come from (its author's laptop).
REFERENCE = {"round trip": (567e-3, 20.7e-3), "1000 adds": (1.7, 369e-3),
             "chord of 100": (1.21, 60.8e-3)}


def _round_trip(client, n: int = 50) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        client.submit(add, 1, 1).result()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _thousand(client, show) -> float:
    t = time.perf_counter()
    futures = [client.submit(add, i, i) for i in range(1000)]
    show(futures, "1000 adds    ")
    assert client.gather(futures) == [2 * i for i in range(1000)]
    return time.perf_counter() - t


def _chord(client, show) -> float:
    t = time.perf_counter()
    futures = [client.submit(add, i, i) for i in range(100)]
    total = client.submit(sum, futures)
    show(futures + [total], "chord of 100 ")
    assert total.result() == sum(2 * i for i in range(100))
    return time.perf_counter() - t


def run_workloads(client, show=lambda futures, label: None) -> dict[str, float]:
    client.submit(add, 0, 0).result()    # warm up: functions shipped, connections made
    return {"round trip": _round_trip(client), "1000 adds": _thousand(client, show),
            "chord of 100": _chord(client, show)}


def dask_cluster():
    """dask.distributed's LocalCluster in the demo's shape; scheduler, workers, nannies and
    dashboard all on 127.0.0.1 (dask's own default dashboard listens on every interface)."""
    import logging

    from distributed import LocalCluster as DaskCluster

    return DaskCluster(n_workers=2, threads_per_worker=1, processes=True, host=HOST,
                       silence_logs=logging.ERROR, dashboard_address=f"{HOST}:0")


def _dask_times() -> dict[str, float] | None:
    try:
        import logging

        from distributed import Client as DaskClient
    except ImportError:
        return None
    for name in ("distributed", "distributed.http.proxy", "distributed.scheduler",
                 "distributed.nanny", "distributed.core", "distributed.worker"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print("running the same workloads on dask.distributed for comparison ...", flush=True)
    with dask_cluster() as cluster, DaskClient(cluster) as client:
        return run_workloads(client)


def _wait_for_interrupt() -> None:
    """Until Ctrl-C or SIGTERM. Waits in short slices: a signal that lands in another thread
    (the cluster's) still reaches the main thread's handler within half a second."""
    import signal
    import threading

    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_demo(n_workers: int = 2, compare_dask: bool = True, keep: bool = False) -> int:
    """The demo. Its dashboard lives as long as its cluster: until the nbcluster workloads
    are done, or with ``keep`` until Ctrl-C after the results (the output says which)."""
    from . import Client, LocalCluster
    from .progress import TextProgress

    def show(futures, label):
        TextProgress(futures, label=label, stream=sys.stdout).wait()

    t0 = time.perf_counter()
    with contextlib.ExitStack() as running:
        cluster = running.enter_context(LocalCluster(n_workers=n_workers, threads_per_worker=1))
        client = running.enter_context(Client(cluster))
        started = time.perf_counter() - t0
        print(f"nbcluster: scheduler {cluster.scheduler_address}, {n_workers} worker processes, "
              f"up in {started * 1000:.0f} ms")
        link = client.dashboard_link
        if link:
            print(f"dashboard: {link} (open while the demo runs"
                  + (", and after it until Ctrl-C)" if keep else "; --keep keeps it open)"))
        else:
            print("dashboard: none (install bokeh: pip install 'nbcluster[jupyter]')")
        ours = run_workloads(client, show)
        if not keep:
            running.close()
            print("nbcluster: cluster closed" + (", and its dashboard with it" if link else ""))
        theirs = _dask_times() if compare_dask else None
        _print_table(ours, theirs)
        if keep:
            where = f", dashboard at {link}" if link else ""
            print(f"\nnbcluster: the cluster is still running (scheduler "
                  f"{cluster.scheduler_address}{where}); press Ctrl-C to stop it", flush=True)
            _wait_for_interrupt()
    if keep:
        print("nbcluster: cluster closed" + (", and its dashboard with it" if link else ""))
    return 0


def _print_table(ours: dict[str, float], theirs: dict[str, float] | None) -> None:
    print()
    header = f"{'workload':<14}{'nbcluster':>12}"
    if theirs:
        header += f"{'dask (now)':>12}{'ratio':>8}"
    header += f"{'celery*':>10}{'dask*':>10}"
    print(header)
    for name, t in ours.items():
        row = f"{name:<14}{t * 1000:>10.2f}ms"
        if theirs:
            row += f"{theirs[name] * 1000:>10.1f}ms{theirs[name] / t:>7.1f}x"
        celery, dask = REFERENCE[name]
        row += f"{celery * 1000:>8.0f}ms{dask * 1000:>8.1f}ms"
        print(row)
    print("* published figures from the original Dask vs Celery comparison, another machine",
          flush=True)
