"""S3-only BlobStore behaviour: configuration from URL and environment, error mapping (missing bucket,
denied access, unreachable endpoint), streaming multipart uploads, foreign objects under the prefix."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import httpx
import pytest

pytest.importorskip("boto3")

from botocore.stub import Stubber  # noqa: E402

from trainnet.store.blob_s3 import S3BlobStore  # noqa: E402
from trainnet.store.blobs import BlobNotFound, BlobUnavailable, open_blob_store  # noqa: E402

PART = 5 << 20


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast() -> None:
    store = S3BlobStore("bucket", endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout=1.0,
                        max_attempts=1, aws_access_key_id="x", aws_secret_access_key="y")
    t0 = time.monotonic()
    for call in (lambda: store.put("k", b"x"), lambda: store.get("k"), lambda: store.size("k"),
                 lambda: store.list(), lambda: store.delete("k"), lambda: store.get_range("k", 0, 5),
                 lambda: store.put_stream("k", [b"x"], 10), store.check):
        with pytest.raises(BlobUnavailable, match="cannot reach the S3 endpoint http://127.0.0.1"):
            call()
    assert time.monotonic() - t0 < 10.0


def test_missing_bucket(s3_env, boto_session) -> None:
    store = S3BlobStore.from_url("s3://no-such-bucket/run1", session=boto_session)
    for call in (lambda: store.put("k", b"x"), lambda: store.get("k"), lambda: store.list(), store.check,
                 lambda: store.put_stream("k", [b"x"], 10), lambda: store.get_range("k", 0, 1)):
        with pytest.raises(BlobUnavailable, match="bucket 'no-such-bucket' does not exist at http://127.0.0.1"):
            call()


def test_check_passes_on_existing_bucket(s3_bucket: str, boto_session) -> None:
    S3BlobStore.from_url(f"s3://{s3_bucket}", session=boto_session).check()


@pytest.mark.parametrize("op,call", [
    ("put_object", lambda s: s.put("k", b"x")),
    ("get_object", lambda s: s.get("k")),
    ("head_object", lambda s: s.size("k")),
    ("delete_object", lambda s: s.delete("k")),
])
def test_access_denied(s3_env, boto_session, op: str, call) -> None:
    store = S3BlobStore.from_url("s3://bucket/p", session=boto_session)
    with Stubber(store._client) as stub:
        stub.add_client_error(op, service_error_code="AccessDenied", service_message="Access Denied",
                              http_status_code=403)
        with pytest.raises(BlobUnavailable, match=r"access denied: .* s3://bucket/p/k .*AWS_ACCESS_KEY_ID"):
            call(store)


def test_head_403_without_code_is_denied_not_absent(s3_env) -> None:
    store = S3BlobStore.from_url("s3://bucket")
    with Stubber(store._client) as stub:  # HEAD responses carry no body, only the status
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        with pytest.raises(BlobUnavailable, match="access denied"):
            store.size("k")


def test_wrong_region_says_so(s3_env, boto_session) -> None:
    store = S3BlobStore.from_url("s3://bucket", session=boto_session)
    with Stubber(store._client) as stub:
        stub.add_client_error("get_object", service_error_code="PermanentRedirect", http_status_code=301)
        with pytest.raises(BlobUnavailable, match="not in region 'us-east-1'.*AWS_REGION"):
            store.get("k")


def test_other_errors_name_the_code(s3_env) -> None:
    store = S3BlobStore.from_url("s3://bucket")
    with Stubber(store._client) as stub:
        stub.add_client_error("put_object", service_error_code="SlowDown", service_message="Reduce your rate",
                              http_status_code=503)
        with pytest.raises(BlobUnavailable, match="SlowDown Reduce your rate"):
            store.put("k", b"x")


def test_from_url_reads_the_environment(s3_env, monkeypatch: pytest.MonkeyPatch) -> None:
    store = S3BlobStore.from_url("s3://bkt/runs//run1/")
    assert (store.bucket, store.prefix, store.url) == ("bkt", "runs/run1/", "s3://bkt/runs/run1")
    assert store.endpoint_url == s3_env.endpoint_url and store.region == "us-east-1"
    assert store._client.meta.config.s3["addressing_style"] == "path"  # custom endpoint: path-style
    url = httpx.URL(store.presign_get("updates/x", 60))
    assert (url.host, url.path) == ("127.0.0.1", "/bkt/runs/run1/updates/x")

    monkeypatch.setenv("AWS_REGION", "auto")  # Cloudflare R2
    monkeypatch.setenv("TRAINNET_S3_PATH_STYLE", "0")
    store = S3BlobStore.from_url("s3://bkt")
    assert store.region == "auto" and store.prefix == "" and store.url == "s3://bkt"
    assert store._client.meta.config.s3["addressing_style"] == "virtual"
    store = S3BlobStore.from_url("s3://bkt/p?path_style=1&region=eu-west-1")
    assert store.region == "eu-west-1" and store.url == "s3://bkt/p?path_style=1&region=eu-west-1"


def test_aws_defaults_without_endpoint(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "TRAINNET_S3_PATH_STYLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    store = S3BlobStore("bkt", "p", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret")
    assert store.endpoint_url is None and store.region == "eu-central-1"
    url = httpx.URL(store.presign_get("k", 60))
    assert url.host == "bkt.s3.eu-central-1.amazonaws.com" and url.path == "/p/k"  # virtual-hosted on AWS


def test_bad_urls_and_settings() -> None:
    for url, match in [("http://bkt/x", "not an S3 URL"), ("s3:///x", "not an S3 URL"),
                       ("s3://bkt/x?pathstyle=1", "unknown S3 URL option"),
                       ("s3://bkt/x?path_style=maybe", "path_style must be one of"),
                       ("s3://bkt/a/../b", "'..'")]:
        with pytest.raises(ValueError, match=match):
            S3BlobStore.from_url(url, aws_access_key_id="x", aws_secret_access_key="y")
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore("bkt", part_size=1 << 20)


def test_boto3_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # what `import boto3` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'trainnet\[s3\]'"):
        S3BlobStore.from_url("s3://bkt")


def test_open_blob_store_s3(s3_env) -> None:
    store = open_blob_store("s3://bkt/run7")
    assert isinstance(store, S3BlobStore) and store.url == "s3://bkt/run7"


def test_put_stream_sends_parts_as_it_goes(s3_bucket: str, s3_admin, boto_session) -> None:
    """Parts leave while the source is still producing: the blob is never held whole in memory."""
    store = S3BlobStore.from_url(f"s3://{s3_bucket}", part_size=PART, session=boto_session)
    parts_seen: list[int] = []

    def source() -> Iterator[bytes]:
        for i in range(3 * 5):  # 15 MiB in 1 MiB chunks
            if i == 12:
                uploads = s3_admin.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
                parts = s3_admin.list_parts(Bucket=s3_bucket, Key="big", UploadId=uploads[0]["UploadId"])
                parts_seen.append(len(parts.get("Parts", [])))
            yield bytes([i]) * (1 << 20)

    size, _ = store.put_stream("big", source(), max_bytes=16 << 20)
    assert size == 15 << 20 and parts_seen == [2]
    assert store.get_range("big", (12 << 20) - 1, 2) == bytes([11, 12])
    assert s3_admin.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_list_skips_foreign_objects(s3_bucket: str, s3_admin, boto_session) -> None:
    store = S3BlobStore.from_url(f"s3://{s3_bucket}/run1", session=boto_session)
    store.put("updates/a", b"1")
    for key in ("run1/Upper/Case", "run1x/other", "other/run1/updates/b", "run1/a//b"):
        s3_admin.put_object(Bucket=s3_bucket, Key=key, Body=b"foreign")
    assert store.list() == ["updates/a"]
    assert store.list("updates/") == ["updates/a"]


def test_list_paginates(s3_bucket: str, s3_admin, boto_session) -> None:
    store = S3BlobStore.from_url(f"s3://{s3_bucket}", session=boto_session)
    store.list_page_size = 7  # 25 keys: four pages
    keys = [f"updates/{i:05d}" for i in range(25)]
    for key in reversed(keys):
        s3_admin.put_object(Bucket=s3_bucket, Key=key, Body=b"")
    assert store.list("updates/") == keys


def test_absent_is_not_found_not_unavailable(s3_bucket: str, boto_session) -> None:
    store = S3BlobStore.from_url(f"s3://{s3_bucket}", session=boto_session)
    with pytest.raises(BlobNotFound):
        store.get("updates/none")
    assert store.size("updates/none") is None
