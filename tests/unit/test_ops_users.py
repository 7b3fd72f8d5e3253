"""Signing in to /ops: an unknown user costs the same scrypt work as a known one (no user
enumeration by timing), checked by what is verified, never by a clock."""

from __future__ import annotations

import base64

from worker import passwords
from worker.web.ops.app import Users

ANNA = passwords.Hash.parse(passwords.hash_password("anna's password", n=2**11))
BOB = passwords.Hash.parse(passwords.hash_password("bob's password", n=2**10, r=4))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def cost(hashed: passwords.Hash) -> tuple[int, int, int, int, int]:
    return hashed.n, hashed.r, hashed.p, len(hashed.salt), len(hashed.key)


async def test_an_unknown_user_is_verified_against_a_dummy_of_the_same_cost() -> None:
    users = Users({"anna": ANNA})
    hashed, known = users.hash_for("nobody")
    assert not known
    assert cost(hashed) == cost(ANNA)
    assert hashed is not ANNA
    # The dummy is a real hash no password matches: the sign-in runs scrypt and fails.
    assert not hashed.verify("anna's password")
    assert users.hash_for("anna") == (ANNA, True)
    assert await users.authenticate(basic("nobody", "anna's password")) is None
    assert await users.authenticate(basic("anna", "anna's password")) == "anna"


def test_the_dummy_costs_what_the_costliest_user_costs() -> None:
    assert cost(passwords.dummy_like([BOB, ANNA])) == cost(ANNA)
    assert cost(Users({"bob": BOB, "anna": ANNA}).hash_for("eve")[0]) == cost(ANNA)
    default = passwords.dummy_like([])
    assert (default.n, default.r, default.p) == (passwords.N, passwords.R, passwords.P)
    # Every dummy is new: nobody can learn one and sign in with it.
    assert passwords.dummy_like([ANNA]).key != passwords.dummy_like([ANNA]).key
