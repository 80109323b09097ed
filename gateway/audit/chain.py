"""Hash chains of audit records (AUDIT.md A-06, A-07).

Each gateway instance appends to its own chain, named by ``audit_chain_name`` (default: the host
name and port). A **record** is one AuditEvent as stored::

    {
      "_id":      the AuditEvent's id,
      "chain":    the chain's name,
      "seq":      1, 2, 3 ... (gapless within the chain),
      "prev":     the "hash" of record seq - 1 (for seq 1: GENESIS, 64 zeros),
      "recorded": event.recorded (a FHIR instant in UTC, fixed format: sorts as time),
      "patients": the ids of the event's patient entities,
      "agents":   keys of its agents (see agent_keys),
      "type", "subtype", "action", "outcome": codes copied from the event,
      "event":    the FHIR AuditEvent,
      "hash":     SHA-256 (hex) of the record's canonical bytes
    }

**Canonical bytes** = every field of the record except ``hash``, serialised by orjson with keys
sorted at every level (``OPT_SORT_KEYS``): compact, UTF-8, no whitespace. Records hold only
strings, integers, booleans, lists and objects (times are strings), which MongoDB gives back
exactly as written, so a stored record hashes to the same bytes when read again. The copied
fields (``recorded`` … ``outcome``) are hashed too: they are what searches use, so changing them
breaks the chain like changing the event does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from consent.codes import CLIENT_SYSTEM
from gateway.audit.codes import GATEWAY_SYSTEM

GENESIS = "0" * 64
"""The ``prev`` of a chain's first record."""
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


@dataclass(frozen=True, slots=True)
class Head:
    """The last record of a chain: its ``seq`` (0 before the first) and ``hash``."""

    seq: int
    hash: str


EMPTY = Head(0, GENESIS)


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes a record's ``hash`` is the SHA-256 of: the record without ``hash``, keys sorted.
    Raises ``TypeError`` for a value that would not come back from MongoDB unchanged (a datetime,
    a dataclass)."""
    return orjson.dumps({k: v for k, v in record.items() if k != "hash"}, option=_OPTIONS)


def record_hash(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def agent_keys(event: Mapping[str, Any]) -> list[str]:
    """Search keys of an event's agents: ``Type/id`` references, and ``system|value`` of
    identifiers (an app: ``urn:fhir-gateway:client|ID``; a user: ``ISSUER|sub``). The gateway's
    own agent is in every event and is left out (each key is an index entry)."""
    keys: list[str] = []
    for agent in event.get("agent", []):
        who = agent.get("who") or {}
        if (who.get("identifier") or {}).get("system") == GATEWAY_SYSTEM:
            continue
        if "reference" in who:
            keys.append(str(who["reference"]))
        identifier = who.get("identifier") or {}
        if "value" in identifier:
            keys.append(f"{identifier.get('system', '')}|{identifier['value']}")
    return list(dict.fromkeys(keys))


def patient_ids(event: Mapping[str, Any]) -> list[str]:
    """The ids of the event's patient entities (role 1)."""
    ids = []
    for entity in event.get("entity", []):
        if (entity.get("role") or {}).get("code") == "1":
            reference = str((entity.get("what") or {}).get("reference", ""))
            if reference.startswith("Patient/"):
                ids.append(reference.removeprefix("Patient/"))
    return ids


def client_key(client_id: str) -> str:
    """The agent key of an app."""
    return f"{CLIENT_SYSTEM}|{client_id}"


def link(event: Mapping[str, Any], chain: str, head: Head) -> dict[str, Any]:
    """The record that appends ``event`` to a chain whose last record is ``head``."""
    subtypes = event.get("subtype") or [{}]
    record: dict[str, Any] = {
        "_id": event["id"],
        "chain": chain,
        "seq": head.seq + 1,
        "prev": head.hash,
        "recorded": event["recorded"],
        "patients": patient_ids(event),
        "agents": agent_keys(event),
        "type": event["type"].get("code"),
        "subtype": subtypes[0].get("code"),
        "action": event.get("action"),
        "outcome": event.get("outcome"),
        "event": dict(event),
    }
    record["hash"] = record_hash(record)
    return record


class Chain:
    """The writing end of one chain: appends events and remembers the head."""

    def __init__(self, name: str, head: Head = EMPTY) -> None:
        self.name = name
        self.head = head

    def append(self, events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        records = []
        head = self.head
        for event in events:
            record = link(event, self.name, head)
            head = Head(record["seq"], record["hash"])
            records.append(record)
        self.head = head
        return records


def head_of(record: Mapping[str, Any]) -> Head:
    return Head(int(record["seq"]), str(record["hash"]))
