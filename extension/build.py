"""Rebuild the JupyterLab extension into ../nbcluster/labextension (the committed assets).

    python extension/build.py            # npm ci (first time), tsc, the Lab builder
    python extension/build.py --check    # exit 1 if the assets are older than the sources
    python extension/build.py --link     # editable installs: link both extensions into
                                         # this Python's prefix (what pip does for a wheel)

Needs Node >= 18 and npm, and JupyterLab 4 in this Python (its core package tells
@jupyterlab/builder which packages Lab shares). Users never run this: the built
assets ship in the Python package. The sources' hash is written next to the assets, so a test
(tests/test_labextension_assets.py) sees sources changed without a rebuild.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "nbcluster" / "labextension"
HASH_FILE = OUT / "sources.sha256"
SOURCES = ["package.json", "package-lock.json", "tsconfig.json", "install.json", "src", "style"]


def sources_hash(root: Path = HERE) -> str:
    """sha256 over the sources' paths and bytes (line endings as committed)."""
    digest = hashlib.sha256()
    for name in SOURCES:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            digest.update(f.relative_to(root).as_posix().encode() + b"\0")
            digest.update(f.read_bytes() + b"\0")
    return digest.hexdigest()


def run(*cmd: str) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=HERE, check=True)


def core_path() -> str:
    """JupyterLab's core package (the versions of the packages Lab shares with extensions).
    The Lab builder is called directly: ``jupyter labextension build`` of JupyterLab 4.6
    hands over to jupyter-builder, which wants more from the network."""
    try:
        import jupyterlab
    except ImportError:
        sys.exit("JupyterLab is not installed in this Python: pip install 'jupyterlab>=4'")
    return str(Path(jupyterlab.__file__).parent / "staging")


def build() -> None:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm not found: install Node.js 18 or later to rebuild the extension")
    if not (HERE / "node_modules").is_dir():
        run(npm, "ci" if (HERE / "package-lock.json").exists() else "install",
            "--no-audit", "--no-fund")
    run(str(HERE / "node_modules" / ".bin" / "tsc"))
    shutil.rmtree(OUT / "static", ignore_errors=True)    # no stale chunks
    run(str(HERE / "node_modules" / ".bin" / "build-labextension"), "--core-path",
        core_path(), ".")
    shutil.copy(HERE / "install.json", OUT / "install.json")
    HASH_FILE.write_text(sources_hash() + "\n")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"built {OUT} ({size / 1000:.0f} kB)")


def link() -> None:
    """For an editable install (setuptools installs no data files then): symlink the built
    assets where Lab looks (``jupyter labextension develop`` does the same, but JupyterLab 4.6
    hands that to jupyter-builder, another package) and copy the server extension's config,
    both under ``sys.prefix`` as a regular install puts them."""
    prefix = Path(sys.prefix)
    target = prefix / "share" / "jupyter" / "labextensions" / "nbcluster"
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        shutil.rmtree(target)        # a copy from an earlier regular install
    target.symlink_to(OUT, target_is_directory=True)
    config = prefix / "etc" / "jupyter" / "jupyter_server_config.d"
    config.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "jupyter-config" / "jupyter_server_config.d" / "nbcluster.json", config)
    print(f"linked {target} -> {OUT}\nenabled the server extension in {config}")


def check() -> bool:
    recorded = HASH_FILE.read_text().strip() if HASH_FILE.exists() else None
    return recorded == sources_hash()


if __name__ == "__main__":
    if "--link" in sys.argv[1:]:
        link()
    elif "--check" in sys.argv[1:]:
        if not check():
            sys.exit(f"{OUT} is out of date with extension/: run python extension/build.py")
        print("up to date")
    else:
        build()
