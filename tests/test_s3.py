"""build-dataset and validate-dataset on S3: a local S3-compatible server (moto's, on 127.0.0.1, started and stopped
by the test) holds img2dataset-style tars as input and receives the manifest and shards. The CLI runs as a
subprocess, as a user would run it, on a local Ray started with that environment (s3_ray), so every worker reads
the tars and writes its shard to the bucket itself. Needs the `s3` extra and moto (`pip install -e '.[test,s3]'`)."""

import hashlib
import http.client
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from fsspec.config import conf as fsspec_conf

from lambda_eclipse.synthetic import write_photos
from storage.layout import complete_shards, is_complete, read_json, shard_names, shard_paths, write_json_atomic
from storage.reader import iter_samples
from storage.schema import feature_schema
from storage.shard_writer import ShardWriter
from storage.synthetic_features import featured_sample

s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (pip install -e '.[s3]')")
moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e '.[test]')")

pytestmark = pytest.mark.slow

BUCKET = "lambda-eclipse-test"
TARS = f"s3://{BUCKET}/tars"
DATASET = f"s3://{BUCKET}/dataset"
SETTINGS = ["--set", "resolution.min_side=96"]
IMAGES_PER_TAR = 3
SUMMARY = re.compile(r"^\d+ accepted, \d+ rejected of \d+ inputs in \d+ shards → .*$", re.MULTILINE)


@pytest.fixture
def s3(monkeypatch, tmp_path, caplog, prefect_api_url):
    """moto's S3 server on 127.0.0.1 and an s3fs filesystem on it. The endpoint and dummy credentials are set in
    this process's environment, which the CLI subprocesses (and the Ray workers they start) inherit: fsspec reads
    `FSSPEC_S3_ENDPOINT_URL` when it is imported and passes it to s3fs, botocore reads `AWS_ENDPOINT_URL`."""
    caplog.set_level("WARNING", logger="werkzeug")  # the server logs every request
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # port 0: a free one
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": prefect_api_url,  # the session's Prefect API: no command starts a server of its own
    }.items():
        monkeypatch.setenv(name, value)
    # no ~/.aws configuration or instance metadata: nothing but the test server is ever asked
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    # not the session's Ray: its workers were started before this environment was set (s3_ray starts one with it)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # this process imported fsspec before the variables were set: its filesystem gets the endpoint explicitly, and
    # is not cached, so that no later test sees this server
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    try:
        yield fs
    finally:
        # moto keeps its buckets in this process, not in the server: empty them for the next test
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30)
        server.stop()


@pytest.fixture
def s3_here(s3, monkeypatch):
    """`storage.fs` in this process resolving s3:// URLs to the test server: fsspec read its `FSSPEC_*` variables
    when it was imported, before the fixture set them, so its configuration gets the endpoint here. A 5 MiB
    upload part (S3's smallest) so that a shard of a few MiB is a multipart upload."""
    endpoint = os.environ["FSSPEC_S3_ENDPOINT_URL"]
    monkeypatch.setitem(fsspec_conf, "s3", {"endpoint_url": endpoint, "default_block_size": 5 * 2**20})
    try:
        yield s3
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class _FaultyHandler(BaseHTTPRequestHandler):
    """Forwards each request to moto, except the first try of each object request the server's rule picks: that one
    gets S3's answer under load, 503 SlowDown."""

    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: "FaultyEndpoint"

    def log_message(self, format, *args):  # no line per request
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _relay(self) -> None:
        body = self._body()
        if self.server.fault(self.command, self.path, self.headers.get("Range")):
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(SLOW_DOWN)))
            self.end_headers()
            self.wfile.write(SLOW_DOWN)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding", "connection")}
        headers["Content-Length"] = str(len(body))
        upstream = http.client.HTTPConnection(self.server.upstream, timeout=120)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        # a HEAD's Content-Length is the object's size: kept; others are the body's, which arrives whole
        relayed = ("transfer-encoding", "connection", "server", "date") + (() if self.command == "HEAD" else
                                                                           ("content-length",))
        for name, value in answer.getheaders():
            if name.lower() not in relayed:
                self.send_header(name, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay


class FaultyEndpoint(ThreadingHTTPServer):
    """An S3 endpoint on 127.0.0.1 between the build's processes and moto, as a throttled store is: the first try of
    every read of an input tar (each byte range) and of every write of a shard object (each upload part) answers 503
    SlowDown; the next try of the same request goes through. `faults` and `retried` are those requests."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), _FaultyHandler)
        self.upstream = urlsplit(upstream).netloc  # moto's host:port
        self.faults: set[tuple] = set()
        self.retried: set[tuple] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def fault(self, method: str, target: str, byte_range: str | None) -> bool:
        path = urlsplit(target).path
        if not ((method == "GET" and path.startswith(f"/{BUCKET}/tars/"))
                or (method in ("PUT", "POST") and path.startswith(f"/{BUCKET}/dataset/shards/"))):
            return False
        request = (method, target, byte_range)
        with self._lock:
            if request in self.faults:
                self.retried.add(request)
                return False
            self.faults.add(request)
            return True


@pytest.fixture
def s3_faults(s3, monkeypatch):
    """The commands of the test (and the Ray workers s3_ray starts) reach moto through a FaultyEndpoint; the test's
    own filesystem (s3) reaches moto directly."""
    endpoint = FaultyEndpoint(os.environ["AWS_ENDPOINT_URL"])
    thread = threading.Thread(target=endpoint.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    monkeypatch.setenv("FSSPEC_S3_ENDPOINT_URL", endpoint.url)
    try:
        yield endpoint
    finally:
        endpoint.shutdown()
        endpoint.server_close()


@pytest.fixture
def s3_ray(s3_faults, monkeypatch):
    """One local Ray for a test's commands (RAY_ADDRESS), started once the S3 environment is set, so that its
    workers reach the test server (through s3_faults): the commands of the test share it instead of each starting
    its own. The session's Ray cannot serve: its workers were started before the environment named this server."""
    from bench.local_cluster import local_cluster

    with local_cluster(nodes=1, cpus_per_node=2) as cluster:
        monkeypatch.setenv("RAY_ADDRESS", cluster.address)
        yield cluster.address


def _img2dataset_tar(directory, start: int) -> bytes:
    """An img2dataset shard: `<9-digit key>.jpg` with its `.txt` caption and `.json` metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, path in enumerate(write_photos(directory, IMAGES_PER_TAR, size=128, start=start), start):
            key = f"{i:09d}"
            members = {
                f"{key}.jpg": path.read_bytes(),
                f"{key}.txt": f"a photo of a dog and a ball, number {i}".encode(),
                f"{key}.json": json.dumps({"key": key, "status": "success", "width": 128, "height": 128}).encode(),
            }
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flows.cli", *args]
    return subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=600)


def _bucket_path(url: str) -> str:
    return url.removeprefix("s3://")


def test_files_written_by_another_process_are_seen_after_a_listing(s3_here):
    """The flow lists shards/ when it plans, then reads the `_stats.json` that its workers wrote since: no answer
    may come from a listing that fsspec cached before."""
    root = f"{DATASET}-listing"
    write_json_atomic(shard_paths(root, 0)["stats"], {"shard": 0})
    assert complete_shards(root) == [0] and not is_complete(root, 1)
    other_process = s3_here  # a filesystem object of its own, like a Ray worker's
    other_process.pipe_file(_bucket_path(str(shard_paths(root, 1)["stats"])), b'{"shard": 1}')
    assert is_complete(root, 1) and read_json(shard_paths(root, 1)["stats"]) == {"shard": 1}
    assert complete_shards(root) == [0, 1]


def test_a_shard_of_several_upload_parts_is_hashed_as_stored(s3_here):
    root = f"{DATASET}-multipart"
    write_json_atomic(f"{root}/dataset.json", {"embed_dim": 8, "text_width": 8, "profile": "tiny"})
    samples = [featured_sample(f"k{i}", size=1024) for i in range(10)]  # 1.2 MB of JPEG each
    writer = ShardWriter(root, 0, feature_schema(8, 8), 0.8, ["decode"])
    for sample in samples:
        writer.add(sample)
    stats = writer.close({"description": "test"})
    names = shard_names(0)
    assert stats["files"][names["tar"]]["bytes"] > 2 * 5 * 2**20
    tar_etag = s3_here.info(_bucket_path(str(shard_paths(root, 0)["tar"])))["ETag"]
    # a multipart upload's ETag ends in its number of parts: one per 5 MiB block that s3fs uploads
    parts = math.ceil(stats["files"][names["tar"]]["bytes"] / (5 * 2**20))
    assert parts >= 2 and tar_etag.strip('"').endswith(f"-{parts}"), tar_etag
    for kind in ("parquet", "tar", "rejects"):
        data = s3_here.cat_file(_bucket_path(str(shard_paths(root, 0)[kind])))
        assert stats["files"][names[kind]] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert complete_shards(root) == [0]
    assert [r["key"] for r in iter_samples(root, columns=["key"])] == [s.key for s in samples]


def test_a_dry_run_that_reads_the_manifest_exits_0_every_time(s3_here, tmp_path):
    """`build-dataset --dry-run` over an earlier run's manifest reads Parquet through fsspec, prints the plan and exits
    at once. Arrow's threads released Python buffers of that read after it had returned; at interpreter exit that
    aborted the process (SIGABRT, exit -6: "terminate called without an active exception") about once in six runs
    on a busy machine; read on the calling thread from Arrow's PyFileSystem, still about once in a hundred. The manifest
    is now read whole as bytes and parsed on the calling thread (storage/manifest.py): twelve dry runs in a row must
    each exit 0 with the plan."""
    from storage.manifest import write_manifest
    from tasks.plan import prepare_build

    for shard in range(2):
        s3_here.pipe_file(f"{_bucket_path(TARS)}/{shard:05d}.tar", _img2dataset_tar(tmp_path / "photos", 3 * shard))
    plan = prepare_build([TARS], DATASET, overrides=["resolution.min_side=96"])
    write_manifest(DATASET, plan.units)  # as the flow does before it builds a shard
    cmd = [sys.executable, "-m", "flows.cli", "build-dataset", "--input", TARS, "--output", DATASET,
           *SETTINGS, "--dry-run"]
    for _ in range(12):
        run = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, f"exit {run.returncode}: {run.stderr[-3000:]}"
        assert f"{DATASET}: 2 work units (0 new), 0 shards complete, 2 to build" in run.stdout, run.stdout


def test_build_and_validate_a_dataset_in_a_bucket(s3, s3_faults, s3_ray, tmp_path):
    """Through a store that throttles (s3_faults: every tar read and shard write fails once, 503 SlowDown): each is
    tried again, and nothing is lost or rejected for it. Costs six commands (dry runs, three builds, a validation),
    each a process of its own on one shared Ray: ~75 s alone, ~100 s beside another pytest-xdist worker."""
    for shard in range(2):
        tar = _img2dataset_tar(tmp_path / "photos", IMAGES_PER_TAR * shard)
        s3.pipe_file(f"{_bucket_path(TARS)}/{shard:05d}.tar", tar)
    inputs = 2 * IMAGES_PER_TAR
    build = ["build-dataset", "--input", TARS, "--output", DATASET, *SETTINGS]

    # --dry-run: the plan from listings alone, nothing built
    dry = _cli(*build, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"{DATASET}: 2 work units (2 new), 0 shards complete, 2 to build" in dry.stdout
    assert f"shard 00000  tar {TARS}/00000.tar" in dry.stdout and f"shard 00001  tar {TARS}/00001.tar" in dry.stdout
    assert not s3.exists(f"{_bucket_path(DATASET)}/shards")

    first = _cli(*build)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = SUMMARY.search(first.stdout)
    assert summary is not None, first.stdout[-3000:]
    assert f"of {inputs} inputs in 2 shards → {DATASET}" in summary.group()
    faulted = {(method, urlsplit(target).path.split("/")[2]) for method, target, _ in s3_faults.faults}
    assert {("GET", "tars"), ("PUT", "dataset")} <= faulted, s3_faults.faults  # inputs and shards both throttled
    assert s3_faults.retried == s3_faults.faults  # each throttled request was tried again

    root = _bucket_path(DATASET)
    s3.invalidate_cache()
    assert s3.isfile(f"{root}/manifest.parquet") and s3.isfile(f"{root}/dataset.json")
    # object stores have no rename: every file is written under its final name, no temporary name is left behind
    expected = sorted(name for shard in range(2) for name in shard_names(shard).values())
    assert sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{root}/shards", detail=False)) == expected
    keys: list[str] = []
    total = accepted = 0
    for shard in range(2):
        names = shard_names(shard)
        stats = json.loads(s3.cat_file(f"{root}/shards/{names['stats']}"))
        assert stats["inputs"] == stats["accepted"] + stats["rejected"] == IMAGES_PER_TAR
        total += stats["inputs"]
        accepted += stats["accepted"]
        assert stats["funnel"][0] == {"stage": "decode", "in": IMAGES_PER_TAR, "rejected": 0}  # every read delivered
        for kind in ("parquet", "tar", "rejects"):
            data = s3.cat_file(f"{root}/shards/{names[kind]}")
            assert stats["files"][names[kind]] == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        for kind in ("parquet", "rejects"):
            table = pq.read_table(f"{root}/shards/{names[kind]}", columns=["key"], filesystem=s3)
            keys += table.column("key").to_pylist()
    assert total == inputs and len(keys) == len(set(keys)) == inputs
    assert accepted > 0  # samples made it through every stage: validate-dataset checks real rows
    assert not s3.exists(f"{root}/.write-test")  # the writability probe cleans up after itself

    # a rerun skips the complete shards: no shard object is written again
    def shard_objects() -> dict[str, tuple]:
        s3.invalidate_cache()
        return {
            info["name"]: (info["ETag"], info["LastModified"])
            for info in s3.ls(f"{root}/shards", detail=True)
        }

    before = shard_objects()
    again = _cli(*build)
    assert again.returncode == 0, again.stderr[-3000:]
    rerun_summary = SUMMARY.search(again.stdout)
    assert rerun_summary is not None and rerun_summary.group() == summary.group()
    assert shard_objects() == before

    # a run killed after shard 1's data files, before its `_stats.json`, and a tar added since: the rerun keeps
    # shard 0, rebuilds shard 1 over its leftover objects, builds the new tar as shard 2, and the flow reads back
    # what its workers wrote after it had listed the bucket
    s3.rm_file(f"{root}/shards/{shard_names(1)['stats']}")
    s3.pipe_file(f"{_bucket_path(TARS)}/00002.tar", _img2dataset_tar(tmp_path / "photos", 2 * IMAGES_PER_TAR))
    dry = _cli(*build, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"{DATASET}: 3 work units (1 new), 1 shards complete, 2 to build" in dry.stdout
    third = _cli(*build)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"of {3 * IMAGES_PER_TAR} inputs in 3 shards → {DATASET}" in third.stdout
    after = shard_objects()
    for shard in range(3):
        for name in shard_names(shard).values():
            path = f"{root}/shards/{name}"
            if shard == 0:
                assert after[path] == before[path], f"{name} was rewritten"
            elif shard == 1 and name != shard_names(1)["stats"]:
                assert after[path][1] > before[path][1], f"{name} was not rebuilt"
            else:
                assert path in after

    check = _cli("validate-dataset", DATASET, "--no-flow")
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert f"{DATASET}: valid: 3 shards" in check.stdout
