"""Where connection files live and how a token is found for an address."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from .errors import ClusterError

# A worker process that ends itself because its memory went over its limit exits with this.
MEMORY_EXIT_CODE = 99
# A worker under ``nbcluster worker --nworkers`` that gave up on its scheduler exits with this.
SCHEDULER_LOST_EXIT_CODE = 98


def parse_memory_limit(limit, share: int = 1) -> int | None:
    """Bytes from ``4GB``/``512MiB``/a number; ``"auto"``: this machine's memory divided by
    ``share`` (the workers on it); ``None``, 0 or ``"none"``: no limit."""
    if limit in (None, 0) or (isinstance(limit, str) and limit.strip().lower() == "none"):
        return None
    if limit == "auto":
        import psutil

        return int(psutil.virtual_memory().total / max(1, share))
    if isinstance(limit, (int, float)) and not isinstance(limit, bool) and limit > 0:
        return int(limit)
    if isinstance(limit, str):
        units = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                 "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "b": 1}
        text = limit.strip().lower().replace(" ", "")
        for unit in sorted(units, key=len, reverse=True):
            if text.endswith(unit):
                try:
                    value = float(text[: -len(unit)])
                except ValueError:
                    break
                if value > 0:
                    return int(value * units[unit])
                break
        else:
            if text.isdigit():
                return int(text) or None
    raise ValueError(f"memory limit must be bytes, 'auto', 'none' or like '4GB', got {limit!r}")


def check_fraction(name: str, value) -> float | None:
    """A memory threshold: a fraction of the memory limit in (0, 1], or None for never."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a fraction of the memory limit in (0, 1] or None, "
                         f"got {value!r}")
    return float(value)


_RESOURCE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$")
_RESOURCE_FORM = "NAME=AMOUNT pairs separated by commas, e.g. GPU=1,MEM=16e9"


def parse_resources(value, what: str = "resources") -> dict[str, float] | None:
    """Resources a worker has or a task needs: ``{"GPU": 1, "MEM": 16e9}`` or the text
    ``"GPU=1,MEM=16e9"``, each amount a positive number. None or ``{}``: none. Anything else
    raises ValueError (TypeError for a value of the wrong type) naming the bad part."""
    if value is None:
        return None
    if isinstance(value, str):
        pairs: list[tuple[object, object, object]] = []
        for part in value.split(","):
            name, eq, amount = (p.strip() for p in part.partition("="))
            if not eq or not name or not amount:
                raise ValueError(f"{what}: {part.strip()!r} in {value!r} is not NAME=AMOUNT "
                                 f"({_RESOURCE_FORM})")
            try:
                pairs.append((name, float(amount), amount))
            except ValueError:
                raise ValueError(f"{what}: the amount of {name!r} must be a number, got "
                                 f"{amount!r} ({_RESOURCE_FORM})") from None
    elif isinstance(value, dict):
        pairs = [(name, amount, amount) for name, amount in value.items()]
    else:
        raise TypeError(f"{what} must be a dict such as {{'GPU': 1}} or text such as "
                        f"'GPU=1,MEM=16e9', got {value!r}")
    out: dict[str, float] = {}
    for key, number, given in pairs:
        if not isinstance(key, str) or not _RESOURCE_NAME.match(key):
            raise ValueError(f"{what}: bad resource name {key!r} (at most 64 letters, digits, "
                             "'_', '.', ':' or '-', starting with a letter or '_')")
        if isinstance(number, bool) or not isinstance(number, (int, float)) or \
                not 0 < number <= 1e300:
            raise ValueError(f"{what}: the amount of {key!r} must be a positive number, got "
                             f"{given!r}")
        if key in out:
            raise ValueError(f"{what}: {key!r} is given twice")
        out[key] = float(number)
    return out or None


def runtime_dir() -> Path:
    base = os.environ.get("NBCLUSTER_RUNTIME_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".nbcluster") / "nbcluster"


def connection_file_for(address: str) -> Path:
    safe = address.replace("://", "-").replace(":", "-").replace("/", "-")
    return runtime_dir() / f"scheduler-{safe}.json"


def write_connection_file(address: str, token: str | None, path: str | os.PathLike | None = None) -> Path:
    """Write address and token to a file readable only by this user (like Jupyter's).

    The file is made under a new name with O_EXCL|O_NOFOLLOW, mode 0600, then renamed over
    the target: a symlink planted at the target is replaced, never followed. The runtime
    directory is made 0700 whatever the umask, and a directory others may write to (without
    the sticky bit, as /tmp has) or that another user owns is refused."""
    target = Path(path) if path else connection_file_for(address)
    _private_dir(target.parent, own=path is None)
    temp = target.with_name(f".{target.name}.{os.getpid()}.{os.urandom(4).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(temp, flags, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"address": address, "token": token}, f)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return target


def _private_dir(directory: Path, own: bool) -> None:
    """Make ``directory`` (and missing parents) 0700; refuse one that others could swap files
    in. ``own``: nbcluster's runtime directory, whose mode is set to 0700 if it is looser."""
    missing = []
    for d in (directory, *directory.parents):
        if d.exists() or d.is_symlink():
            break
        missing.append(d)
    for d in reversed(missing):
        os.mkdir(d, 0o700)
        os.chmod(d, 0o700)            # mkdir's mode is masked by the umask; this is not
    info = os.lstat(directory)
    if stat.S_ISLNK(info.st_mode) and own:
        raise ClusterError(f"{directory} is a symlink; nbcluster keeps connection files "
                           "(tokens) only in a directory of its own: remove it")
    info = os.stat(directory)
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise ClusterError(f"{directory} belongs to another user; a connection file (a token) "
                           "is not written there")
    loose = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if own and info.st_mode & 0o077:
        os.chmod(directory, 0o700)
    elif loose and not info.st_mode & stat.S_ISVTX:
        raise ClusterError(f"{directory} can be written by other users (mode "
                           f"{stat.S_IMODE(info.st_mode):o}); a connection file (a token) is "
                           "not written there: choose a private directory")


def remove_connection_file(path: str | os.PathLike, address: str, token: str | None) -> bool:
    """Remove the connection file written for ``address`` and ``token``, unless another
    scheduler has written its own there since (then it is left alone). True if removed."""
    try:
        if read_connection_file(path) != (address, token):
            return False
        os.unlink(path)
        return True
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read_connection_file(path: str | os.PathLike) -> tuple[str, str | None]:
    with open(path) as f:
        info = json.load(f)
    return info["address"], info.get("token")


def find_token(address: str) -> str | None:
    """The token for ``address``: NBCLUSTER_TOKEN, else the scheduler's connection file."""
    token = os.environ.get("NBCLUSTER_TOKEN")
    if token:
        return token
    path = connection_file_for(address)
    if path.exists():
        try:
            return read_connection_file(path)[1]
        except (OSError, ValueError, KeyError):
            return None
    return None


def tune_gc_for_server() -> None:
    """For a scheduler or worker process: servers hold many long-lived small objects (one per
    task), so collect young garbage less often and never rescan what was there at start-up.
    Used by LocalCluster's processes and by ``nbcluster scheduler`` / ``nbcluster worker``."""
    import gc

    gc.freeze()
    gc.set_threshold(10_000, 20, 20)
