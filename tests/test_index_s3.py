"""kvl index over a bucket: Ray's --output part files read through pyarrow's S3 filesystem, on moto's S3
server on loopback (no network); skipped without moto's server or a pyarrow with S3."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from .kvlrun import records

boto3 = pytest.importorskip("boto3", reason="needs moto's S3 server: pip install 'moto[server]'")
moto_server = pytest.importorskip("moto.server", reason="needs moto's S3 server: pip install 'moto[server]'")
pafs = pytest.importorskip("pyarrow.fs")
if not hasattr(pafs, "S3FileSystem"):
    pytest.skip("this pyarrow is built without S3", allow_module_level=True)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # botocore's own
REGION, BUCKET = "us-east-1", "kvl-index"


@pytest.fixture
def bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """One empty bucket on moto's server (127.0.0.1, a free port); this process's AWS settings point at it."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    urllib.request.urlopen(urllib.request.Request(f"http://{host}:{port}/moto-api/reset", method="POST"), timeout=10)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "kvl-test-key",
           "AWS_SECRET_ACCESS_KEY": "kvl-test-secret", "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=REGION,
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    client.create_bucket(Bucket=BUCKET)
    try:
        yield client
    finally:
        server.stop()


def test_ray_parts_in_a_bucket_are_indexed_and_found(kvl, bucket):
    scenes = [{"file": f"s3://{BUCKET}/videos/talk.mp4", "scene": 4, "start": 65.2, "end": 72.8,
               "caption": "a speaker points at a whiteboard diagram", "thinking": None}]
    images = [{"input": f"s3://{BUCKET}/photos/a.jpg", "task": "caption", "model": "toy", "error": None,
               "answer": "a whiteboard in an empty room"}]
    for key, recs in (("out/part-aa.jsonl", scenes), ("out/part-bb.jsonl", images)):
        bucket.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(r) + "\n" for r in recs).encode())
    bucket.put_object(Bucket=BUCKET, Key="out/.kvl-round", Body=b"closed")
    r = kvl("index", f"s3://{BUCKET}/out/")
    assert r.code == 0, r.err
    assert "indexed 2 files" in r.err and "2 new records" in r.err
    assert "1 unchanged (not read)" not in r.err
    again = kvl("index", f"s3://{BUCKET}/out/")
    assert "2 unchanged (not read)" in again.err
    hits = records(kvl("search", "--json", "whiteboard").out)
    assert sorted(h["file"] for h in hits) == [f"s3://{BUCKET}/photos/a.jpg", f"s3://{BUCKET}/videos/talk.mp4"]
    assert f"s3://{BUCKET}/videos/talk.mp4 @ 00:01:05–00:01:12  (video)" in kvl("search", "diagram").out
    missing = kvl("index", f"s3://{BUCKET}/nothing-here/")
    assert missing.code == 3 and "not found" in missing.err
