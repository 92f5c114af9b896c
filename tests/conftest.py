import os

import pytest

# The shared fixtures (cluster, client, inproc_cluster, proc_cluster, pclient), the check that
# every test cleans up its threads and processes, and the failure of any test during which a
# state machine broke an invariant.
pytest_plugins = ["nbcluster.testing.fixtures"]

# Debug mode for the whole suite: every scheduler and worker, in this process or in processes
# it starts (they inherit the environment), validates its state after each batch it handles.
# NBCLUSTER_VALIDATE=0 in the environment turns it off.
os.environ.setdefault("NBCLUSTER_VALIDATE", "1")

# Dashboard links depend on these (JupyterHub sets the first in its terminals): the tests
# expect plain links unless a test sets them itself.
for _name in ("JUPYTERHUB_SERVICE_PREFIX", "NBCLUSTER_DASHBOARD_LINK"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def runtime_dir(tmp_path, monkeypatch):
    """Connection files go to the test's own directory."""
    monkeypatch.setenv("NBCLUSTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.delenv("NBCLUSTER_TOKEN", raising=False)
    yield
