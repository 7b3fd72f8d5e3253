"""What a launch asked for, as one SHA-256: its options and its recipients file.

`launch --idempotency-key` keeps it with the campaign, so that a later launch with the key
can tell a retry (the same digest) from the key reused for another campaign.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping

import orjson


class RequestDigest:
    """The lines of a recipients file, hashed after the launch's options as they are read."""

    def __init__(self, options: Mapping[str, object], lines: Iterable[bytes]) -> None:
        self._hash = hashlib.sha256(orjson.dumps(dict(options), option=orjson.OPT_SORT_KEYS))
        self._lines = iter(lines)

    def __iter__(self) -> Iterator[bytes]:
        for line in self._lines:
            self._hash.update(line)
            yield line

    def finish(self) -> bytes:
        """Read what is left of the file; the digest of all of it."""
        for _line in self:
            pass
        return self._hash.digest()
