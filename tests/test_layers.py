"""The layering rules that matter most, checked on the source (see DESIGN.md section 1)."""

import ast
from pathlib import Path

import nbcluster

ROOT = Path(nbcluster.__file__).parent
IO_MODULES = {"asyncio", "socket", "selectors", "tornado", "time", "threading", "subprocess",
              "ssl", "select", "multiprocessing", "datetime"}


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by a file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def files(sub: str):
    return sorted((ROOT / sub).rglob("*.py"))


def test_state_layer_imports_no_io_and_no_clock():
    assert files("state")
    for path in files("state"):
        for mod in imports_of(path):
            top = mod.split(".")[0]
            assert top not in IO_MODULES, f"{path.name} imports {mod}"
            assert not mod.startswith(("nbcluster.comm", "nbcluster.server", "nbcluster.client",
                                       "nbcluster.deploy")), f"{path.name} imports {mod}"


def test_client_never_imports_server_and_server_never_imports_client():
    for path in files("client"):
        for mod in imports_of(path):
            assert not mod.startswith(("nbcluster.server", "nbcluster.state", "nbcluster.deploy")), \
                f"client/{path.name} imports {mod}"
    for path in files("server"):
        for mod in imports_of(path):
            assert not mod.startswith(("nbcluster.client", "nbcluster.deploy")), \
                f"server/{path.name} imports {mod}"


def test_lower_layers_do_not_import_upper_ones():
    for sub in ("protocol", "comm"):
        for path in files(sub):
            for mod in imports_of(path):
                assert not mod.startswith(("nbcluster.server", "nbcluster.client",
                                           "nbcluster.deploy", "nbcluster.jupyter",
                                           "nbcluster.dashboard")), f"{sub}/{path.name} imports {mod}"


def test_public_api():
    for name in ("Client", "LocalCluster", "Future", "wait", "as_completed", "fire_and_forget",
                 "delayed", "progress", "AsyncClient"):
        assert hasattr(nbcluster, name), name
    assert set(nbcluster.__all__) <= set(dir(nbcluster))


HOT_PATH = ("state", "protocol", "comm", "server")   # every task passes through these


def test_modules_are_small():
    for path in ROOT.rglob("*.py"):
        n = len(path.read_text().splitlines())
        limit = 400 if path.relative_to(ROOT).parts[0] in HOT_PATH else 600
        assert n <= limit, f"{path.relative_to(ROOT)} has {n} lines (at most {limit} here)"
