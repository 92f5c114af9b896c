"""The README works as written: its plain-Python blocks run in a fresh interpreter, its Jupyter
block runs in a real kernel, its commands are the ones CI runs, and the Python versions and
extras it names are the ones pyproject.toml declares."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CI_RUN = (ROOT / ".ci" / "run").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


PYTHON_BLOCKS = fenced(README, "python")
# Blocks that cannot run on their own, each recognised by a piece of its text. Every other
# block runs, so a new one is tested unless it is listed here with its reason.
NOT_RUN = {
    'queue="high"': "a cheat sheet of submit/map keywords: fn, x, s, f, g, h stand for the "
                    "reader's own functions and values",
    'Client("tcp://127.0.0.1:8786")': "needs an `nbcluster scheduler` already running on 8786 "
                                      "(tests/test_cli.py runs that)",
    "SSHCluster(": "needs SSH hosts named head, node-1 and node-2 (tests/test_ssh.py runs "
                   "SSHCluster against this machine's sshd)",
    "KubeCluster(": "needs a Kubernetes cluster (tests/test_kube_cluster.py runs KubeCluster "
                    "against a fake API, tests/test_kube_integration.py against a real one)",
    "SLURMCluster(": "needs a SLURM with a partition 'normal' and an interface ib0 "
                     "(tests/test_slurm.py runs SLURMCluster against a real one-node SLURM)",
    'Client("tcp://10.1.0.1:8786"': "needs a scheduler and workers on other machines "
                                    "(tests/test_cli_supervisor.py runs `nbcluster worker "
                                    "--nworkers` on 127.0.0.1)",
}


def _not_run(code: str) -> str | None:
    return next((why for marker, why in NOT_RUN.items() if marker in code), None)


def _is_jupyter(code: str) -> bool:
    return any(line.startswith("%") for line in code.splitlines())


def _id(i: int, code: str) -> str:
    first = code.strip().splitlines()[0]
    return f"{i}-" + re.sub(r"\W+", "-", first).strip("-")[:30]


def _commands(section: str) -> list[str]:
    """The commands in the bash blocks of the README section whose heading is ``section``."""
    body = README.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for block in fenced(body, "bash") for line in block.splitlines()
            if line.strip()]


@pytest.mark.timeout(10)
def test_every_python_block_is_run_or_skipped_for_a_reason():
    assert len(PYTHON_BLOCKS) >= 5, "the README lost python blocks, or fenced() misreads it"
    for marker in NOT_RUN:   # a stale entry would skip nothing, or too much
        assert sum(marker in block for block in PYTHON_BLOCKS) == 1, marker
    assert sum(map(_is_jupyter, PYTHON_BLOCKS)) == 1


@pytest.mark.timeout(180)
@pytest.mark.parametrize("code", PYTHON_BLOCKS,
                         ids=[_id(i, c) for i, c in enumerate(PYTHON_BLOCKS)])
def test_python_block_runs_as_written(code, tmp_path):
    why = _not_run(code)
    if why:
        pytest.skip(why)
    if _is_jupyter(code):
        _run_in_a_kernel(code, tmp_path)
        return
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr


def _run_in_a_kernel(code: str, tmp_path: Path) -> None:
    """The block as one cell (as pasted into a notebook), then a cell that stops its cluster."""
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code), nbformat.v4.new_code_cell("%cluster stop")]
    # allow_errors: the stop cell runs even if the block failed, so no cluster outlives the test
    NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = ["\n".join(out.traceback) for cell in nb.cells for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, "\n\n".join(errors)
    outputs = nb.cells[0].outputs
    # a magic's UsageError is a line on stderr, not an error output
    stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
    assert not stderr, stderr
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets, outputs   # the cluster widget and the progress bars


@pytest.mark.timeout(10)
def test_the_two_commands_are_what_ci_runs():
    commands = _commands("The two commands")
    main, tests = commands[0], commands[1]
    assert main.endswith("&& nbcluster demo") and tests.endswith("&& python -m pytest"), commands
    ci_lines = {line.strip() for line in CI_RUN.splitlines()}
    for command in (main, tests):
        assert command in ci_lines, f".ci/run does not run the README's `{command}` as written"
    # as a newcomer does: in an activated virtual environment
    assert re.search(r"^\s*\. \S+/bin/activate\"?\s*$", CI_RUN, flags=re.M)
    for command in commands:
        for extra in re.findall(r'"\.\[([\w,]+)\]"', command):
            for name in extra.split(","):
                assert name in PYPROJECT["optional-dependencies"], (command, name)


@pytest.mark.timeout(60)
def test_the_notebooks_command_opens_them_in_jupyterlab():
    command = next(c for c in _commands("The two commands") if "jupyter lab" in c)
    extra = re.search(r'"\.\[(\w+)\]"', command).group(1)
    assert any(req.replace(" ", "").startswith("jupyterlab>=")
               for req in PYPROJECT["optional-dependencies"][extra]), extra
    folder = ROOT / command.rsplit(" ", 1)[1]
    assert sorted(folder.glob("*.ipynb")), folder
    pytest.importorskip("jupyterlab")
    done = subprocess.run([sys.executable, "-m", "jupyter", "lab", "--version"],
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0 and re.match(r"4\.", done.stdout), done.stdout + done.stderr


@pytest.mark.timeout(10)
def test_the_python_versions_agree():
    classified = sorted(int(c.rsplit(".", 1)[1]) for c in PYPROJECT["classifiers"]
                        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c))
    oldest = f"3.{classified[0]}"
    assert PYPROJECT["requires-python"] == f">={oldest}"
    assert f"Needs Python {oldest} or\nnewer" in README or f"Needs Python {oldest} or newer" \
        in README
    assert sys.version_info >= (3, int(oldest[2:]))
