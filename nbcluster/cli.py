"""The ``nbcluster`` command: scheduler, worker, demo."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import sys

from .config import SCHEDULER_LOST_EXIT_CODE
from .durations import parse_duration
from .errors import NBClusterError, SchedulerLostError


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _security(args):
    from .security import Security

    if not (args.tls_ca_file or args.tls_cert or args.tls_key or args.require_encryption):
        return Security.from_env()
    return Security(args.tls_ca_file, args.tls_cert, args.tls_key, args.require_encryption)


def _add_token_options(parser) -> None:
    parser.add_argument("--token", default=None, help="shared secret (shown by ps: prefer "
                        "NBCLUSTER_TOKEN, --token-stdin or the connection file)")
    parser.add_argument("--token-stdin", action="store_true",
                        help="read the token from the first line of standard input")


def _add_address_options(parser, role: str) -> None:
    parser.add_argument("--interface", default=None, metavar="NAME",
                        help="serve on this network interface's IPv4 address (e.g. eth0, ib0) "
                        "and advertise it; instead of --host")
    parser.add_argument("--contact-address", default=None, metavar="tcp://HOST:PORT",
                        help=f"the address others are told to reach this {role} at (behind NAT "
                        "or a port forward); it does not change what is bound. PORT 0: the "
                        "bound port")


def _add_tls_options(parser) -> None:
    parser.add_argument("--tls-ca-file", default=None, help="CA certificate (PEM) for tls://")
    parser.add_argument("--tls-cert", default=None, help="this process's certificate (PEM)")
    parser.add_argument("--tls-key", default=None, help="this process's private key (PEM)")
    parser.add_argument("--require-encryption", action="store_true",
                        help="refuse plain tcp:// connections")


def _token(args) -> str | None:
    """``--token``, or the first line of stdin with ``--token-stdin``.

    A token on the command line can be read by every user of the machine (``ps``); stdin is
    how a launcher such as SSHCluster hands it over without showing it to anyone."""
    if not args.token_stdin:
        return args.token
    if args.token:
        raise ValueError("give --token or --token-stdin, not both")
    token = sys.stdin.readline().strip()
    if not token:
        raise ValueError("--token-stdin: standard input gave no token (an empty first line)")
    return token


def _close_on_signals(close) -> None:
    """SIGTERM and SIGINT (Ctrl-C) close the scheduler in order, so the code after it runs
    (the connection file is removed) instead of the process dying where it stands. A signal
    the process was started ignoring (``nohup``, a shell's background job) stays ignored."""
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) is signal.SIG_IGN:
            continue
        try:
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(close()))
        except (NotImplementedError, RuntimeError, ValueError):   # Windows
            pass


def _scheduler(args) -> int:
    from .comm.auth import new_token
    from .config import remove_connection_file, tune_gc_for_server, write_connection_file
    from .server.journal import journal_token
    from .server.scheduler import Scheduler

    token = _token(args) or os.environ.get("NBCLUSTER_TOKEN") or journal_token(args.journal) \
        or new_token()
    security = _security(args)
    scheme = "tls" if security is not None and security.tls else "tcp"
    host = _bind_host(args)
    contact = _contact(args.contact_address, scheme)
    if not _is_loopback(host):
        exposed = "unencrypted (no TLS): the traffic can be read on the network; " \
            if scheme == "tcp" else ""
        print(f"warning: the scheduler listens on {host}, reachable from other machines, "
              f"{exposed}anyone who has the token can run code here. Keep the connection file "
              "private.", file=sys.stderr)
    written: list = []   # (path, address) once the connection file exists
    idle = None if args.idle_timeout is None else _idle_timeout(args.idle_timeout)
    tune_gc_for_server()

    async def main():
        scheduler = await Scheduler(f"{scheme}://{_url_host(host)}:{args.port}", token=token,
                                    security=security, journal=args.journal,
                                    contact_address=contact,
                                    durable=args.durable,
                                    client_grace=parse_duration(args.client_grace,
                                                                "--client-grace")).start()
        if scheduler.keeper is not None:
            print(f"journal {scheduler.keeper.journal.path}: {scheduler.keeper.restored} "
                  "tasks taken back", flush=True)
        _close_on_signals(scheduler.close)   # before the file exists: no window to leave it
        if idle is not None:
            from .server.idle import IdleWatch

            IdleWatch(scheduler, idle).start()
        written.append((write_connection_file(scheduler.address, token, args.connection_file),
                        scheduler.address))
        print(f"nbcluster scheduler at {scheduler.address}", flush=True)
        dash = None
        if args.dashboard_port >= 0:
            try:
                from .dashboard.server import start_dashboard

                dash = start_dashboard(scheduler, host=host, port=args.dashboard_port)
                scheduler.dashboard_link = dash.link
                print(f"dashboard at {dash.link}", flush=True)
            except ImportError:
                print("no dashboard: install bokeh (pip install 'nbcluster[jupyter]')",
                      flush=True)
            except OSError as e:
                print(f"no dashboard: cannot listen on port {args.dashboard_port}: {e}",
                      flush=True)
        print(f"connection file (address and token, readable only by you): {written[0][0]}",
              flush=True)
        try:
            await scheduler.closed.wait()
        finally:
            await scheduler.close()
            if dash is not None:
                dash.stop()

    try:
        asyncio.run(main())
    finally:   # normal exit, SIGTERM, Ctrl-C, an error: the file names a scheduler no more
        for path, address in written:
            remove_connection_file(path, address, token)
    return 0


def _worker(args) -> int:
    from .config import (find_token, parse_memory_limit, parse_resources, read_connection_file,
                         tune_gc_for_server)

    address = args.address
    token = _token(args)
    if args.connection_file:
        address, token = read_connection_file(args.connection_file)
    if not address:
        raise SystemExit("nbcluster worker: give the scheduler address (tcp://HOST:PORT) or "
                         "--connection-file")
    token = token or find_token(address)
    security = _security(args)
    scheme = "tls" if security is not None and security.tls else "tcp"
    if args.nworkers < 1:
        raise ValueError(f"--nworkers must be at least 1, got {args.nworkers}")
    host = _bind_host(args)
    contact = _contact(args.contact_address, scheme)
    options = dict(queues=_queues(args.queues),    # checked here, before any process starts
                   resources=parse_resources(args.resources, "--resources"),
                   memory_limit=parse_memory_limit(args.memory_limit),
                   memory_spill=_fraction("--memory-spill", args.memory_spill),
                   spill_dir=args.spill_dir,
                   memory_pause=_fraction("--memory-pause", args.memory_pause),
                   memory_terminate=_fraction("--memory-terminate", args.memory_terminate),
                   reconnect_timeout=_duration("--reconnect-timeout", args.reconnect_timeout),
                   heartbeat_timeout=_duration("--heartbeat-timeout", args.heartbeat_timeout),
                   lifetime=_duration("--lifetime", args.lifetime),
                   lifetime_stagger=_duration("--lifetime-stagger", args.lifetime_stagger) or 0.0,
                   lifetime_grace=_duration("--lifetime-grace", args.lifetime_grace) or 60.0)
    if args.nworkers > 1:
        from .deploy.supervisor import run_supervisor

        return run_supervisor(address, args.nworkers,
                              lambda spec: _child_argv(args, address, token, spec),
                              token=token, memory_limit=args.memory_limit, name=args.name)
    if not _is_loopback(host):
        print(f"warning: the worker serves data on {host}, reachable from other machines"
              + ("" if scheme == "tls" else ", unencrypted"), file=sys.stderr)
    elif contact and not _is_loopback(contact.split("://")[1].rsplit(":", 1)[0].strip("[]")):
        print(f"warning: the worker listens on {host} only, which {contact} does not reach "
              "from other machines: add --host 0.0.0.0 or --interface NAME", file=sys.stderr)
    if args.supervised:
        _end_with_stdin()
    from .server.worker_lifetime import run_worker

    tune_gc_for_server()
    asyncio.run(run_worker(address, nthreads=args.nthreads, name=args.name, token=token,
                           listen_address=f"{scheme}://{_url_host(host)}:{args.port}",
                           security=security, contact_address=contact, **options))
    return 0


def _idle_timeout(text: str) -> float:
    seconds = parse_duration(text, "--idle-timeout")
    if seconds <= 0:
        raise ValueError(f"--idle-timeout must be positive, got {text!r}")
    return seconds


def _bind_host(args) -> str:
    """``--host``, or the IPv4 address of ``--interface`` (default: 127.0.0.1)."""
    if args.interface:
        from .comm.addressing import interface_ip

        if args.host is not None:
            raise ValueError("give --host or --interface, not both")
        return interface_ip(args.interface)
    return args.host or "127.0.0.1"


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _contact(text: str | None, scheme: str) -> str | None:
    """``--contact-address``, checked: ``SCHEME://HOST:PORT`` (port 0: the one bound)."""
    if not text:
        return None
    from .comm.addressing import choose_contact

    choose_contact(f"{scheme}://127.0.0.1:1", text, None)   # raises what is wrong with it
    return text


# Options of the supervisor alone, or that each of its workers gets its own value of.
_PER_PROCESS = {"address", "nworkers", "token", "token_stdin", "connection_file", "name",
                "port", "contact_address", "spill_dir", "memory_limit", "supervised", "help"}


def _child_argv(args, address: str, token: str | None, spec) -> list[str]:
    """``nbcluster worker`` for one of ``--nworkers``: every option given, as given, except
    those each gets its own of (name, port and contact port + index, spill subdirectory, its
    share of memory) and the token, which goes to its stdin."""
    i = spec.options["index"]
    argv = [sys.executable, "-m", "nbcluster", "--log-level", args.log_level, "worker",
            address, "--supervised", "--memory-limit", str(spec.memory_limit or "none")]
    for action in args.worker_parser._actions:
        value = getattr(args, action.dest, None)
        if not action.option_strings or action.dest in _PER_PROCESS or value is None \
                or value == action.default:
            continue
        flag = action.option_strings[-1]
        argv += [flag] if isinstance(action, argparse._StoreTrueAction) else [f"{flag}={value}"]
    if args.name:
        argv.append(f"--name={args.name}-{i}")
    if args.port:
        argv.append(f"--port={args.port + i}")
    if args.contact_address:
        from .comm.addressing import join, split

        c_scheme, c_host, c_port = split(args.contact_address)
        argv.append(f"--contact-address={join(c_scheme, c_host, c_port + i if c_port else 0)}")
    if args.spill_dir:
        argv.append(f"--spill-dir={os.path.join(args.spill_dir, spec.name)}")
    if token:
        argv.append("--token-stdin")
    return argv


def _end_with_stdin() -> None:
    """A worker of ``--nworkers``: its stdin is a pipe from its supervisor, which closes when
    the supervisor stops it or dies, even by SIGKILL. Then it closes as on SIGTERM."""
    import signal
    import threading

    def watch() -> None:
        try:
            for _ in sys.stdin:
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="nbcluster-supervisor-watch", daemon=True).start()


def _duration(option: str, text: str | None) -> float | None:
    from .durations import parse_duration

    if text is None:
        return None
    seconds = parse_duration(text, option)
    if seconds < 0 or (option == "--heartbeat-timeout" and seconds == 0):
        raise ValueError(f"{option} must be {'positive' if seconds == 0 else 'not negative'}"
                         f", got {text!r}")
    return seconds


def _fraction(option: str, text: str) -> float | None:
    from .config import check_fraction

    if text.strip().lower() == "none":
        return None
    try:
        return check_fraction(option, float(text))
    except ValueError:
        raise ValueError(f"{option} must be a fraction of the memory limit such as 0.8, or "
                         f"'none', got {text!r}") from None


def _queues(text: str | None) -> list[str] | None:
    if not text:
        return None
    from .client.options import check_queue_name

    return [check_queue_name(q.strip(), "--queues") for q in text.split(",")]


def _demo(args) -> int:
    from .demo import run_demo

    return run_demo(n_workers=args.workers, compare_dask=not args.no_dask, keep=args.keep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nbcluster", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("NBCLUSTER_LOG_LEVEL", "WARNING"))
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scheduler", help="run a scheduler")
    s.add_argument("--host", default=None,
                   help="address to listen on (default 127.0.0.1; 0.0.0.0: all interfaces)")
    s.add_argument("--port", type=int, default=8786)
    _add_address_options(s, "scheduler")
    _add_token_options(s)   # default: NBCLUSTER_TOKEN, else a new random token
    s.add_argument("--connection-file", default=None,
                   help="where to write address and token (default: a per-user runtime dir)")
    s.add_argument("--dashboard-port", type=int, default=0,
                   help="port of the dashboard (0: a free one, -1: none)")
    s.add_argument("--journal", default=None, metavar="PATH",
                   help="keep every task accepted and not yet done in this SQLite file; "
                        "a scheduler started again on it resumes them (and keeps its token)")
    s.add_argument("--durable", action="store_true",
                   help="with --journal: fsync every step, so that tasks survive a power cut "
                        "too (default: they survive the process being killed)")
    s.add_argument("--client-grace", default="60s",
                   help="after a restart, how long clients have to come back for their tasks")
    s.add_argument("--idle-timeout", default=None, metavar="DURATION",
                   help="exit once no client has been connected for this long, e.g. 10m "
                        "(default: never)")
    _add_tls_options(s)
    s.set_defaults(run=_scheduler)

    w = sub.add_parser("worker", help="run a worker")
    w.add_argument("address", nargs="?", help="the scheduler, tcp://HOST:PORT")
    w.add_argument("--nthreads", type=int, default=1)
    w.add_argument("--name", default=None)
    w.add_argument("--nworkers", type=int, default=1,
                   help="worker processes to run, each with --nthreads threads and its own "
                   "--memory-limit (auto: this machine's memory divided among them); one that "
                   "dies is replaced (default 1: this process is the worker)")
    w.add_argument("--host", default=None,
                   help="address the worker serves data on (default 127.0.0.1; 0.0.0.0: all "
                   "interfaces, advertising the one that routes to the scheduler)")
    w.add_argument("--port", type=int, default=0,
                   help="port to serve data on (0: a free one; with --nworkers, PORT+i)")
    _add_address_options(w, "worker")
    _add_token_options(w)
    w.add_argument("--connection-file", default=None)
    w.add_argument("--queues", default=None, help="queues to take tasks from, e.g. high,default")
    w.add_argument("--resources", default=None, metavar="NAME=AMOUNT,...",
                   help="what this worker has, e.g. GPU=1,MEM=16e9: tasks submitted with "
                        "resources={'GPU': 1} run only where that much is free")
    w.add_argument("--memory-limit", default="auto",
                   help="e.g. 4GB; auto: this machine's memory; none: no limit")
    w.add_argument("--memory-spill", default="0.6",
                   help="results beyond this fraction of the limit go to disk (none: never)")
    w.add_argument("--spill-dir", default=None,
                   help="where spilled results go (default: a new temporary directory)")
    w.add_argument("--memory-pause", default="0.8",
                   help="start no new task above this fraction of the limit (none: never)")
    w.add_argument("--memory-terminate", default="0.95",
                   help="end the process above this fraction of the limit (none: never)")
    w.add_argument("--reconnect-timeout", default=None,
                   help="how long to seek a lost scheduler at the same address, e.g. 60s or "
                   "5 minutes; 0: exit at once (default: 60s if the scheduler keeps a "
                   "journal, else 0)")
    w.add_argument("--heartbeat-timeout", default="30s",
                   help="a scheduler silent this long is treated as lost (default 30s)")
    w.add_argument("--lifetime", default=None,
                   help="retire gracefully after this long, e.g. 55m (a batch job's walltime "
                   "less a margin): its work and results move to other workers, then it exits")
    w.add_argument("--lifetime-stagger", default=None,
                   help="vary the lifetime by up to this much either way (e.g. 2m), so that "
                   "workers started together do not all leave together")
    w.add_argument("--lifetime-grace", default="60s",
                   help="after asking to retire, close anyway if not let go within this long")
    _add_tls_options(w)
    w.add_argument("--supervised", action="store_true", help=argparse.SUPPRESS)
    w.set_defaults(run=_worker, worker_parser=w)

    d = sub.add_parser(
        "demo", help="start a local cluster and run the reference workloads",
        description="Start a local cluster (and its dashboard), run the reference workloads "
        "with progress bars, then time the same workloads on dask.distributed. Everything "
        "listens on 127.0.0.1 only. The dashboard link works while the nbcluster cluster runs: "
        "it is closed once its workloads are done (the output says so), unless --keep keeps "
        "it open until Ctrl-C.")
    d.add_argument("--workers", type=int, default=2)
    d.add_argument("--no-dask", action="store_true", help="do not run the same workloads on dask")
    d.add_argument("--keep", action="store_true",
                   help="keep the cluster and its dashboard running after the results, "
                   "until Ctrl-C")
    d.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except SchedulerLostError as e:   # a supervisor replaces no worker that ends so
        print(f"nbcluster {args.command}: {e}", file=sys.stderr)
        return SCHEDULER_LOST_EXIT_CODE if getattr(args, "supervised", False) else 1
    except (NBClusterError, OSError, ValueError) as e:
        print(f"nbcluster {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
