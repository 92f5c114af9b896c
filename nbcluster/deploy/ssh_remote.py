"""One scheduler or worker process on another machine, started and stopped over SSH.

Each remote process has its own SSH connection (OpenSSH serves at most 10 sessions on one
connection by default) and runs under a pseudo-terminal: when the connection drops, because
this Python process or its notebook kernel died, sshd hangs up the terminal and the remote
process gets SIGHUP and exits, so no scheduler or worker outlives its cluster.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import shlex
from typing import Any, Callable

from ..errors import ClusterError, ConnectError

logger = logging.getLogger("nbcluster.deploy.ssh")

PID_PREFIX = "NBCLUSTER_PID "
TAIL_LINES = 40
# Writes the TLS files it reads (as JSON) from stdin into a new private directory and prints
# the directory. One line, so that any remote login shell accepts it.
_TLS_SCRIPT = ("import json,os,sys,tempfile;d=tempfile.mkdtemp(prefix='nbcluster-tls-');"
               "w=lambda n,t:os.write(os.open(os.path.join(d,n),os.O_WRONLY|os.O_CREAT,0o600),"
               "t.encode());[w(n,t) for n,t in json.load(sys.stdin).items()];print(d)")


def import_asyncssh():
    try:
        import asyncssh
    except ImportError as e:
        raise ImportError("SSHCluster needs asyncssh: pip install 'nbcluster[ssh]'") from e
    return asyncssh


async def connect(host: str, options: dict, timeout: float):
    """An SSH connection to ``host``, or a ConnectError that names it and says what to check."""
    asyncssh = import_asyncssh()
    where = f"{options.get('username', '')}@{host}".lstrip("@") + f":{options.get('port', 22)}"
    try:
        return await asyncio.wait_for(asyncssh.connect(host, **options), timeout)
    except asyncssh.PermissionDenied as e:
        hint = "check username and client_keys in connect_options"
        reason = f"login refused ({e.reason})"
    except asyncssh.HostKeyNotVerifiable as e:
        hint = "add the host to known_hosts, or pass known_hosts=... in connect_options"
        reason = f"host key not trusted ({e.reason})"
    except (asyncssh.Error, OSError) as e:
        hint = "check the host name, the port in connect_options and that sshd runs there"
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
    except asyncio.TimeoutError:
        hint = "check the host name, the port in connect_options and the network"
        reason = f"no answer within {timeout:g} s"
    raise ConnectError(f"SSHCluster: cannot connect to {where} over SSH: {reason}; {hint}")


async def host_memory(host: str, options: dict, python: list[str], timeout: float) -> int | None:
    """The memory of ``host`` in bytes, as the remote Python sees it (what a worker there
    takes for "auto"); None if it cannot be told."""
    command = " ".join(shlex.quote(a) for a in [
        *python, "-c", "import psutil; print(psutil.virtual_memory().total)"])
    try:
        conn = await connect(host, options, timeout)
    except Exception:
        return None
    try:
        # under a terminal, so the command ends with the connection if it hangs
        result = await asyncio.wait_for(conn.run(command, term_type="dumb", check=False),
                                        timeout)
        words = str(result.stdout or "").split()
        return int(words[-1]) if result.exit_status == 0 and words else None
    except Exception:
        return None
    finally:
        conn.close()


class RemoteProcess:
    """``nbcluster scheduler`` or ``nbcluster worker`` running on ``host``.

    ``start`` returns once the process has printed its address; a process that exits or stays
    silent first raises ClusterError with its last output. ``on_exit(self, returncode)`` is
    called when it ends without ``stop`` having been called.
    """

    def __init__(self, role: str, name: str, host: str, connect_options: dict,
                 python: list[str], on_exit: Callable[["RemoteProcess", int | None], None]):
        self.role = role
        self.name = name
        self.host = host
        self.connect_options = connect_options
        self.python = python
        self.on_exit = on_exit
        self.conn: Any = None        # asyncssh's SSHClientConnection (imported when used)
        self.process: Any = None     # and SSHClientProcess
        self.pid: int | None = None
        self.address: str | None = None
        self.dashboard_link: str | None = None
        self.returncode: int | None = None
        self.stopping = False
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._tls_dir: str | None = None
        self._ready: asyncio.Future[None]   # made by start, on the loop; read after it
        self._stopped: asyncio.Future | None = None
        self.exited = asyncio.Event()

    def __repr__(self) -> str:
        return f"<{self.role} {self.name} on {self.host} pid={self.pid} {self.address}>"

    @property
    def what(self) -> str:
        return f"the {self.role} on {self.host}" + (f" ({self.name})" if self.role == "worker" else "")

    def output(self) -> str:
        return "\n".join(f"    {line}" for line in self.tail) or "    (no output)"

    def _hint(self, text: str) -> str:
        python = " ".join(self.python)
        if "No module named" in text and "nbcluster" in text:
            return (f"nbcluster is not installed for {python} on {self.host}: install it there "
                    "(pip install nbcluster, the same version as here), or pass remote_python=")
        if "not found" in text or "No such file" in text or self.returncode == 127:
            return (f"is remote_python={python!r} right for {self.host}? Pass the path of a "
                    "Python that has nbcluster installed")
        return f"check remote_python and that nbcluster is installed on {self.host}"

    def _failure(self, problem: str) -> ClusterError:
        return ClusterError(f"SSHCluster: {self.what} {problem}; its last output:\n"
                            f"{self.output()}\n{self._hint(chr(10).join(self.tail))}")

    async def start(self, args: list[str], token: str, security, timeout: float) -> None:
        asyncssh = import_asyncssh()
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        deadline = loop.time() + timeout
        self.conn = await connect(self.host, self.connect_options, timeout)
        if security is not None and security.tls:
            args = args + await self._upload_tls(security, deadline - loop.time())
        # The token goes to the process's stdin, which the CLI reads with --token-stdin.
        # On a command line it would show in `ps` to every user of the remote machine; as an
        # environment variable it needs AcceptEnv in sshd_config (off by default); as an
        # `export` in the command string it would sit in the remote shell's argv until exec.
        # The pseudo-terminal has echo off, so the token is not sent back either.
        command = f"echo {PID_PREFIX}$$; exec " + " ".join(
            shlex.quote(a) for a in [*self.python, "-m", "nbcluster", *args])
        try:
            self.process = await self.conn.create_process(
                command, term_type="dumb", term_modes={asyncssh.PTY_ECHO: 0},
                encoding="utf-8", errors="replace")
        except asyncssh.Error as e:
            raise ClusterError(f"SSHCluster: cannot start {self.what}: {e.reason}") from e
        asyncio.ensure_future(self._read(token))
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), max(0.0, deadline - loop.time()))
        except asyncio.TimeoutError:
            raise self._failure(f"did not report its address within {timeout:g} s") from None

    async def _upload_tls(self, security, timeout: float) -> list[str]:
        """Copy the cluster's TLS files into a private directory on the host (over SSH)."""
        files = {}
        for name, path in (("ca.pem", security.tls_ca_file), ("cert.pem", security.tls_cert),
                           ("key.pem", security.tls_key)):
            with open(path) as f:
                files[name] = f.read()
        command = " ".join(shlex.quote(a) for a in [*self.python, "-c", _TLS_SCRIPT])
        try:
            result = await asyncio.wait_for(
                self.conn.run(command, input=json.dumps(files), check=False), timeout)
        except asyncio.TimeoutError:
            raise self._failure(f"did not copy the TLS files within {timeout:g} s") from None
        if result.exit_status != 0:
            self.returncode = result.exit_status
            self.tail.extend(str(result.stderr or "").splitlines())
            raise self._failure(f"could not copy the TLS files (exit code {result.exit_status})")
        self._tls_dir = str(result.stdout).strip()
        d = self._tls_dir + "/"
        return ["--tls-ca-file", d + "ca.pem", "--tls-cert", d + "cert.pem",
                "--tls-key", d + "key.pem", *(["--require-encryption"]
                                              if security.require_encryption else [])]

    async def _read(self, token: str) -> None:
        """Read the process's output to its end (unread output would stall it), then report."""
        try:
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    break
                line = line.rstrip("\r\n")
                if self.pid is None and line.startswith(PID_PREFIX):
                    self.pid = int(line[len(PID_PREFIX):])
                    try:
                        self.process.stdin.write(token + "\n")
                    except Exception:   # it is gone already: its output says why
                        pass
                    continue
                self.tail.append(line)
                logger.debug("%s %s: %s", self.host, self.name, line)
                self._parse(line)
            await self.process.wait_closed()
        except Exception as e:   # the connection broke
            self.tail.append(f"(SSH connection lost: {e})")
        self.returncode = self.process.returncode
        self.exited.set()
        if not self._ready.done():
            code = "the SSH connection closed" if self.returncode is None else \
                f"exit code {self.returncode}"
            self._ready.set_exception(self._failure(f"exited before it was ready ({code})"))
        elif not self.stopping:
            self.on_exit(self, self.returncode)

    def _parse(self, line: str) -> None:
        words = line.split()
        if self.role == "scheduler":
            if line.startswith("nbcluster scheduler at "):
                self.address = words[-1]
            elif line.startswith("dashboard at "):
                self.dashboard_link = words[-1]
            elif line.startswith("connection file") and self.address and not self._ready.done():
                self._ready.set_result(None)     # the last line the scheduler prints at start
        elif line.startswith("nbcluster worker ") and " joined " in line and len(words) > 2:
            self.address = words[2]
            if not self._ready.done():
                self._ready.set_result(None)

    async def stop(self, grace: float = 5.0) -> None:
        """Terminate the process, kill it if it is still there after ``grace`` seconds, and
        close the connection. Safe to call at any stage of ``start``, and again (concurrent
        callers wait for the same stop)."""
        self.stopping = True
        if self._stopped is None:
            self._stopped = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stopped)

    async def _stop(self, grace: float) -> None:
        if self.conn is None:
            return
        try:
            if self.pid is not None and not self.exited.is_set():
                # kill(1) over the same connection: OpenSSH ignores SSH "signal" requests
                for signal, wait in (("TERM", grace), ("KILL", 5.0)):
                    await asyncio.wait_for(self.conn.run(f"kill -{signal} {self.pid}"), 5.0)
                    try:
                        await asyncio.wait_for(self.exited.wait(), wait)
                        break
                    except asyncio.TimeoutError:
                        continue
            if self._tls_dir:
                await asyncio.wait_for(self.conn.run(f"rm -rf -- {shlex.quote(self._tls_dir)}"),
                                       5.0)
        except Exception as e:   # the connection is gone: the hang-up ends the process
            logger.debug("stopping %s: %s", self.what, e)
        finally:
            self.conn.close()
            try:
                await asyncio.wait_for(self.conn.wait_closed(), 5.0)
            except Exception:
                pass
            self.conn = None
