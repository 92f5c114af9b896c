"""W7's "from nothing" probe: a new interpreter that imports one system,
starts a LocalCluster of 2 single-threaded worker processes, and prints
``FIRST_RESULT`` as soon as ``submit(add, 1, 1).result()`` returns.

    python -m benchmarks.coldstart dask

The measuring process times from spawning this interpreter to that line.
"""

import sys


def main(name):
    from .systems import make_system
    from .tasks import add

    system = make_system(name)
    with system.cluster_and_client() as (_cluster, client):
        result = system.submit(client, add, 1, 1).result()
        print(f"FIRST_RESULT {result}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
