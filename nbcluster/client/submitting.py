"""``submit`` and ``map``: task specs built and sent, one Future per task. A base of Client."""

from __future__ import annotations

import gc
from typing import Any, Callable, Iterable

from ..errors import ClusterError
from ..protocol import messages as m
from ..protocol.serialize import all_plain, dumps
from .functions import FunctionCache
from .future import Future
from .options import OPTION_NAMES, build_options
from .structure import call_digest, check_iterables


def funcname(fn) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    if name == "<lambda>":
        name = "lambda"
    return name.replace("-", "_").replace(" ", "_")[:40] or "task"


class Submitting:
    _conn: Any
    _records: dict
    _closed: bool
    _uid: str
    _counter: Any
    _functions: FunctionCache

    def _check_usable(self) -> None:
        if self._closed:
            raise ClusterError("this client is closed")
        self._conn.check_open()

    def _spec(self, fn: Callable, token: str, args: tuple, kwargs: dict, key: str | None,
              options, prefix: str | None = None, pure: bool = False) -> m.TaskSpec:
        """The task spec of one call of ``fn`` (named by ``token``); ``pure``: the key is a
        digest of the function and arguments, so the same call made again is the same task."""
        if key is None:
            if not pure:
                key = f"{prefix or funcname(fn)}-{self._uid}{next(self._counter):x}"
        elif not isinstance(key, str) or not key:
            raise TypeError(f"key must be a non-empty string, got {key!r}")
        # pure and no key yet: named below by a digest of the spec
        if not kwargs and all_plain(args):
            spec = m.TaskSpec(key or "", token, list(args), None, [], options)
        else:
            refs: list = []
            name = funcname(fn)
            sargs = dumps(args, refs, what=f"an argument of {name}()")
            skw = dumps(kwargs, refs, what=f"a keyword argument of {name}()") if kwargs else None
            spec = m.TaskSpec(key or "", token, sargs, skw, list(dict.fromkeys(refs)), options)
        if key is None:
            spec.key = f"{prefix or funcname(fn)}-{call_digest(spec)}"
        return spec

    def _submit_one(self, fn: Callable, args: tuple, kwargs: dict, key: str | None, options,
                    pure: bool = False) -> Future:
        """One new task (submit, submit_call)."""
        token = self._functions.acquire(fn)
        try:
            spec = self._spec(fn, token, args, kwargs, key, options, pure=pure)
        except BaseException:
            self._functions.release(token)   # nothing was sent: the use goes back
            raise
        return self._post_specs([spec], token)[0]

    def _post_specs(self, specs: list[m.TaskSpec], token: str) -> list[Future]:
        """Futures for ``specs`` (tasks of the function named ``token``); sends those whose
        key this client does not hold already. Refuses (once per call, not per task) when the
        client is closed or disconnected. The caller holds a use of ``token`` (see
        ``FunctionCache.acquire``): it passes to the futures' records, after the SUBMIT, so
        that no release of the token can be posted before a task that names it."""
        futures: list[Future] = []
        try:
            self._check_usable()
            records, new = self._records, []
            for spec in specs:
                key = spec.key
                if key not in records:
                    new.append(spec)
                futures.append(Future(key, self))
            if new:
                if self._conn.listeners["submit"]:   # before it can run: observers see it first
                    self._conn.emit("submit", [s.key for s in new])
                self._conn.post(m.Submit(new))
        finally:
            self._functions.hold(token, [f._record for f in futures])
        return futures

    @staticmethod
    def _split_options(kwargs: dict) -> tuple[dict, dict | None]:
        """Separate task-control keywords from the function's own keyword arguments."""
        if not kwargs:
            return kwargs, None
        control = {k: kwargs.pop(k) for k in OPTION_NAMES if k in kwargs}
        return kwargs, build_options(control)

    def submit(self, fn: Callable, *args, key: str | None = None, **kwargs) -> Future:
        """Run ``fn(*args, **kwargs)`` on the cluster; futures in the arguments are inputs.

        Task control (keywords not passed to ``fn``): ``priority`` (higher first),
        ``workers`` (addresses allowed to run it), ``queue``, ``retries``, ``retry_on``,
        ``retry_backoff``, ``retry_backoff_max``, ``retry_jitter``, ``rate_limit`` ("10/s"),
        ``limit_key``, ``concurrency``, ``timeout`` (seconds), ``countdown``/``eta``,
        ``expires`` and ``collect_errors`` (inputs that failed arrive as their exceptions).
        Durations also take text: ``timeout="10 ms"``, ``countdown="2 minutes"``.

        ``pure=True``: the key is a digest of the function and its arguments, so submitting
        the same call again (from this client) gives the same task, computed once. By default
        every call is a new task (dask's ``pure=False``), which is right for functions with
        side effects or randomness.
        """
        pure = _pure_flag(kwargs)
        kwargs, options = self._split_options(kwargs)
        return self._submit_one(fn, args, kwargs, key, options, pure)

    def submit_call(self, fn: Callable, args: tuple = (), kwargs: dict | None = None,
                    options: dict | None = None) -> Future:
        """One new task, ``fn(*args, **kwargs)``: unlike ``submit``, no keyword is taken for a
        task option (nor ``key``, ``pure``), all go to ``fn``. ``options`` are task options
        already checked by ``options.build_options`` (None: the defaults). What
        ``concurrent.futures.Executor.submit`` needs (``client.get_executor()``)."""
        return self._submit_one(fn, args, kwargs or {}, None, options)

    def map(self, fn: Callable, *iterables: Iterable, key: str | list | None = None,
            **kwargs) -> list[Future]:
        """``submit(fn, *args, **kwargs)`` for each tuple of ``zip(*iterables)``; the same task
        control keywords (and ``pure``) as ``submit`` apply to every task. ``key`` is a name
        the tasks' keys start with (``"load"`` gives ``load-...``), or a list of keys, one per
        task."""
        self._check_usable()     # before pickling any argument
        pure = _pure_flag(kwargs)
        inputs = check_iterables(iterables)
        kwargs, options = self._split_options(kwargs)
        prefix, keys = None, None
        if isinstance(key, str) and key:
            prefix = key
        elif isinstance(key, (list, tuple)):
            keys = list(key)
        elif key is not None:
            raise TypeError(f"key must be a name (a non-empty string) or a list of keys, "
                            f"got {key!r}")
        token = self._functions.acquire(fn)
        specs = []
        # Many small objects and no garbage: the cyclic GC would rescan them over and over.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            try:
                for i, args in enumerate(zip(*inputs)):
                    specs.append(self._spec(fn, token, args, kwargs, keys[i]
                                            if keys and i < len(keys) else None, options,
                                            prefix, pure))
                if keys is not None and len(keys) != len(specs):
                    raise ValueError(f"map got {len(keys)} keys for {len(specs)} tasks: give "
                                     "one key per task")
            except BaseException:
                self._functions.release(token)   # nothing was sent: the use goes back
                raise
            return self._post_specs(specs, token)
        finally:
            if gc_was_enabled:
                gc.enable()


def _pure_flag(kwargs: dict) -> bool:
    pure = kwargs.pop("pure", False)
    if not isinstance(pure, bool):
        raise TypeError(f"pure must be True or False, got {pure!r}")
    return pure
