"""The connection file holds the token: written so that no other user can read, redirect or
swap it (issue 13, item 6)."""

from __future__ import annotations

import os
import stat

import pytest

from nbcluster.config import read_connection_file, remove_connection_file, write_connection_file
from nbcluster.errors import ClusterError

pytestmark = pytest.mark.timeout(10)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_a_planted_symlink_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    target = runtime / "scheduler.json"
    target.symlink_to(victim)
    write_connection_file("tcp://127.0.0.1:1", "secret", target)
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and mode(target) == 0o600
    assert read_connection_file(target) == ("tcp://127.0.0.1:1", "secret")
    assert [p.name for p in runtime.iterdir()] == ["scheduler.json"]   # no temp file left


def test_the_runtime_directory_is_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(tmp_path / "home" / ".nbcluster" / "x"))
    old = os.umask(0)
    try:
        path = write_connection_file("tcp://127.0.0.1:2", "t")
    finally:
        os.umask(old)
    for d in (tmp_path / "home", tmp_path / "home" / ".nbcluster", path.parent):
        assert mode(d) == 0o700, d
    assert mode(path) == 0o600
    assert remove_connection_file(path, "tcp://127.0.0.1:2", "t") and not path.exists()


def test_a_loose_runtime_directory_of_our_own_is_tightened(tmp_path, monkeypatch):
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    os.chmod(runtime, 0o777)
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(runtime))
    write_connection_file("tcp://127.0.0.1:3", "t")
    assert mode(runtime) == 0o700


def test_a_directory_others_can_write_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ClusterError, match="can be written by other users"):
        write_connection_file("tcp://127.0.0.1:4", "t", shared / "c.json")
    assert not any(shared.iterdir())
    os.chmod(shared, 0o1777)                      # as /tmp: others cannot swap our file
    path = write_connection_file("tcp://127.0.0.1:4", "t", shared / "c.json")
    assert mode(path) == 0o600


def test_a_symlinked_runtime_directory_is_refused(tmp_path, monkeypatch):
    real = tmp_path / "elsewhere"
    real.mkdir(mode=0o700)
    link = tmp_path / "runtime"
    link.symlink_to(real)
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(link))
    with pytest.raises(ClusterError, match="symlink"):
        write_connection_file("tcp://127.0.0.1:5", "t")
