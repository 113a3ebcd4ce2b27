"""kvl --ray against an S3 API: inputs listed and read, part files written, read back and resumed,
all through pyarrow's S3 filesystem, on moto's S3 server on loopback (no network).

kvl is given plain ``s3://`` URIs, as users write them: the endpoint and the fake credentials come
from the environment (``AWS_ENDPOINT_URL``, which pyarrow's S3 filesystem honours), and the
``--ray local`` cluster kvl starts inherits it, workers included. A URI can also carry the endpoint
in its query (``?endpoint_override=HOST:PORT&scheme=http``): the files of such a directory keep it.
Skipped without moto's server (``pip install 'moto[server]'``, in the ``test`` extra) or Ray.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kvl_cli.synthetic import SCRIPTED_ANSWER

from .conftest import kvl_env, make_image
from .raycluster import kvl_proc

pytest.importorskip("ray.data", reason="needs Ray: pip install 'kvl[ray]'")
boto3 = pytest.importorskip("boto3", reason="needs moto's S3 server: pip install 'moto[server]'")
moto_server = pytest.importorskip("moto.server", reason="needs moto's S3 server: pip install 'moto[server]'")
pafs = pytest.importorskip("pyarrow.fs")
if not hasattr(pafs, "S3FileSystem"):
    pytest.skip("this pyarrow is built without S3", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's and botocore's own
REGION = "us-east-1"
BUCKET = "kvl-bucket"


@dataclass
class S3:
    host: str  # 127.0.0.1:PORT
    env: dict[str, str]  # what kvl needs to reach it: the endpoint, fake credentials, a region
    client: Any  # boto3's, for the test's own puts and gets

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=BUCKET, Key=key, Body=data)

    def keys(self, prefix: str) -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def text(self, key: str) -> str:
        return str(self.client.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("utf-8"))

    def records(self, prefix: str) -> list[dict[str, Any]]:
        parts = [k for k in self.keys(prefix) if k.rsplit("/", 1)[-1].startswith("part-") and k.endswith(".jsonl")]
        return [json.loads(line) for k in parts for line in self.text(k).splitlines()]


@pytest.fixture
def s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """moto's S3 server on 127.0.0.1 (a free port), one empty bucket; the env of this process is
    cleared of any AWS settings of the user's (a profile, a real endpoint or key)."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # moto keeps its buckets per process, not per server: start from none
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=10)
    env = {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "kvl-test-key", "AWS_SECRET_ACCESS_KEY": "kvl-test-secret",
        "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",  # never ask an instance metadata service for credentials
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=REGION,
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    try:
        yield S3(f"{host}:{port}", env, client)
    finally:
        server.stop()


def image_bytes(tmp_path: Path, name: str, color: tuple[int, int, int]) -> bytes:
    return make_image(tmp_path / name, color=color).read_bytes()


def caption(args: list[object], env: dict[str, str]):  # type: ignore[no-untyped-def]
    """One kvl run on a cluster it starts here (one worker: two starting at once on two cores cost seconds)."""
    return kvl_proc(["caption", "--ray", "local", "--workers", "1", "--json", *args], env)


def test_caption_reads_s3_writes_parts_to_s3_then_resumes(scripted, s3, tmp_path):
    names = ["photos/a.jpg", "photos/b.png", "photos/deep/c #2 ü.jpg"]  # a key a URI holds encoded
    for i, name in enumerate(names):
        s3.put(name, image_bytes(tmp_path, f"{i}{Path(name).suffix}", (60 * i, 120, 200 - 50 * i)))
    s3.put("photos/bad.jpg", b"not an image")
    s3.put("photos/notes.txt", b"not media: not listed")
    src, out = f"s3://{BUCKET}/photos/", f"s3://{BUCKET}/out/"
    env = kvl_env(scripted, **s3.env)
    expected = sorted(f"s3://{BUCKET}/{n}" for n in [*names, "photos/bad.jpg"])
    bad = f"s3://{BUCKET}/photos/bad.jpg"

    r = caption(["--output", out, src], env)
    assert r.returncode == 5, r.stderr  # one input failed, the others ran
    assert r.stdout == ""  # the workers wrote the records into the bucket
    first = s3.records("out/")
    assert sorted(rec["input"] for rec in first) == expected  # every input exactly once
    for rec in first:
        if rec["input"] == bad:
            assert rec["exit_code"] == 3 and rec["error"] and rec.get("answer") is None
        else:
            assert rec["answer"] == SCRIPTED_ANSWER and rec["task"] == "caption" and rec["error"] is None
    assert s3.text("out/.kvl-round").endswith(" closed")  # the run's rounds fenced off
    assert "Traceback" not in r.stderr

    again = caption(["--output", out, src], env)  # refused before a cluster starts
    assert again.returncode == 2 and "already holds results" in again.stderr

    s3.put("photos/bad.jpg", image_bytes(tmp_path, "fixed.jpg", (1, 2, 3)))  # fixed: the resume runs it again
    r = caption(["--output", out, "--skip-done", out, src], env)
    assert r.returncode == 0, r.stderr
    assert "skipping 3 already done" in r.stderr
    final = s3.records("out/")
    assert sorted(rec["input"] for rec in final) == expected  # its failed record was taken out of its part
    assert all(rec["error"] is None and rec["answer"] == SCRIPTED_ANSWER for rec in final)

    parts = s3.keys("out/")
    r = caption(["--output", out, "--skip-done", out, src], env)  # all done: nothing runs, nothing is written
    assert r.returncode == 0, r.stderr
    assert "skipping 4 already done" in r.stderr and "0 to run" in r.stderr
    assert s3.keys("out/") == parts and s3.records("out/") == final


@pytest.mark.parametrize("route", ["env", "query"])
def test_listed_files_are_read_through_the_directorys_store(s3, route, tmp_path, monkeypatch):
    """Each file listed from a directory is read from the same store: with the endpoint in the
    environment, or only in the directory URI's query (``route``), and whatever its key holds (a
    space, ``#``, ``%``, a letter beyond ASCII: a URI holds them percent-encoded). A folder of parts
    behind such a URI is written and read back."""
    from kvl_cli.distributed.inputs import list_uri, read_uri
    from kvl_cli.distributed.parts import Store, scan, write_part

    for var, value in s3.env.items():
        monkeypatch.setenv(var, value)
    query = ""
    if route == "query":
        monkeypatch.delenv("AWS_ENDPOINT_URL")
        query = f"?endpoint_override={s3.host}&scheme=http"
    keys = ["photos/%41.jpg", "photos/A.jpg", "photos/a.jpg", "photos/sub/b #1 ü?.webp"]
    for i, key in enumerate(keys):
        s3.put(key, f"object {i}".encode())  # "%41" is not "A": each must read its own bytes

    rows = list_uri(f"s3://{BUCKET}/photos/{query}", video=False)
    assert [r["key"] for r in rows] == [f"s3://{BUCKET}/{k}" for k in keys]  # labels: the keys, no query
    assert [read_uri(r["uri"]) for r in rows] == [f"object {i}".encode() for i in range(len(keys))]
    assert list_uri(rows[0]["uri"], video=False) == [rows[0]]  # a file given alone: the same row

    store = Store(f"s3://{BUCKET}/out/{query}")
    store.ensure()
    write_part(store, [{"input": rows[3]["key"], "answer": "x", "error": None}])
    assert scan(Store(f"s3://{BUCKET}/out/{query}")).ok == {rows[3]["key"]}
