"""One unit costs only itself (tiny profile, the CLI as a user runs it): a unit that fails on every try is recorded
in DIR/failed/ while every other unit completes, the run ends non-zero in one line naming it, and the next run builds
only it; a unit that fails once is tried again and leaves no trace."""

import json
import os
from pathlib import Path

import pytest
from build_process import Build

from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, failure_path, shard_paths, tmp_path

pytestmark = pytest.mark.slow
# runtime.max_failed_units=2: the one unit that fails every try must not stop the build early, whatever the order in
# which its tries and the other units end (the default, 1 % of 6 units, is 1)
SETTINGS = ["--workers", "2", "--set", "resolution.min_side=96", "--set", "input.unit_size=2",
            "--set", "runtime.unit_retries=2", "--set", "runtime.max_failed_units=2"]


def test_a_failing_unit_is_recorded_the_others_complete_and_the_rerun_builds_only_it(tmp_path, prefect_api_url,
                                                                                     ray_address):
    """Both commands join the session's Ray (RAY_ADDRESS) and report to its Prefect API. Costs two builds, each a
    command of its own, the first with four failing tries of a unit: ~60 s alone, up to ~115 s beside another
    pytest-xdist worker."""
    photos, out = tmp_path / "photos", tmp_path / "dataset"
    write_photos(photos, 12, size=128)
    # A directory where shards 2 and 4 write their Parquet file: every write fails (a full or broken disk, in small)
    blocked = {shard: tmp_path_of(out, shard) for shard in (2, 4)}
    for path in blocked.values():
        path.mkdir(parents=True)
    build = Build(photos, out, SETTINGS, prefect_api_url, ray_address)
    build.wait_for("shard 00004 (")  # its first failure: try 1 of 3
    blocked[4].rmdir()  # a transient fault, gone before its next try
    code, stdout, stderr = build.finish()
    assert code == 1, stderr[-3000:]
    (last,) = [line for line in stderr.splitlines() if line.startswith("lambda-eclipse build-dataset: ")]
    assert last.startswith("lambda-eclipse build-dataset: failed: 1 of 6 unit(s) failed after 3 tries: "
                           "shard 00002 ("), last
    assert "IsADirectoryError" in last and "run the same command again to build only what is missing" in last
    assert complete_shards(out) == [0, 1, 3, 4, 5]  # every other unit completed, the retried one too
    record = json.loads(open(failure_path(out, 2)).read())
    assert record["shard"] == 2 and record["attempts"] == 3 and "IsADirectoryError" in record["error"]
    assert record["node"] and record["time"]
    assert not os.path.exists(failure_path(out, 4))  # failed once, built on its next try: no record
    assert "shard 00004" in stderr and "try 1 of 3" in stderr

    blocked[2].rmdir()
    code, stdout, stderr = Build(photos, out, SETTINGS, prefect_api_url, ray_address).finish()
    assert code == 0, stderr[-3000:]
    assert "6 work units (0 new), 5 shards complete, 1 to build" in stderr
    assert complete_shards(out) == [0, 1, 2, 3, 4, 5]
    assert not os.path.exists(failure_path(out, 2)) and not os.listdir(out / "failed")


def tmp_path_of(out, shard: int):
    """Where the shard writer stages the shard's Parquet file before its rename (storage/layout.py)."""
    return tmp_path(Path(shard_paths(out, shard)["parquet"]))


def test_a_systematic_failure_stops_the_build_at_max_failed_units(tmp_path, prefect_api_url, ray_address):
    """Every unit fails (no shard can be written): the first unit that fails every try stops the build, the units
    still running are cancelled, and the one line says so. Costs one build: ~15 s."""
    photos, out = tmp_path / "photos", tmp_path / "dataset"
    write_photos(photos, 12, size=128)
    for shard in range(6):
        tmp_path_of(out, shard).mkdir(parents=True)
    settings = ["--workers", "2", "--set", "resolution.min_side=96", "--set", "input.unit_size=2",
                "--set", "runtime.unit_retries=0", "--set", "runtime.max_failed_units=1"]
    code, _, stderr = Build(photos, out, settings, prefect_api_url, ray_address).finish()
    assert code == 1, stderr[-3000:]
    (last,) = [line for line in stderr.splitlines() if line.startswith("lambda-eclipse build-dataset: ")]
    assert last.startswith("lambda-eclipse build-dataset: failed: stopped early at runtime.max_failed_units "
                           "(1 failed), 5 other unit(s) not all built; 1 of 6 unit(s) failed after 1 tries: "
                           "shard 000"), last
    assert complete_shards(out) == [] and len(os.listdir(out / "failed")) == 1
