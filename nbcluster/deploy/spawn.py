"""Entry point of the processes a LocalCluster starts: ``python -m nbcluster.deploy.spawn``.

The parent talks to the child through its stdin/stdout pipes: the child prints one line with
its address once it serves; a worker reads the scheduler's address from stdin (so it can import
while the scheduler starts); and when stdin closes (the parent died or closed the cluster), the
child exits, so no process outlives its cluster. Later lines on a worker's stdin are commands:
``MEMORY_LIMIT <bytes>|none`` sets its memory limit (the cluster scaled), answered on stdout
with the same line once the worker has applied it and told the scheduler.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from ..config import tune_gc_for_server


def _exit_when_parent_goes(loop: asyncio.AbstractEventLoop, stop: asyncio.Event,
                           on_line=None) -> None:
    def watch():
        try:   # the same buffered reader that read the address line: nothing read ahead is lost
            for line in sys.stdin:
                if on_line is not None and line.strip():
                    loop.call_soon_threadsafe(on_line, line.strip())
        except Exception:
            pass
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=watch, name="nbcluster-parent-watch", daemon=True).start()


async def _scheduler(args) -> None:
    from ..server.scheduler import Scheduler

    from ..security import Security

    scheduler = await Scheduler(args.address, token=os.environ.get("NBCLUSTER_TOKEN"),
                                security=Security.from_env(), journal=args.journal).start()
    dashboard = None
    if args.dashboard_port >= 0:
        try:
            from ..dashboard.server import start_dashboard

            host = args.address.split("://", 1)[1].rsplit(":", 1)[0] or "127.0.0.1"
            # its own token if it needs one: the cluster's token must not travel in URLs
            dashboard = start_dashboard(scheduler, host=host, port=args.dashboard_port)
            scheduler.dashboard_link = dashboard.link
            print(f"DASHBOARD {dashboard.link}", flush=True)
        except ImportError as e:   # bokeh not installed: the cluster works without it
            print(f"NODASHBOARD {e}", flush=True)
    print(f"ADDRESS {scheduler.address}", flush=True)
    stop = asyncio.Event()
    _exit_when_parent_goes(asyncio.get_running_loop(), stop)
    await stop.wait()
    if dashboard is not None:
        dashboard.stop()
    await scheduler.close()


async def _worker(args) -> None:
    from ..security import Security
    from ..server.worker import Worker

    loop = asyncio.get_running_loop()
    line = await loop.run_in_executor(None, sys.stdin.readline)
    address = line.strip()
    if not address:
        return
    worker = Worker(address, nthreads=args.nthreads, name=args.name,
                    token=os.environ.get("NBCLUSTER_TOKEN"), memory_limit=args.memory_limit,
                    security=Security.from_env(),
                    queues=args.queues.split(",") if args.queues else None,
                    memory_pause=args.memory_pause, memory_terminate=args.memory_terminate,
                    memory_spill=args.memory_spill, spill_dir=args.spill_dir,
                    resources=args.resources,
                    reconnect_timeout=0)   # LocalCluster's scheduler does not come back
    worker.exit_when_stuck = True     # a task that won't stop: exit, LocalCluster replaces us
    worker.own_process = True
    await worker.start()
    print(f"ADDRESS {worker.address}", flush=True)

    def command(line: str) -> None:
        word, _, value = line.partition(" ")
        if word != "MEMORY_LIMIT":
            logging.getLogger("nbcluster.worker").warning("unknown command %r from the cluster",
                                                          line)
            return
        try:
            worker.set_memory_limit(None if value == "none" else int(value))
        except Exception:
            logging.getLogger("nbcluster.worker").exception("cannot apply %r", line)
        print(line, flush=True)     # done: applied and the scheduler told (the message is sent)

    stop = asyncio.Event()
    _exit_when_parent_goes(loop, stop, command)
    done = asyncio.ensure_future(worker.finished.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([done, stopped], return_when=asyncio.FIRST_COMPLETED)
    await worker.close()


def _fraction_or_none(text: str) -> float | None:
    return None if text == "none" else float(text)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="nbcluster.deploy.spawn")
    parser.add_argument("role", choices=["scheduler", "worker"])
    parser.add_argument("--address", default="tcp://127.0.0.1:0")
    parser.add_argument("--nthreads", type=int, default=1)
    parser.add_argument("--name", default=None)
    parser.add_argument("--memory-limit", type=int, default=None)
    parser.add_argument("--memory-pause", type=_fraction_or_none, default=None)
    parser.add_argument("--memory-terminate", type=_fraction_or_none, default=None)
    parser.add_argument("--memory-spill", type=_fraction_or_none, default=None)
    parser.add_argument("--spill-dir", default=None)
    parser.add_argument("--queues", default=None)
    parser.add_argument("--resources", default=None)   # GPU=1.0,MEM=16000000000.0
    parser.add_argument("--dashboard-port", type=int, default=-1, help="-1: no dashboard")
    parser.add_argument("--journal", default=None)
    args = parser.parse_args(argv)
    tune_gc_for_server()
    logging.basicConfig(level=os.environ.get("NBCLUSTER_LOG_LEVEL", "WARNING"),
                        format=f"%(asctime)s {args.role} %(name)s %(levelname)s %(message)s")
    profile_dir = os.environ.get("NBCLUSTER_PROFILE_DIR")   # cProfile each process (benchmarks)
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        asyncio.run(_scheduler(args) if args.role == "scheduler" else _worker(args))
    except KeyboardInterrupt:
        pass
    except Exception as e:
        print(f"ERROR {e}", flush=True)
        sys.stderr.flush()
        os._exit(1)
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"{args.role}-{os.getpid()}.prof"))
        # Leave at once: the daemon thread blocked reading stdin (the parent watch) and task
        # threads abandoned mid-call would otherwise crash interpreter shutdown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    main()
