"""The per-instance front of the cache: the entries this instance read or wrote lately, still
encrypted, kept only while nothing anywhere has changed the cache since (SECURITY.md P-15;
DESIGN.md "Storage": what an instance keeps in memory is invalidated by a change in MongoDB).

MongoDB holds the cache. Each instance also keeps a bounded copy of the entries it met last —
their ciphertexts, never plaintext — each tagged with the ``cache`` change counter
(``change_epochs``) as it was before the entry was read from, or written to, MongoDB. Every
invalidation after a write, every purge and every shred, on any instance, moves that counter once
its change is made, and every cached read reads the counter afresh (in the same query as the
revocation check, :mod:`gateway.fhir.freshness`). An instance that sees it move drops its whole
copy. So no instance answers from its copy what MongoDB no longer holds as it was, and a hit
under an unmoved counter costs no query of its own.
"""

from __future__ import annotations

from collections import OrderedDict

from gateway.cache.entries import Slot


class RecentEntries:
    """Entries by id, tagged with the counter they were read under; bounded by count and bytes
    (the least recently used go first)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._slots: OrderedDict[str, tuple[int, Slot, int]] = OrderedDict()
        self._bytes = 0
        self._epoch = -1

    @property
    def epoch(self) -> int:
        """The newest value of the counter seen."""
        return self._epoch

    def observe(self, epoch: int) -> bool:
        """The counter as a request read it; whether it moved (everything is dropped then)."""
        if epoch <= self._epoch:
            return False
        self._epoch = epoch
        self.clear()
        return True

    def get(self, entry_id: str) -> Slot | None:
        found = self._slots.get(entry_id)
        if found is None or found[0] != self._epoch:
            return None
        self._slots.move_to_end(entry_id)
        return found[1]

    def put(self, entry_id: str, slot: Slot, epoch: int) -> None:
        """Keep ``slot``, read (or written) under ``epoch``, unless the counter moved since."""
        if epoch != self._epoch or slot.entry is None:
            return
        self.drop(entry_id)
        size = len(slot.entry.ciphertext.data)
        self._slots[entry_id] = (epoch, slot, size)
        self._bytes += size
        while self._slots and (
            len(self._slots) > self._max_entries or self._bytes > self._max_bytes
        ):
            _, (_, _, dropped) = self._slots.popitem(last=False)
            self._bytes -= dropped

    def drop(self, entry_id: str) -> None:
        found = self._slots.pop(entry_id, None)
        if found is not None:
            self._bytes -= found[2]

    def clear(self) -> None:
        self._slots.clear()
        self._bytes = 0
