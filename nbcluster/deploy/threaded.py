"""The event loop thread an in-process cluster runs on (see nbcluster.loop_thread)."""

from ..loop_thread import LoopThread

__all__ = ["LoopThread"]
