"""Verification (A-07, A-13): tampering with a chain — an edited field, a deleted record, two
records swapped, a removed tail, a rewritten chain, a forged checkpoint — is reported with its
seq and record id; an untouched chain verifies. The same through ``fhir-gateway audit verify``
against the real database, which exits non-zero on any problem."""

from __future__ import annotations

import argparse
import asyncio
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey
from pymongo.asynchronous.database import AsyncDatabase

from gateway.audit import cli
from gateway.audit.chain import EMPTY, Chain, Head, record_hash
from gateway.audit.checkpoints import Checkpoint, problem, public_jwk, sign
from gateway.audit.store import EVENTS
from gateway.audit.verify import ChainVerifier, Kind
from smart_auth.keys import SigningKey
from tests.audit.conftest import OpenLog
from tests.audit.samples import event
from tests.conftest import Stack

Record = dict[str, Any]


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey(
        "kid-1", RSAKey.generate_key(2048, parameters={"kid": "kid-1"}), datetime.now(UTC)
    )


def chain_of(n: int) -> list[Record]:
    return Chain("c1").append([event() for _ in range(n)])


def check(
    records: list[Record],
    start: Head = EMPTY,
    checkpoints: list[Checkpoint] = (),  # type: ignore[assignment]
) -> ChainVerifier:
    verifier = ChainVerifier("c1", start, {cp.seq: cp for cp in checkpoints})
    for record in sorted(records, key=lambda r: (r["seq"], r["_id"])):
        verifier.feed(record)
    verifier.finish()
    return verifier


def rehash(record: Record) -> Record:
    return {**record, "hash": record_hash(record)}


def test_a07_an_untouched_chain_verifies() -> None:
    verifier = check(chain_of(10))
    assert verifier.finding is None
    assert (verifier.records, verifier.first, verifier.last) == (10, 1, 10)


def test_a07_an_edited_field_is_reported() -> None:
    records = chain_of(10)
    records[4] = {**records[4], "event": {**records[4]["event"], "outcome": "4"}}
    finding = check(records).finding
    assert finding is not None
    assert (finding.kind, finding.seq, finding.record_id) == (Kind.ALTERED, 5, records[4]["_id"])


def test_a07_an_edited_and_rehashed_record_breaks_the_next_link() -> None:
    records = chain_of(10)
    records[4] = rehash({**records[4], "patients": ["someone-else"]})
    finding = check(records).finding
    assert finding is not None
    assert (finding.kind, finding.seq, finding.record_id) == (
        Kind.BROKEN_LINK,
        6,
        records[5]["_id"],
    )


def test_a07_a_deleted_record_is_a_gap() -> None:
    records = chain_of(10)
    del records[6]
    finding = check(records).finding
    assert finding is not None
    assert (finding.kind, finding.seq, finding.record_id) == (Kind.GAP, 7, records[6]["_id"])
    assert "seq 7 are missing" in finding.message


@pytest.mark.parametrize("recompute", [False, True], ids=["seq-swapped", "seq-swapped-rehashed"])
def test_a07_a_swapped_pair_is_reported(recompute: bool) -> None:
    records = chain_of(10)
    a, b = records[3], records[4]  # seq 4 and 5
    moved_a, moved_b = {**a, "seq": 5}, {**b, "seq": 4}
    if recompute:
        moved_a, moved_b = rehash(moved_a), rehash(moved_b)
    records[3], records[4] = moved_b, moved_a
    finding = check(records).finding
    assert finding is not None
    assert (finding.kind, finding.seq, finding.record_id) == (Kind.REORDERED, 4, b["_id"])
    assert a["_id"] in finding.message


def test_a07_a_duplicated_seq_is_reported() -> None:
    records = chain_of(5)
    records.append({**records[2], "_id": "copy"})
    finding = check(records).finding
    assert finding is not None and finding.kind is Kind.DUPLICATE and finding.seq == 3


def test_a07_a_removed_tail_is_caught_by_a_checkpoint(key: SigningKey) -> None:
    records = chain_of(10)
    checkpoint = sign(key, "c1", Head(10, records[-1]["hash"]), 1_700_000_000)
    finding = check(records[:8], checkpoints=[checkpoint]).finding
    assert finding is not None and finding.kind is Kind.TRUNCATED and finding.seq == 9


def test_a07_a_rewritten_chain_is_caught_by_a_checkpoint(key: SigningKey) -> None:
    original = chain_of(10)
    checkpoint = sign(key, "c1", Head(10, original[-1]["hash"]), 1_700_000_000)
    # Someone drops record 5 and re-links everything after it: every hash and link is right.
    kept = [r["event"] for r in original if r["seq"] != 5]
    rewritten = Chain("c1").append(kept)
    assert check(rewritten).finding is None
    rewritten.append(Chain("c1", Head(9, rewritten[-1]["hash"])).append([event()])[0])
    finding = check(rewritten, checkpoints=[checkpoint]).finding
    assert finding is not None and finding.kind is Kind.REWRITTEN and finding.seq == 10


def test_a07_a_checkpoint_verifies_only_against_its_key(key: SigningKey) -> None:
    checkpoint = sign(key, "c1", Head(3, "ab" * 32), 1_700_000_000)
    keys = {key.kid: public_jwk(key)}
    assert problem(checkpoint, keys) is None
    forged = Checkpoint("c1", 3, "cd" * 32, checkpoint.at, key.kid, checkpoint.jws)
    assert problem(forged, keys) == "its stored fields differ from what was signed"
    other = RSAKey.generate_key(2048)
    assert problem(checkpoint, {key.kid: other.as_dict(private=False)}) == (
        "its signature does not verify"
    )
    assert "not among the trusted keys" in str(problem(checkpoint, {}))


def test_a13_verification_starts_from_the_checkpoint_before_the_first_record_kept(
    key: SigningKey,
) -> None:
    records = chain_of(20)
    anchor = Head(12, records[11]["hash"])
    assert check(records[12:], start=anchor).finding is None
    finding = check(records[13:], start=anchor).finding
    assert finding is not None and finding.kind is Kind.GAP and finding.seq == 13


# --- through the command, against the real database


def run_verify(stack: Stack, db: AsyncDatabase[dict[str, Any]], tmp_path: Path) -> int:
    config = tmp_path / f"{uuid.uuid4().hex}.toml"
    config.write_text(f'mongodb_uri = "{stack.mongo_uri}"\nmongodb_database = "{db.name}"\n')
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers(), "a TOML settings file")
    args = parser.parse_args(["audit", "verify", "--config", str(config)])
    return int(args.func(args))


async def stored_chain(
    open_log: OpenLog, db: AsyncDatabase[dict[str, Any]], n: int
) -> list[Record]:
    log = await open_log()
    for _ in range(n):
        await log.record([event()])
    assert await log.checkpoint() == n
    await log.close()
    return [r async for r in db[EVENTS].find({}).sort("seq", 1)]


TAMPERING = {
    "untouched": (None, 0),
    "edit a field": ("edit", 1),
    "delete one": ("delete", 1),
    "swap two": ("swap", 1),
}


@pytest.mark.parametrize("name", list(TAMPERING))
async def test_a07_audit_verify_exits_non_zero_on_tampering(
    name: str,
    open_log: OpenLog,
    db: AsyncDatabase[dict[str, Any]],
    local_stack_env: Stack,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    records = await stored_chain(open_log, db, 6)
    events = db[EVENTS]
    how, expected = TAMPERING[name]
    if how == "edit":
        await events.update_one({"seq": 3}, {"$set": {"event.outcome": "4"}})
    elif how == "delete":
        await events.delete_one({"seq": 3})
    elif how == "swap":
        # (through a spare seq: the unique index allows one record per position)
        await events.update_one({"_id": records[2]["_id"]}, {"$set": {"seq": -1}})
        await events.update_one({"_id": records[3]["_id"]}, {"$set": {"seq": 3}})
        await events.update_one({"_id": records[2]["_id"]}, {"$set": {"seq": 4}})
    code = await asyncio.to_thread(run_verify, local_stack_env, db, tmp_path)
    out = capsys.readouterr().out
    assert code == expected, out
    if how is None:
        assert "1 chain(s), 6 record(s), 1 checkpoint(s): ok" in out
    else:
        kind = {"edit": "ALTERED", "delete": "GAP", "swap": "REORDERING"}[how]
        moved = records[2] if how == "edit" else records[3]
        assert f"{kind} at seq 3 (record {moved['_id']})" in out, out
