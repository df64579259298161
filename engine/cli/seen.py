"""The names a mirror list has used so far, for its duplicate lines, in bounded memory.

A list of a million lines is read as a stream, so its names must be remembered as
they come: a ``dict`` of the lowercased names to their lines costs about 128 bytes a
name (1,000,000 names like ``dir/f0123456.bin``: 128 MB, half the whole run's budget).
``NameSet`` keeps the same facts in flat arrays: each name's hash, line and offset in
one byte arena of the names themselves, and an open-addressing index of 4-byte row
numbers: about 52 bytes a name (52 MB for that list).  A name is a duplicate only
when its bytes equal a kept one's: a hash collision is never a false duplicate.

The index is split in 256 parts by hash bits, each grown on its own, so a growth
re-inserts at most a 256th of the names: no pause of seconds in the middle of a
list, as one table of a million rows would take to rebuild in Python.
"""

from __future__ import annotations

from array import array

_PARTS = 256
_FIRST_SIZE = 64  # slots in each part at first: a short list costs 64 KiB


class NameSet:
    """Names seen so far, compared case-insensitively (as a case-insensitive file
    system would), each with the line that used it first."""

    def __init__(self) -> None:
        self._slots = [array("I", bytes(4 * _FIRST_SIZE)) for _ in range(_PARTS)]
        self._rows = [0] * _PARTS
        self._hashes = array("q")
        self._lines = array("Q")
        self._starts = array("Q")
        self._names = bytearray()

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, name: str, line: int) -> int:
        """Keep ``name`` as used by ``line`` and return 0; or, when a name equal to it
        but for case was kept already, keep nothing and return that one's line."""
        key = name.lower().encode()
        h = hash(key)
        part = (h >> 32) & (_PARTS - 1)
        slots = self._slots[part]
        mask = len(slots) - 1
        i = h & mask
        while row := slots[i]:
            if self._hashes[row - 1] == h and self._same(row - 1, key):
                return self._lines[row - 1]
            i = (i + 1) & mask
        self._hashes.append(h)
        self._lines.append(line)
        self._starts.append(len(self._names))
        self._names += key
        self._names.append(0)  # a name never holds a NUL: it ends each one
        slots[i] = len(self._hashes)
        self._rows[part] += 1
        if self._rows[part] * 3 > len(slots) * 2:
            self._grow(part)
        return 0

    def _same(self, row: int, key: bytes) -> bool:
        start = self._starts[row]
        end = start + len(key)
        return self._names[start:end] == key and self._names[end] == 0

    def _grow(self, part: int) -> None:
        """Double one part's index, re-inserting only the rows that fall in it."""
        size = len(self._slots[part]) * 2
        slots, mask = array("I", bytes(4 * size)), size - 1
        for row in self._slots[part]:
            if row:
                i = self._hashes[row - 1] & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = row
        self._slots[part] = slots
