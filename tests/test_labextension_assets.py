"""The committed JupyterLab extension (nbcluster/labextension) is built from the sources in
extension/ as they are now, and is complete: what Lab loads first is there."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSETS = REPO / "nbcluster" / "labextension"


def _build_module():
    path = REPO / "extension" / "build.py"
    spec = importlib.util.spec_from_file_location("extension_build", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_build_matches_the_sources():
    build = _build_module()
    assert build.check(), ("extension/ changed since nbcluster/labextension was built: run "
                           "`python extension/build.py` (Node 18+) and commit the result")


def test_the_build_has_what_lab_loads_and_pip_installs():
    meta = json.loads((ASSETS / "package.json").read_text())
    assert meta["name"] == "nbcluster"       # share/jupyter/labextensions/nbcluster
    entry = ASSETS / meta["jupyterlab"]["_build"]["load"]
    assert entry.is_file() and entry.parent.name == "static"
    assert json.loads((ASSETS / "install.json").read_text())["packageName"] == "nbcluster"
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"share/jupyter/labextensions/nbcluster/static" = ["nbcluster/labextension/static/*"]' \
        in pyproject
    assert [p.name for p in (ASSETS / "static").iterdir() if p.is_dir()] == []  # the glob is flat
