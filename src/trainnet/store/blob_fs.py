"""The filesystem BlobStore: the embedded default, one file per blob under a root folder.

    blobs = FsBlobStore(Path("/var/trainnet/blobs"))
    blobs.cleanup_tmp()                                    # at startup: drop temp files of crashed writes
    size, sha = blobs.put_stream("updates/3f9c.tnup", chunks, max_bytes=1 << 30)
    path = blobs.local_path("updates/3f9c.tnup")           # serve it zero-copy (sendfile)

A key maps to `root/<key>`; a write goes to a temp file under `root/.tmp/` (same filesystem), is fsynced,
renamed over the final name (atomic: a reader opens the old file or the new one, never a partial one) and the
directory is fsynced, so a blob is durable once `put` returns. Keys and segments never start with '.', so
`.tmp` can never collide with a blob. Every path is resolved and must stay strictly inside the root; a
symlink that leads out of it is refused (BadKey) rather than followed. Write failures from the operating
system (disk full, quota, read-only, permissions) become BlobUnavailable naming the errno, and leave no
partial file behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from trainnet.store.blobs import (
    BadKey,
    BlobNotFound,
    BlobStore,
    BlobTooLarge,
    BlobUnavailable,
    check_key,
    check_prefix,
)

TMP_DIR = ".tmp"
TMP_SUFFIX = ".part"
T = TypeVar("T")

# errnos that mean "this store cannot take writes right now", named in the message so an operator knows
# whether to free disk, raise a quota or fix a mount.
UNAVAILABLE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def _errno_name(exc: OSError) -> str:
    code = exc.errno
    name = errno.errorcode.get(code, f"errno {code}") if code is not None else "no errno"
    return f"{name} ({os.strerror(code)})" if code is not None else name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:  # os.write may write less than asked (signals, pipes, some filesystems)
        written = os.write(fd, view)
        view = view[written:]


class FsBlobStore(BlobStore):
    """Use `FsBlobStore(root)`; the root folder is created if missing. Safe for threads of one process and for
    several processes sharing the root (every write is a rename of a private temp file)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp = self.root / TMP_DIR
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BlobUnavailable(f"filesystem blob store {self.root}: cannot create {self.tmp}: "
                                  f"{_errno_name(exc)}") from exc
        self.url = self.root.as_uri()

    def __repr__(self) -> str:
        return f"FsBlobStore({str(self.root)!r})"

    # ---- paths ---------------------------------------------------------------------------------------------

    def _inside(self, path: Path, key: str) -> Path:
        """`path` with symlinks resolved, if that is strictly inside the root; BadKey otherwise."""
        real = path.resolve()
        if real == self.root or not real.is_relative_to(self.root):
            raise BadKey(f"blob key {key!r} resolves to {real}, outside the store root {self.root} "
                         f"(a symlink leads out of it)")
        return real

    def _path(self, key: str) -> Path:
        # check_key already forbids '..', absolute keys and empty segments, so the lexical join stays inside
        # root; resolving catches symlinks planted inside the tree.
        return self._inside(self.root / check_key(key), key)

    def _make_parents(self, key: str) -> Path:
        """Create the key's directories one by one, fsyncing each new entry's parent so that the directory
        chain of a blob is as durable as the blob itself; returns the resolved final path."""
        parent = self.root
        for part in key.split("/")[:-1]:
            child = parent / part
            try:
                child.mkdir()
                _fsync_dir(parent)
            except FileExistsError:
                if not child.is_dir():
                    raise BadKey(f"cannot store {key!r}: {child.relative_to(self.root)} is a blob, not a "
                                 f"folder (the filesystem backend cannot hold both 'a' and 'a/b')") from None
            parent = self._inside(child, key)
        return self._path(key)

    # ---- writes --------------------------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> str:
        return self._write(key, (data,), max_bytes=len(data))[1]

    def put_stream(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        return self._write(key, chunks, max_bytes)

    def _write(self, key: str, chunks: Iterable[bytes], max_bytes: int) -> tuple[int, str]:
        self._path(key)  # refuse a bad key or a symlink escape before reading any data
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        tmp = self.tmp / f"{secrets.token_hex(8)}{TMP_SUFFIX}"
        fd = self._os(key, os.open, tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            digest, size = hashlib.sha256(), 0
            for chunk in chunks:  # an error raised by the source itself passes through unchanged
                size += len(chunk)
                if size > max_bytes:
                    raise BlobTooLarge(f"blob {key!r} is larger than max_bytes={max_bytes}; nothing stored")
                digest.update(chunk)
                self._os(key, _write_all, fd, chunk)
            self._os(key, os.fsync, fd)
        except BaseException:  # the temp file must go whatever stopped us, even KeyboardInterrupt
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        try:
            self._os(key, os.close, fd)
            self._publish(tmp, key)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size, digest.hexdigest()

    def _os(self, key: str, call: Callable[..., T], *args: object) -> T:
        """`call(*args)`, with an operating-system failure turned into BlobUnavailable naming the errno."""
        try:
            return call(*args)
        except OSError as exc:
            raise BlobUnavailable(f"filesystem blob store {self.root}: cannot write {key!r}: "
                                  f"{_errno_name(exc)}") from exc

    def _publish(self, tmp: Path, key: str) -> None:
        """Rename the finished temp file over the key, then fsync the directory that now names it."""
        for _attempt in range(3):
            final = self._os(key, self._make_parents, key)
            if final.is_dir():
                raise BadKey(f"cannot store {key!r}: it is a folder of other blobs on the filesystem backend")
            try:
                os.replace(tmp, final)
            except FileNotFoundError:
                # a concurrent delete pruned the (then empty) parent between mkdir and rename: make it again
                if not tmp.exists():
                    raise
                continue
            except OSError as exc:
                raise BlobUnavailable(f"filesystem blob store {self.root}: cannot write {key!r}: "
                                      f"{_errno_name(exc)}") from exc
            self._os(key, _fsync_dir, final.parent)
            return
        raise BlobUnavailable(f"filesystem blob store {self.root}: the folder of {key!r} kept disappearing "
                              f"while writing it (concurrent deletes)")

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except IsADirectoryError:
            return  # a folder of other blobs, not a blob: nothing to delete under this key
        except OSError as exc:
            raise BlobUnavailable(f"filesystem blob store {self.root}: cannot delete {key!r}: "
                                  f"{_errno_name(exc)}") from exc
        try:
            _fsync_dir(path.parent)
        except FileNotFoundError:
            return  # a concurrent delete emptied and pruned the folder: nothing left to sync or prune
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        """Remove now-empty folders from `folder` up to, never including, the root."""
        while folder != self.root and folder.is_relative_to(self.root):
            try:
                folder.rmdir()
            except OSError:  # not empty (or gone, or busy): stop, the rest of the chain is in use
                return
            folder = folder.parent

    # ---- reads ---------------------------------------------------------------------------------------------

    def _open(self, key: str) -> int:
        """A read-only descriptor of the blob's file; BlobNotFound when absent or not a regular file."""
        path = self._path(key)
        try:
            # O_NOFOLLOW: the final component was resolved above; refuse a symlink swapped in since then
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise BlobUnavailable(f"filesystem blob store {self.root}: cannot read {key!r}: "
                                  f"{_errno_name(exc)}") from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a folder of other blobs ("a" when "a/b" exists)
            os.close(fd)
            raise BlobNotFound(key)
        return fd

    def get(self, key: str) -> bytes:
        fd = self._open(key)
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if start < 0 or length < 0:
            raise ValueError(f"get_range needs start >= 0 and length >= 0, got start={start} length={length}")
        fd = self._open(key)
        try:
            parts: list[bytes] = []
            while length > 0:  # pread may return less than asked; 0 bytes means the end of the blob
                part = os.pread(fd, min(length, 1 << 30), start)
                if not part:
                    break
                parts.append(part)
                start += len(part)
                length -= len(part)
            return b"".join(parts)
        finally:
            os.close(fd)

    def size(self, key: str) -> int | None:
        try:
            st = os.stat(self._path(key), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        # walk only the folder the prefix already names ("updates/3f" -> root/updates), not the whole tree
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.root / base if base else self.root
        return sorted(k for k in self._walk(start, base) if k.startswith(prefix))

    def _walk(self, folder: Path, rel: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue  # .tmp and anything else that cannot be a key segment
            key = f"{rel}/{entry.name}" if rel else entry.name
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(Path(entry.path), key)
            elif entry.is_file(follow_symlinks=False):
                yield key

    def local_path(self, key: str) -> Path:
        """The file holding the blob (BlobNotFound if absent). Read it, never write it: a later put replaces
        the file by rename, so an open handle keeps reading the old, complete blob."""
        path = self._path(key)
        if self.size(key) is None:
            raise BlobNotFound(key)
        return path

    def presign_put(self, key: str, expires_s: int, content_length: int | None = None) -> None:
        """None: a filesystem has no URLs; clients upload through the coordinator (the key is still checked)."""
        check_key(key)
        return None

    def presign_get(self, key: str, expires_s: int) -> None:
        """None: clients download through the coordinator (the key is still checked)."""
        check_key(key)
        return None

    # ---- maintenance ---------------------------------------------------------------------------------------

    def cleanup_tmp(self, older_than_s: float = 0.0) -> int:
        """Delete temp files left by writes that crashed; returns how many. Call it at startup. When other
        processes may be writing to the same root right now, pass `older_than_s` (say 3600) so that their
        in-progress temp files survive."""
        cutoff = time.time() - older_than_s
        removed = 0
        for entry in os.scandir(self.tmp):
            if entry.name.endswith(TMP_SUFFIX) and entry.is_file(follow_symlinks=False):
                try:
                    if older_than_s <= 0 or entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass  # finished (renamed) or removed by someone else meanwhile
        return removed

