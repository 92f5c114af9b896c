"""The ``%cluster`` line magic: a thin shim over ``ClusterSession``."""

from __future__ import annotations

import argparse
import shlex
from typing import Any, Callable

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from .session import ClusterSession, SessionError

BATCH_SYSTEMS = ("slurm", "pbs", "sge", "lsf")
BATCH_OPTIONS = ("jobs", "cores", "memory", "job_processes", "walltime", "queue", "account",
                 "job_extra")
SUBCOMMANDS = ("start", "connect", "status", "scale", "restart", "stop", "dashboard")


def _parsers() -> dict[str, MagicArgumentParser]:
    def parser(name: str, description: str) -> MagicArgumentParser:
        return MagicArgumentParser(prog=f"%cluster {name}", description=description,
                                   add_help=False, formatter_class=argparse.HelpFormatter)

    start = parser("start", "Start a LocalCluster (or, with --slurm/--pbs/--sge/--lsf, workers "
                   "in batch jobs) and a client bound to a notebook variable.")
    start.add_argument("-n", "--workers", type=int, default=None,
                       help="number of workers (default: one per core; batch: none)")
    start.add_argument("--threads", type=int, default=None, help="threads per worker (default 1)")
    start.add_argument("--processes", dest="processes", action="store_true", default=True,
                       help="one process per worker (default)")
    start.add_argument("--no-processes", dest="processes", action="store_false",
                       help="run the scheduler and workers in this kernel's process")
    start.add_argument("--memory-limit", default="auto",
                       help="per worker: bytes, like '2GB', 'auto' (default) or 'none'")
    start.add_argument("--name", default="client",
                       help="variable name for the client (default: client)")
    start.add_argument("--journal", default=None, metavar="PATH",
                       help="keep the scheduler's tasks in this file: a cluster started again "
                            "on it takes them back")
    system = start.add_mutually_exclusive_group()
    for name in BATCH_SYSTEMS:
        system.add_argument(f"--{name}", dest="system", action="store_const", const=name,
                            help=f"workers in {name.upper()} jobs (the scheduler runs here)")
    start.add_argument("--jobs", type=int, default=None, help="batch: jobs to submit")
    start.add_argument("--cores", type=int, default=None, help="batch: cores of one job")
    start.add_argument("--memory", default=None, help="batch: memory of one job, e.g. 32GB")
    start.add_argument("--job-processes", type=int, default=None, metavar="N",
                       help="batch: worker processes per job (default 1)")
    start.add_argument("--walltime", default=None, help="batch: e.g. 01:00:00")
    start.add_argument("--queue", default=None, help="batch: queue (SLURM: partition)")
    start.add_argument("--account", default=None,
                       help="batch: account (SLURM, PBS) or project (SGE, LSF)")
    start.add_argument("--job-extra", action="append", default=None, metavar="DIRECTIVE",
                       help="batch: one more directive (repeat it), e.g. --job-extra=--gres=gpu:1")
    connect = parser("connect", "Connect a client to a running scheduler.")
    connect.add_argument("address", help="scheduler address, like tcp://127.0.0.1:8786")
    connect.add_argument("--token", default=None,
                         help="the cluster's token (default: NBCLUSTER_TOKEN or its "
                              "connection file)")
    connect.add_argument("--name", default="client", help="variable name for the client")
    scale = parser("scale", "Add or retire workers until there are N.")
    scale.add_argument("n", type=int, metavar="N", help="number of workers")
    return {"start": start, "connect": connect, "scale": scale,
            "status": parser("status", "Workers, threads, memory, tasks by state, dashboard."),
            "restart": parser("restart", "Forget every task (all futures are cancelled) "
                              "and start the workers afresh."),
            "stop": parser("stop", "Close the client and the cluster it started."),
            "dashboard": parser("dashboard", "Show the dashboard link.")}


PARSERS = _parsers()


def _doc() -> str:
    parts = ["Start, inspect, scale and stop an nbcluster cluster from a notebook.", "",
             "Usage: %cluster SUBCOMMAND [options]", ""]
    for name in SUBCOMMANDS:
        text = PARSERS[name].format_help().replace("usage: ", "").rstrip()
        parts += ["  " + line if line else "" for line in text.splitlines()
                  if line.strip() != "options:"] + [""]
    parts += ["Examples:", "  %cluster start -n 2 --threads 1",
              "  %cluster start --slurm --jobs 4 --cores 8 --memory 32GB --walltime 01:00:00",
              "  %cluster status",
              "  %cluster scale 4", "  %cluster restart", "  %cluster stop", "",
              "Load with %load_ext nbcluster; to have %cluster without it, add to the profile's",
              "ipython_kernel_config.py:  c.MagicsManager.lazy_magics = {'cluster': 'nbcluster'}"]
    return "\n".join(parts)


def _memory_limit(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "0", "off", "no"):
        return None
    if low == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        return text


@magics_class
class ClusterMagics(Magics):
    """Holds the notebook's ClusterSession; ``%cluster ...`` dispatches on its first word."""

    def __init__(self, shell: Any, session: ClusterSession | None = None,
                 on_client: Callable[[Any], None] | None = None,
                 display: Callable[[Any], None] | None = None) -> None:
        super().__init__(shell)
        self._session = session or ClusterSession()
        self._on_client = on_client
        self._display = display
        self._var: str | None = None
        self._widgets: list[Any] = []

    @line_magic
    def cluster(self, line: str = "") -> Any:
        words = self._split(line)
        if not words or words[0] in ("-h", "--help", "help"):
            print(_doc())
            return None
        sub, args = words[0], words[1:]
        if sub not in SUBCOMMANDS:
            raise UsageError(f"%cluster: unknown subcommand {sub!r}; choose from "
                             f"{', '.join(SUBCOMMANDS)} (see %cluster?)")
        parser = PARSERS[sub]
        if "-h" in args or "--help" in args:
            print(parser.format_help().rstrip())
            return None
        try:
            opts = parser.parse_args(args)
        except UsageError as e:
            raise UsageError(f"%cluster {sub}: {e}".replace("\n", " ")) from None
        try:
            return getattr(self, f"_{sub}")(opts)
        except SessionError as e:
            raise UsageError(f"%cluster {sub}: {e}") from None

    cluster.__doc__ = _doc()

    @staticmethod
    def _split(line: str) -> list[str]:
        try:   # a trailing "# comment" is the user's, as in Python: not an argument
            return shlex.split(line, comments=True)
        except ValueError as e:
            raise UsageError(f"%cluster: {e}") from None

    # ------------------------------------------------------------------ subcommands
    def _start(self, opts: Any) -> None:
        if opts.workers is not None and opts.workers < 0:
            raise SessionError(f"-n/--workers must be >= 0, got {opts.workers}")
        if opts.threads is not None and opts.threads < 1:
            raise SessionError(f"--threads must be >= 1, got {opts.threads}")
        self._check_name(opts.name)
        if opts.system is not None:
            client = self._start_batch(opts)
        else:
            given = [o for o in BATCH_OPTIONS if getattr(opts, o) is not None]
            if given:
                raise SessionError(f"--{given[0].replace('_', '-')} is for batch jobs: add "
                                   "--slurm, --pbs, --sge or --lsf")
            client = self._session.start(opts.workers, opts.threads or 1, opts.processes,
                                         _memory_limit(opts.memory_limit), opts.journal)
        self._bind(opts.name, client)
        self._show_widget()

    def _start_batch(self, opts: Any) -> Any:
        if opts.threads is not None or opts.journal or opts.memory_limit != "auto":
            raise SessionError("with a batch system give --cores, --memory and "
                               "--job-processes per job (not --threads, --memory-limit, "
                               "--journal)")
        if opts.cores is None or opts.memory is None:
            raise SessionError(f"--{opts.system} needs --cores and --memory (of one job)")
        account = "project" if opts.system in ("sge", "lsf") else "account"
        options = {"cores": opts.cores, "memory": opts.memory, "processes": opts.job_processes,
                   "walltime": opts.walltime, "queue": opts.queue, account: opts.account,
                   "job_extra_directives": opts.job_extra, "n_workers": opts.workers or 0}
        client = self._session.start_batch(opts.system, opts.jobs or 0, **options)
        print(f"nbcluster: {self._session.cluster!r}")
        return client

    def _connect(self, opts: Any) -> None:
        self._check_name(opts.name)
        client = self._session.connect(opts.address, opts.token)
        self._bind(opts.name, client)
        self._show_widget()

    def _status(self, opts: Any) -> Any:
        from .html import StatusReport

        self._session.require()
        report = StatusReport(self._session.snapshot())
        self._show(report)
        return None

    def _scale(self, opts: Any) -> None:
        self._session.scale(opts.n)
        print(f"nbcluster: {len(self._session.cluster.workers)} workers")

    def _restart(self, opts: Any) -> None:
        client = self._session.require()
        client.restart()
        n = len(client.scheduler_info()["workers"])
        print(f"nbcluster: restarted: {n} workers, every future cancelled")

    def _stop(self, opts: Any) -> None:
        client = self._session.client
        address = getattr(client, "scheduler_address", "")
        if not self._session.stop():
            print("nbcluster: no cluster to stop")
            return
        self._unbind(client)
        print(f"nbcluster: stopped {address}")

    def _dashboard(self, opts: Any) -> None:
        """In a kernel: the live task stream and memory plots inline (over the kernel's own
        channel, so it works on Binder), and the link to the full dashboard page."""
        self._session.require()
        link = self._session.dashboard_link
        if link:
            self._show(_Link(link))
        if _in_kernel(self.shell):
            try:
                self._show(self._session.client.dashboard())
            except ImportError as e:
                print(f"nbcluster: no inline dashboard ({e}); install 'nbcluster[jupyter]'")
        elif not link:
            print("nbcluster: this cluster has no dashboard")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_name(name: str) -> None:
        if not name.isidentifier():
            raise SessionError(f"--name must be a Python identifier, got {name!r}")

    @property
    def _user_ns(self) -> dict[str, Any]:
        """The notebook's namespace: magics are made with their shell."""
        if self.shell is None:
            raise SessionError("%cluster has no IPython shell")
        return self.shell.user_ns

    def _bind(self, name: str, client: Any) -> None:
        self._var = name
        self._user_ns[name] = client
        if self._on_client is not None:
            self._on_client(client)

    def _unbind(self, client: Any) -> None:
        if self._var and self._user_ns.get(self._var) is client:
            del self._user_ns[self._var]
        self._var = None

    def _show(self, obj: Any) -> None:
        if self._display is not None:
            self._display(obj)
            return
        from IPython.display import display

        display(obj)

    def _show_widget(self) -> None:
        if not _in_kernel(self.shell):
            from .html import StatusReport

            self._show(StatusReport(self._session.snapshot()))
            return
        from .widgets import ClusterWidget

        for old in self._widgets:
            old.close()
        widget = ClusterWidget(self._session)
        self._widgets = [widget]
        self._show(widget)

    def close(self) -> None:
        """Unloading the extension: stop the cluster this magic started, close widgets."""
        for w in self._widgets:
            w.close()
        self._widgets = []
        client = self._session.client
        if self._session.stop():
            self._unbind(client)


class _Link:
    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"Dashboard: {self.url}"

    def _repr_html_(self) -> str:
        from html import escape

        u = escape(self.url, quote=True)
        return f"Dashboard: <a href='{u}' target='_blank'>{escape(self.url)}</a>"


def _in_kernel(shell: Any) -> bool:
    return getattr(shell, "kernel", None) is not None and type(shell).__name__ == "ZMQInteractiveShell"
