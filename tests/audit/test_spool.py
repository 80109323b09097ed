"""The spool (A-08, A-10): records read back exactly, a torn last write is dropped, other damage
stops the spool, and one chain has one writer per host."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.audit.chain import Chain
from gateway.audit.errors import ChainInUse, SpoolCorrupt
from gateway.audit.spool import Spool
from tests.audit.samples import event


def records(n: int, chain: Chain | None = None) -> list[dict[str, object]]:
    return (chain or Chain("c1")).append([event() for _ in range(n)])


def test_a08_appended_records_read_back_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "host:8080")
    assert spool.open().count == 0
    written = records(5)
    size = spool.append(written[:2])
    size = spool.append(written[2:])
    got, position = spool.read(0, size, limit=3)
    assert got == written[:3]
    rest, end = spool.read(position, size, limit=100)
    assert rest == written[3:] and end == size
    spool.truncate()
    assert spool.size() == 0
    spool.close()


def test_a10_a_torn_last_record_is_dropped_on_open(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "c1")
    spool.open()
    written = records(3)
    spool.append(written)
    spool.close()
    whole = spool.path.read_bytes()
    spool.path.write_bytes(whole[:-25])  # killed in the middle of writing the last record
    reopened = Spool(tmp_path, "c1")
    state = reopened.open()
    assert (state.count, state.last) == (2, written[1])
    assert state.dropped > 0
    assert reopened.read(0, reopened.size(), 10)[0] == written[:2]
    reopened.close()


def test_a10_garbage_after_the_last_record_is_dropped(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "c1")
    spool.open()
    spool.append(records(2))
    with open(spool.path, "ab") as file:
        file.write(b"\x00" * 100)
    spool.close()
    state = Spool(tmp_path, "c1").open()
    assert state.count == 2


def test_a10_a_damaged_record_followed_by_good_ones_stops_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "c1")
    spool.open()
    spool.append(records(3))
    spool.close()
    lines = spool.path.read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"action":"R"', b'"action":"D"')
    spool.path.write_bytes(b"\n".join(lines))
    with pytest.raises(SpoolCorrupt):
        Spool(tmp_path, "c1").open()


def test_a08_one_writer_per_chain(tmp_path: Path) -> None:
    first = Spool(tmp_path, "host:8080")
    first.open()
    with pytest.raises(ChainInUse):
        Spool(tmp_path, "host:8080").open(lock_timeout=0.1)
    assert Spool(tmp_path, "host:8081").open().count == 0  # another chain: its own file
    first.close()
    Spool(tmp_path, "host:8080").open()


def test_a08_an_unusable_directory_fails_the_append(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "c1")
    spool.open()
    spool.path.parent.rename(tmp_path / "moved")
    (tmp_path / "spool").write_text("not a directory")
    with pytest.raises(OSError):
        spool.append(records(1))
