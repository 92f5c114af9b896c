"""Thin I/O shells around the state machines: the scheduler and the worker."""
