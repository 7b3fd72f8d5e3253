"""The `/ops` users' passwords: scrypt hashes (RFC 7914, the standard library's
`hashlib.scrypt`), and `OPS_USERS`, the `user:hash,...` list that holds them.

A hash reads `scrypt.N.r.p.SALT.KEY` (salt and key in unpadded base64url), so it needs no
quoting in `.env` files or shells and holds no `:` or `,`. New hashes use OWASP's
parameters for scrypt (N=2^17, r=8, p=1: 128 MiB and a few tenths of a second each).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

N, R, P = 2**17, 8, 1
KEY_BYTES = 32
SALT_BYTES = 16
# Parameters a hash may carry: below, a typo; above, a memory bomb.
MIN_N, MAX_N = 2**10, 2**20
_USER = re.compile(r"[A-Za-z0-9._-]{1,64}")


class BadUsers(ValueError):
    """OPS_USERS is not a list of `user:hash` entries; the message never quotes a hash."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # OpenSSL needs about 128 * n * r * p bytes; allow twice that.
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * n * r * p, dklen=KEY_BYTES
    )


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P) -> str:
    """A new hash of `password` with a random salt (tests pass a smaller `n`)."""
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt.{n}.{r}.{p}.{_b64(salt)}.{_b64(_scrypt(password, salt, n, r, p))}"


@dataclass(frozen=True)
class Hash:
    """A parsed password hash."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> Hash:
        """The hash `text` stands for; ValueError when it is not one."""
        parts = text.split(".")
        if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isdigit() for x in parts[1:4]):
            raise ValueError("not an scrypt.N.r.p.SALT.KEY hash (see `survey-worker ops-password`)")
        n, r, p = (int(x) for x in parts[1:4])
        if not (MIN_N <= n <= MAX_N and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16):
            raise ValueError("scrypt parameters out of range")
        try:
            salt, key = _unb64(parts[4]), _unb64(parts[5])
        except ValueError:
            raise ValueError("salt or key is not base64url") from None
        if len(salt) < 8 or len(key) != KEY_BYTES:
            raise ValueError("salt or key of the wrong length")
        return cls(n, r, p, salt, key)

    def verify(self, password: str) -> bool:
        """Whether `password` is the one hashed (compared in constant time)."""
        return hmac.compare_digest(_scrypt(password, self.salt, self.n, self.r, self.p), self.key)

    def secret(self, purpose: str) -> bytes:
        """A key for `purpose` derived from this hash (never from the password): it changes
        when the password does, and only the server's configuration holds it."""
        return hmac.new(self.key + self.salt, purpose.encode(), hashlib.sha256).digest()


def dummy_like(hashes: Iterable[Hash]) -> Hash:
    """A hash no password matches (random salt and key) with the parameters of the
    costliest of `hashes` (OWASP's when there are none). A sign-in as an unknown user is
    verified against it, so it costs the same scrypt work as a known user's and the answer's
    time does not tell whether the user exists."""
    costliest = max(hashes, key=lambda h: h.n * h.r * h.p, default=None)
    n, r, p = (costliest.n, costliest.r, costliest.p) if costliest else (N, R, P)
    return Hash(n, r, p, secrets.token_bytes(SALT_BYTES), secrets.token_bytes(KEY_BYTES))


def valid_user(user: str) -> bool:
    """Whether `user` can be an OPS_USERS user name (it is logged, so never an address)."""
    return _USER.fullmatch(user) is not None


def parse_users(text: str) -> dict[str, Hash]:
    """OPS_USERS (`user:hash,user:hash`) as a user → hash mapping; BadUsers if malformed."""
    users: dict[str, Hash] = {}
    for number, entry in enumerate((e.strip() for e in text.split(",")), start=1):
        if not entry:
            continue
        user, colon, hashed = entry.partition(":")
        if not colon or not valid_user(user):
            raise BadUsers(f"entry {number} is not user:hash (a user is 1-64 of A-Z a-z 0-9 . _ -)")
        if user in users:
            raise BadUsers(f"entry {number}: user {user} is listed twice")
        try:
            users[user] = Hash.parse(hashed)
        except ValueError as e:
            raise BadUsers(f"entry {number} ({user}): {e}") from None
    return users
