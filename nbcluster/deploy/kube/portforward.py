"""``kubectl port-forward``: how a notebook outside the cluster reaches the scheduler.

Chosen over the client library's websocket port-forward because kubectl is what users already
run and trust (it handles every authentication plugin in their kubeconfig), it serves any
number of connections on a real local port, and it is the command they can run by hand:
``kubectl port-forward -n NAMESPACE pod/NAME-scheduler-xxxxx 8786 8787``.

The first start picks free local ports; if kubectl exits (a network blip ends it) it is
started again on the same local ports, so clients reconnect to the address they know.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from collections import deque

from ...errors import ClusterError

logger = logging.getLogger("nbcluster.deploy.kube")

FORWARDING = re.compile(r"Forwarding from (?:127\.0\.0\.1|\[::1\]):(\d+) -> (\d+)")
RESTARTS = 5          # attempts in a row before giving up
RESTART_PAUSE = 1.0   # seconds between them


class PortForward:
    """Forward local ports to ``ports`` of ``target`` (``pod/NAME``) in ``namespace``."""

    def __init__(self, namespace: str, target: str, ports: list[int], kubectl: str = "kubectl",
                 timeout: float = 30.0) -> None:
        path = shutil.which(kubectl)
        if path is None:
            raise ClusterError(f"KubeCluster: port_forward needs kubectl ({kubectl!r} is not on "
                               "PATH): install it, pass kubectl='/path/to/kubectl', or run the "
                               "notebook inside the cluster (port_forward=False)")
        self.command = [path, "port-forward", "-n", namespace, target]
        self.ports = list(ports)
        self.timeout = timeout
        self.local: dict[int, int] = {}    # remote port -> local port
        self.output: deque[str] = deque(maxlen=20)
        self._proc: subprocess.Popen | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> dict[int, int]:
        """Start kubectl; ``{remote port: local port}`` once it forwards them all."""
        mapped = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(mapped,), daemon=True,
                                        name="nbcluster-kube-portforward")
        self._thread.start()
        if not mapped.wait(self.timeout) or len(self.local) < len(self.ports):
            self.stop()
            raise ClusterError(f"KubeCluster: `{' '.join(self.command)}` did not forward ports "
                               f"{self.ports} within {self.timeout:g} s; its output:\n    "
                               + ("\n    ".join(self.output) or "(none)"))
        return dict(self.local)

    def _spawn(self) -> subprocess.Popen | None:
        # the same local ports again once known, so addresses stay valid across restarts
        specs = [f"{self.local.get(p, '')}:{p}" for p in self.ports]
        with self._lock:
            if self._stopping.is_set():
                return None
            self._proc = subprocess.Popen(self.command + specs, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          text=True)
            return self._proc

    def _run(self, mapped: threading.Event) -> None:
        failures = 0
        while not self._stopping.is_set():
            proc = self._spawn()
            if proc is None:
                break
            started = time.monotonic()
            assert proc.stdout is not None
            for line in proc.stdout:   # read to the end: unread output would stall kubectl
                line = line.rstrip()
                self.output.append(line)
                match = FORWARDING.search(line)
                if match and not mapped.is_set():
                    self.local[int(match.group(2))] = int(match.group(1))
                    if set(self.local) >= set(self.ports):
                        mapped.set()
            code = proc.wait()
            if self._stopping.is_set() or not mapped.is_set():
                break
            failures = failures + 1 if time.monotonic() - started < 10 * RESTART_PAUSE else 1
            if failures > RESTARTS:
                logger.error("kubectl port-forward ended %d times in a row; the scheduler is no "
                             "longer reachable from here. Its output:\n%s", RESTARTS,
                             "\n".join(self.output))
                break
            logger.warning("kubectl port-forward exited (code %s); starting it again", code)
            self._stopping.wait(RESTART_PAUSE)
        mapped.set()   # (start() sees the ports missing)

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
