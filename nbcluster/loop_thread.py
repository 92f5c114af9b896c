"""An asyncio event loop on a daemon thread: the client's I/O thread, an in-process cluster,
the dashboard's own loop. One implementation, so all of them start and stop the same way."""

from __future__ import annotations

import asyncio
import signal
import threading
from typing import Awaitable, Callable


def close_on_sigterm(close: Callable[[], Awaitable]) -> None:
    """In a server process's running loop: SIGTERM (``kill``, systemd, SSHCluster's stop)
    closes the server in order instead of killing it mid-write."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(close()))
    except (NotImplementedError, RuntimeError, ValueError):   # not the main thread, Windows
        pass


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(started,), name=name, daemon=True)
        self.thread.start()
        started.wait()

    def _main(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(started.set)
        try:
            self.loop.run_forever()
            # cancel leftovers so nothing warns at interpreter exit
            pending = asyncio.all_tasks(self.loop)
            for task in pending:
                task.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            self.loop.close()

    def run(self, coro, timeout: float | None = 30):
        """Run ``coro`` on the loop from another thread and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self, timeout: float = 10) -> None:
        if self.loop.is_closed():
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:   # closed meanwhile
            return
        if threading.current_thread() is not self.thread:
            self.thread.join(timeout)
