"""The scale benchmark (``python -m benchmarks.scale_cluster``, issue 14 parts 2-5) runs end to
end: the smallest case of each part, nbcluster only, tiny sizes."""

import pytest

from benchmarks import scale_cluster

TINY = "p2:2:1:200,p2proc:2:200,p3:500,p4tree:100,p4a2a:20,p5:3:10,idle:4:2:1"


@pytest.mark.timeout(60)
def test_each_part_runs_and_prints_its_table(tmp_path, capsys):
    assert scale_cluster.main(["--no-dask", "--time-limit", "20", "--only", TINY,
                               "--logs", str(tmp_path), "--json",
                               str(tmp_path / "all.json")]) == 0
    out = capsys.readouterr().out
    for title in ("Part 2", "Part 3", "Part 4", "Part 5", "Idle"):
        assert f"**{title}" in out, out
    assert "error" not in out and "timeout" not in out, out
    import json

    records = json.loads((tmp_path / "all.json").read_text())
    assert {r["status"] for r in records.values()} == {"ok"}, records
    assert records["nbcluster p3:500"]["metrics"]["done"] == 500
    assert records["nbcluster idle:4:2:1"]["metrics"]["workers_connected"] == 4
