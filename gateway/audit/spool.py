"""The local spool (AUDIT.md A-08, A-10): where audit records go, fsynced, while MongoDB cannot
take them, until they are replayed into it.

One file per chain in ``audit_spool_dir``: ``<chain>.spool``, newline-delimited JSON, one record
per line (orjson never writes a raw newline inside a value). Each record carries its own
``hash``, the SHA-256 of its canonical bytes (:mod:`gateway.audit.chain`), which is the line's
checksum: a line reads back only if it is complete (ends in a newline), parses, and hashes to its
``hash``.

A crash (SIGKILL, power loss) during an append can leave the last line torn, or leave garbage
after the last complete line. Such a tail was never fsynced, so never acknowledged to anyone: it
is dropped when the spool is opened (the file is cut back to the last good line). A bad line
*followed by* good ones is not a crash's doing and stops the spool with :class:`SpoolCorrupt`.

A lock file (``<chain>.lock``, ``flock``) keeps a second process on this host from writing the
same chain. Appends open the file, write, ``fsync`` and close it (and ``fsync`` the directory when
the file was just created), so an unusable directory shows on the very append that needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.chain import record_hash
from gateway.audit.errors import ChainInUse, SpoolCorrupt

_CHUNK = 1 << 20


def _slug(chain: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", chain)[:80]
    return f"{safe}-{hashlib.sha256(chain.encode()).hexdigest()[:8]}"


def _valid(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict) or "hash" not in record:
        return None
    try:
        return record if record_hash(record) == record["hash"] else None
    except TypeError:
        return None


@dataclass(frozen=True, slots=True)
class SpoolState:
    """What the spool held when opened."""

    size: int
    """Bytes of good records."""
    count: int
    last: dict[str, Any] | None
    """The last record (the chain's head when the spool is not empty)."""
    dropped: int
    """Bytes of a torn tail cut off."""


class Spool:
    """The spool file of one chain. Its methods block: call them in a worker thread."""

    def __init__(self, directory: Path, chain: str) -> None:
        self.directory = directory
        self.path = directory / f"{_slug(chain)}.spool"
        self._lock_path = directory / f"{_slug(chain)}.lock"
        self._lock_fd: int | None = None

    def open(self, lock_timeout: float = 0.0) -> SpoolState:
        """Lock the chain's spool (waiting up to ``lock_timeout`` seconds for another process to
        let go), cut off a torn tail, and say what it holds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock(lock_timeout)
        return self._recover()

    def _lock(self, timeout: float) -> None:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ChainInUse(
                        f"another process is writing this audit chain ({self._lock_path} is "
                        "locked); give each gateway instance its own audit_chain_name"
                    ) from None
                time.sleep(0.05)
        self._lock_fd = fd

    def _recover(self) -> SpoolState:
        good = 0
        count = 0
        last: dict[str, Any] | None = None
        bad_at: int | None = None
        for offset, line, record in self._lines(0, None):
            if record is None or not line.endswith(b"\n"):
                if bad_at is None:
                    bad_at = offset
                continue
            if bad_at is not None:
                raise SpoolCorrupt(
                    f"{self.path}: an unreadable record at byte {bad_at} is followed by good ones"
                )
            good = offset + len(line)
            count += 1
            last = record
        size = self.size()
        if good < size:
            with open(self.path, "r+b") as file:
                file.truncate(good)
                os.fsync(file.fileno())
        return SpoolState(good, count, last, size - good)

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def append(self, records: Sequence[dict[str, Any]]) -> int:
        """Append and fsync; the new size. Raises ``OSError`` when the spool cannot be written."""
        data = b"".join(orjson.dumps(record) + b"\n" for record in records)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if created:
            directory = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        return size

    def read(self, offset: int, end: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        """Up to ``limit`` records from byte ``offset`` up to byte ``end``, and the offset after
        them."""
        records: list[dict[str, Any]] = []
        position = offset
        for start, line, record in self._lines(offset, end):
            if record is None or not line.endswith(b"\n"):
                raise SpoolCorrupt(f"{self.path}: an unreadable record at byte {start}")
            records.append(record)
            position = start + len(line)
            if len(records) >= limit:
                break
        return records, position

    def truncate(self) -> None:
        """Empty the spool (everything in it is in MongoDB)."""
        with contextlib.suppress(FileNotFoundError), open(self.path, "r+b") as file:
            file.truncate(0)
            os.fsync(file.fileno())

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lines(
        self, offset: int, end: int | None
    ) -> Iterator[tuple[int, bytes, dict[str, Any] | None]]:
        """``(offset, line, record or None)`` for each line from ``offset`` (up to ``end``). A
        missing file holds no lines when nothing is expected of it (``end`` is ``None``)."""
        try:
            file = open(self.path, "rb")  # noqa: SIM115 - closed below, generator
        except FileNotFoundError:
            if end is None:
                return
            raise
        with file:
            file.seek(offset)
            position = offset
            pending = b""
            while end is None or position + len(pending) < end:
                want = _CHUNK if end is None else min(_CHUNK, end - position - len(pending))
                chunk = file.read(want)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw + b"\n"
                    yield position, line, _valid(line)
                    position += len(line)
            if pending:
                yield position, pending, None
