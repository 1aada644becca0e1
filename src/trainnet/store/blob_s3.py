"""The S3 BlobStore: any S3-compatible object store (AWS S3, Cloudflare R2, MinIO, ...) through boto3.

    blobs = S3BlobStore.from_url("s3://my-bucket/runs/run1")     # endpoint, region, credentials from the env
    blobs.check()                                                 # at startup: bucket exists and is reachable
    size, sha = blobs.put_stream("updates/3f9c.tnup", chunks, max_bytes=1 << 30)   # multipart, 8 MiB parts
    url = blobs.presign_put("updates/3f9c.tnup", expires_s=900, content_length=n)  # a worker PUTs here

Configuration is boto3's own: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or any other credential source
boto3 knows), AWS_ENDPOINT_URL for a non-AWS store, AWS_REGION or AWS_DEFAULT_REGION ("auto" for R2). Path-style
addressing (http://host/bucket/key, what MinIO wants by default) is used whenever a custom endpoint is set,
virtual-hosted style on AWS; override with `?path_style=1|0` on the URL or TRAINNET_S3_PATH_STYLE=1|0.
Blob keys live under the URL's prefix: key "updates/x" of "s3://b/runs/run1" is object "runs/run1/updates/x".

Errors: BlobNotFound for a missing object; BlobUnavailable, with a message that says which, for a missing
bucket, denied access, missing credentials and an unreachable endpoint (connect timeout and retries are
bounded, so an outage is reported in seconds, not minutes). boto3 is optional: `pip install 'trainnet[s3]'`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

from trainnet.store.blobs import (
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    BlobUnavailable,
    check_key,
    check_prefix,
)

PART_SIZE = 8 << 20
MIN_PART_SIZE = 5 << 20  # S3's floor for every part but the last
MAX_PRESIGN_S = 7 * 24 * 3600  # SigV4 presigned URLs live at most a week
DEFAULT_REGION = "us-east-1"
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_WRONG_REGION = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "403"}


def _boto() -> Any:
    """The boto3 module, or an ImportError that says how to get it."""
    try:
        import boto3
    except ImportError as exc:
        raise ImportError("the S3 blob store needs boto3, which is not installed: "
                          "pip install 'trainnet[s3]' (or pip install boto3)") from exc
    return boto3


def _flag(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in _TRUE | _FALSE:
        return low in _TRUE
    raise ValueError(f"{where} must be one of {sorted(_TRUE | _FALSE)}, got {text!r}")


class S3BlobStore(BlobStore):
    """Use `S3BlobStore.from_url("s3://bucket/prefix")`, or the constructor to pass settings explicitly (tests,
    tools); `session` takes a boto3.session.Session to share between stores. Thread-safe: one boto3 client,
    which boto3 allows to share between threads."""

    list_page_size = 1000  # keys per ListObjectsV2 request (S3's maximum)

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, path_style: bool | None = None,
                 aws_access_key_id: str | None = None, aws_secret_access_key: str | None = None,
                 connect_timeout: float = 5.0, read_timeout: float = 60.0, max_attempts: int = 3,
                 part_size: int = PART_SIZE, session: Any | None = None) -> None:
        boto3 = _boto()
        from botocore.config import Config

        if not bucket:
            raise ValueError("S3 blob store needs a bucket name: s3://BUCKET/prefix")
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (S3's minimum part), got {part_size}")
        parts = [p for p in prefix.split("/") if p]
        if any(p in (".", "..") for p in parts):
            raise ValueError(f"S3 prefix must not contain '.' or '..' segments: {prefix!r}")
        self.bucket = bucket
        self.prefix = "/".join(parts) + "/" if parts else ""
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        self.region = (region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                       or DEFAULT_REGION)
        if path_style is None:
            env = os.environ.get("TRAINNET_S3_PATH_STYLE")
            path_style = _flag(env, "TRAINNET_S3_PATH_STYLE") if env else self.endpoint_url is not None
        self.part_size = part_size
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "virtual"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            **_checksum_options(),
        )
        # a shared boto3 Session makes further clients cheap (service model loaded once, credentials resolved
        # once); by default each store gets its own
        self._client = (session or boto3.session.Session()).client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=config,
            aws_access_key_id=aws_access_key_id, aws_secret_access_key=aws_secret_access_key)
        self._where = self.endpoint_url or f"AWS S3 ({self.region})"

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> S3BlobStore:
        """`s3://bucket/prefix[?path_style=1&region=auto]`; everything else comes from the environment."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an S3 URL (want s3://bucket/prefix): {url!r}")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        unknown = set(query) - {"path_style", "region", "endpoint"}
        if unknown:
            raise ValueError(f"unknown S3 URL option(s) {sorted(unknown)} in {url!r}; known: endpoint, path_style, region")
        if "path_style" in query:
            kwargs.setdefault("path_style", _flag(query["path_style"], "path_style"))
        if "region" in query:
            kwargs.setdefault("region", query["region"])
        if "endpoint" in query:
            kwargs.setdefault("endpoint_url", query["endpoint"])
        store = cls(parts.netloc, parts.path, **kwargs)
        if parts.query:
            store.url += f"?{parts.query}"  # so the URL reopens the same store elsewhere (an aggregator process)
        return store

    def __repr__(self) -> str:
        return f"S3BlobStore({self.url!r}, endpoint={self._where!r})"

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    # ---- errors --------------------------------------------------------------------------------------------

    def _error(self, exc: Exception, op: str, key: str | None = None) -> Exception:
        """The interface's error for a botocore failure, with a message an operator can act on."""
        from botocore.exceptions import (
            ClientError,
            ConnectionClosedError,
            ConnectTimeoutError,
            EndpointConnectionError,
            NoCredentialsError,
            PartialCredentialsError,
            ReadTimeoutError,
        )

        target = f"s3://{self.bucket}/{self.prefix}{key}" if key is not None else self.url
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("NoSuchKey", "NotFound") or (code == "404" and key is not None):
                return BlobNotFound(key)
            if code == "NoSuchBucket" or (code == "404" and key is None):
                return BlobUnavailable(f"S3 bucket {self.bucket!r} does not exist at {self._where} "
                                       f"(create it, or fix the bucket name in {self.url!r})")
            if code in _WRONG_REGION or status == 301:
                return BlobUnavailable(f"S3 bucket {self.bucket!r} is not in region {self.region!r} ({code}): "
                                       f"set AWS_REGION to the bucket's region")
            if code in _DENIED or status == 403:
                return BlobUnavailable(f"S3 access denied: {op} {target} at {self._where}: {code} "
                                       f"{err.get('Message', '')}".rstrip() +
                                       " (check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and the bucket policy)")
            return BlobUnavailable(f"S3 {op} {target} at {self._where} failed: {code or status} "
                                   f"{err.get('Message', '')}".rstrip())
        if isinstance(exc, EndpointConnectionError | ConnectTimeoutError | ConnectionClosedError):
            return BlobUnavailable(f"cannot reach the S3 endpoint {self._where} ({op} {target}): {exc}")
        if isinstance(exc, ReadTimeoutError):
            return BlobUnavailable(f"S3 endpoint {self._where} timed out ({op} {target}): {exc}")
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return BlobUnavailable(f"no usable AWS credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                                   f"AWS_SECRET_ACCESS_KEY (or another boto3 credential source): {exc}")
        return BlobUnavailable(f"S3 {op} {target} at {self._where} failed: {type(exc).__name__}: {exc}")

    def _call(self, op: str, key: str | None, **params: Any) -> Any:
        """One client call (`op` is the boto3 method name) with errors mapped."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, op)(Bucket=self.bucket, **params)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, op, key) from exc

    # ---- writes --------------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        self._call("put_object", key, Key=self._key(key), Body=bytes(data))
        return hashlib.sha256(data).hexdigest()

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        """Small blobs (up to one part) go as a single PUT; larger ones as a multipart upload holding one part
        in memory at a time. A failure or BlobTooLarge aborts the upload, so no object and no orphan parts."""
        full = self._key(key)
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        digest, size = hashlib.sha256(), 0
        buf = bytearray()
        upload: _Multipart | None = None
        try:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(f"blob {key!r} is larger than max_bytes={max_bytes}; nothing stored")
                digest.update(chunk)
                buf += chunk
                while len(buf) >= self.part_size:  # only the last part may be below S3's 5 MiB floor
                    upload = upload or _Multipart(self, key, full)
                    upload.send(bytes(buf[:self.part_size]))
                    del buf[:self.part_size]
            if upload is None:
                self._call("put_object", key, Key=full, Body=bytes(buf))
            else:
                if buf:
                    upload.send(bytes(buf))
                upload.complete()
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        return size, digest.hexdigest()

    def delete(self, key: str) -> None:
        self._call("delete_object", key, Key=self._key(key))  # S3 answers 204 for an absent key too

    def copy(self, src: str, dst: str) -> None:
        """Server-side copy (CopyObject; multipart copy above 5 GiB): the bytes never leave the store."""
        from botocore.exceptions import BotoCoreError, ClientError

        check_key(src)
        check_key(dst)
        try:
            self._client.copy({"Bucket": self.bucket, "Key": self._key(src)}, self.bucket, self._key(dst))
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "copy_object", src) from exc

    # ---- reads ---------------------------------------------------------------------------------------------

    def get(self, key: str) -> bytes:
        body = self._call("get_object", key, Key=self._key(key))["Body"]
        return self._read(body, "get_object", key)

    def _read(self, body: Any, op: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            with body:
                return body.read()
        except (BotoCoreError, OSError) as exc:  # the connection can drop mid-body
            raise self._error(exc, op, key) from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"get_range needs start >= 0 and length >= 0, got start={start} length={length}")
        if length == 0:  # HTTP cannot express an empty range; still report a missing blob
            if self.size(key) is None:
                raise BlobNotFound(key)
            return b""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body = self._client.get_object(Bucket=self.bucket, Key=self._key(key),
                                           Range=f"bytes={start}-{start + length - 1}")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # 416: the object exists and ends at or before `start`
            raise self._error(exc, "get_object", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "get_object", key) from exc
        return self._read(body["Body"], "get_object", key)

    def size(self, key: str) -> int | None:
        try:
            return int(self._call("head_object", key, Key=self._key(key))["ContentLength"])
        except BlobNotFound:
            # HEAD has no body, so a missing bucket also reads as 404; that case surfaces on put/get/list
            # and in check()
            return None

    def list(self, prefix: str = "") -> list[str]:
        """Keys under `prefix`, sorted; objects under the store's prefix whose names are not valid keys
        (put there by something else) are skipped."""
        check_prefix(prefix)
        return sorted(self._iter_keys(prefix))

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix, PaginationConfig={"PageSize": self.list_page_size})
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix):]
                    try:
                        yield check_key(name)
                    except ValueError:
                        continue
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc, "list_objects_v2", None) from exc

    # ---- presigned URLs ------------------------------------------------------------------------------------

    def presign_put(self, key: str, expires_s: int, content_length: int | None = None) -> str:
        """A URL a plain HTTP client can PUT the blob to, without credentials. With `content_length`, the
        Content-Length header is part of the signature, so the store refuses a body of any other size (real
        S3, R2 and MinIO check it; the coordinator still checks size and hash after the upload)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key)}
        if content_length is not None:
            if content_length < 0:
                raise ValueError(f"content_length must be >= 0, got {content_length}")
            params["ContentLength"] = content_length
        return self._presign("put_object", params, expires_s, key)

    def presign_get(self, key: str, expires_s: int) -> str:
        """A URL a plain HTTP client can GET the blob from (Range requests work), without credentials."""
        return self._presign("get_object", {"Bucket": self.bucket, "Key": self._key(key)}, expires_s, key)

    def _presign(self, op: str, params: dict[str, Any], expires_s: int, key: str) -> str:
        from botocore.exceptions import BotoCoreError

        if not 1 <= expires_s <= MAX_PRESIGN_S:
            raise ValueError(f"expires_s must be in 1..{MAX_PRESIGN_S} (SigV4's limit), got {expires_s}")
        try:
            return self._client.generate_presigned_url(op, Params=params, ExpiresIn=int(expires_s))
        except BotoCoreError as exc:
            raise self._error(exc, f"presign {op}", key) from exc

    # ---- lifecycle -----------------------------------------------------------------------------------------

    def check(self) -> None:
        """Raise BlobUnavailable unless the bucket exists and these credentials can reach it (HEAD bucket).
        Call it at startup so a wrong bucket name fails there, not at the first upload."""
        self._call("head_bucket", None)

    def close(self) -> None:
        close = getattr(self._client, "close", None)  # botocore >= 1.29
        if close is not None:
            close()


class _Multipart:
    """One multipart upload in progress: parts go out as they fill; `abort` leaves no parts billed behind."""

    def __init__(self, store: S3BlobStore, key: str, full: str) -> None:
        self.store, self.key, self.full = store, key, full
        self.upload_id = store._call("create_multipart_upload", key, Key=full)["UploadId"]
        self.parts: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        number = len(self.parts) + 1
        etag = self.store._call("upload_part", self.key, Key=self.full, UploadId=self.upload_id,
                                PartNumber=number, Body=data)["ETag"]
        self.parts.append({"PartNumber": number, "ETag": etag})

    def complete(self) -> None:
        self.store._call("complete_multipart_upload", self.key, Key=self.full, UploadId=self.upload_id,
                         MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        try:
            self.store._call("abort_multipart_upload", self.key, Key=self.full, UploadId=self.upload_id)
        except BlobUnavailable:
            pass  # best effort: the original error matters more; a bucket lifecycle rule reaps the rest


def _checksum_options() -> dict[str, str]:
    """Ask botocore >= 1.36 to send checksums only when an operation requires them: its new default
    (CRC32 on every upload) is refused by several S3-compatible stores. Older botocore lacks the option."""
    from botocore.config import Config

    try:
        Config(request_checksum_calculation="when_required")
    except TypeError:
        return {}
    return {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
