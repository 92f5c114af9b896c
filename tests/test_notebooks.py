"""Every notebook in notebooks/ runs top to bottom in a real kernel without errors or warnings,
and is committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from nbclient import NotebookClient  # noqa: E402

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
REQUIRED = {"01-hello-futures.ipynb", "02-coming-from-celery.ipynb", "03-data-on-workers.ipynb",
            "04-tasks-queues-and-sharing.ipynb"}


def test_the_demo_notebooks_are_there():
    assert REQUIRED <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name}: clear outputs before committing (jupyter nbconvert "
                f"--clear-output --inplace {path.name})")


@pytest.mark.timeout(120)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    # ipykernel forwards what other processes (the workers) write to its stderr into the
    # cell, as in Jupyter, except under pytest: so the kernel does not learn it runs in one
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}
    client.execute(env=env)   # raises CellExecutionError, with the cell, on the first error
    errors = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors, errors
    ran = [c for c in nb.cells if c.cell_type == "code"]
    assert ran and all(c.execution_count for c in ran)
    # and without warnings. They all come on stderr: Python's (UserWarning, ...), what a
    # worker logs (its stderr reaches the cell), what the cluster logs without a logging
    # configuration ("worker ... went over its memory limit; starting a replacement"). The
    # notebooks write nothing else there, so nothing may come there at all.
    warned = [f"cell {i}: {out.text.strip()[:300]}" for i, cell in enumerate(nb.cells)
              if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "stream" and out.name == "stderr"]
    assert not warned, "\n".join(warned)
