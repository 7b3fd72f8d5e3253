"""Sending domains against a real authoritative DNS server on a loopback port
(tests/support/dns_server.py): `client check [--json]`, launch refused on `fail` (CLI and
API) unless overridden, `warn` printed and launched, the hour's cache, the daily re-check,
the gauge and /ops. Through the installed commands and the API only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.dns_server import serving, silent
from tests.support.web import CliResult, cli
from worker.settings import Settings

# A 1024-bit RSA public key as DKIM publishes it (any non-empty p= is a key to the check).
KEY = (
    "v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQDDmzRmJRQxLEuyYiyMg4suA2Sy"
    "MwR5MGHpP9diNT1hRiwUd/mZp1ro7kIDTKS8ttkI6z6eTRW9e9dDOxzSxNuXmume60Cjbu08gOyhPG3GfWdg"
    "7QkdN6kR4V75MFlw624VY35DaXBvnlTJTgRg/EW72O1DiYVThkyCgpSYS8nmEQIDAQAB"
)
LOOKUPS = 11
ZONE: dict[str, list[tuple[str, str]]] = {
    # Aligned by DKIM: the relay signs with the client's key, published at s1.
    "aligned.example": [("A", "192.0.2.10")],
    "_dmarc.aligned.example": [("TXT", "v=DMARC1; p=reject; rua=mailto:dmarc@aligned.example")],
    "s1._domainkey.aligned.example": [("TXT", KEY)],
    # The same without the key.
    "nokey.example": [("A", "192.0.2.11")],
    "_dmarc.nokey.example": [("TXT", "v=DMARC1; p=reject")],
    # Aligned by SPF through BOUNCE_DOMAIN (bounces.spf.example), which includes the relay.
    "spf.example": [("A", "192.0.2.12")],
    "_dmarc.spf.example": [("TXT", "v=DMARC1; p=quarantine")],
    "bounces.spf.example": [("TXT", "v=spf1 include:spf.relay.example -all")],
    "spf.relay.example": [("TXT", "v=spf1 ip4:198.51.100.0/24 -all")],
    # p=none, unaligned.
    "none.example": [("A", "192.0.2.13")],
    "_dmarc.none.example": [("TXT", "v=DMARC1; p=none")],
    # No DMARC record at all.
    "nodmarc.example": [("A", "192.0.2.14")],
    "s1._domainkey.nodmarc.example": [("TXT", KEY)],
    # SPF that needs more than 10 lookups, with the relay's include among them.
    "toomany.example": [
        ("A", "192.0.2.15"),
        (
            "TXT",
            "v=spf1 include:spf.relay.example "
            + " ".join(f"include:l{i}.toomany.example" for i in range(LOOKUPS))
            + " -all",
        ),
    ],
    "_dmarc.toomany.example": [("TXT", "v=DMARC1; p=reject")],
    **{
        f"l{i}.toomany.example": [("TXT", f"v=spf1 ip4:203.0.113.{i} -all")] for i in range(LOOKUPS)
    },
    # A subdomain sender: its policy is sp= of the organizational domain's record.
    "mail.parent.example": [("A", "192.0.2.16")],
    "parent.example": [("A", "192.0.2.17")],
    "_dmarc.parent.example": [("TXT", "v=DMARC1; p=none; sp=reject")],
    # A name whose lookups fail.
    "servfail.example": [("A", "192.0.2.18")],
}
SERVFAIL = ["_dmarc.servfail.example", "servfail.example"]

# A relay that signs with the client's domain (SMTP_RELAY_<NAME>_DKIM=client).
SIGNS_AS_CLIENT = {
    "SMTP_RELAYS": "esp",
    "SMTP_RELAY_ESP_URL": "smtp://127.0.0.1:2525",
    "SMTP_RELAY_ESP_DKIM": "client",
    "SMTP_RELAY_ESP_SPF": "include:spf.relay.example",
}
# A relay that signs with its own domain.
SIGNS_AS_ITSELF = {
    "SMTP_RELAYS": "own",
    "SMTP_RELAY_OWN_URL": "smtp://127.0.0.1:2525",
    "SMTP_RELAY_OWN_DKIM": "relay.example",
    "SMTP_RELAY_OWN_SPF": "include:spf.relay.example",
}


@pytest.fixture
def resolver() -> Iterator[str]:
    with serving(ZONE, servfail=SERVFAIL) as where:
        yield where


async def add(
    settings: Settings, client_id: str, sender: str, env: dict[str, str], *extra: str
) -> None:
    added = await cli(
        settings, "client", "add", client_id, "--name", client_id.title(), "--sender", sender,
        *extra, env=env,
    )  # fmt: skip
    assert added.code == 0, added.stderr


async def check(settings: Settings, client_id: str, env: dict[str, str]) -> tuple[int, Any]:
    done = await cli(settings, "client", "check", client_id, "--json", env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return done.code, json.loads(done.stdout)


def with_dns(resolver: str, relays: dict[str, str], **more: str) -> dict[str, str]:
    return {**relays, "DNS_RESOLVER": resolver, **more}


async def test_an_aligned_client_is_ok(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@aligned.example", env, "--dkim-selector", "s1")
    code, result = await check(settings, "acme", env)
    assert code == 0
    assert result["client"] == "acme" and result["domain"] == "aligned.example"
    assert result["dmarc"]["policy"] == "reject"
    assert result["dmarc"]["record"].startswith("v=DMARC1; p=reject")
    [relay] = result["relays"]
    assert relay["name"] == "esp" and relay["aligned"] is True and relay["fix"] is None
    assert relay["dkim"]["result"] == "pass"
    assert result["verdict"] == "ok", result["reasons"]
    plain = await cli(settings, "client", "check", "acme", env=env)
    assert plain.code == 0
    assert plain.stdout.splitlines()[0] == "client acme: aligned.example, DMARC p=reject"
    assert plain.stdout.splitlines()[-1] == "verdict: ok"


async def test_without_the_key_it_fails_with_the_record_to_publish(
    settings: Settings, resolver: str
) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nokey.example", env, "--dkim-selector", "S1")
    code, result = await check(settings, "acme", env)
    assert code == 1
    assert result["verdict"] == "fail"
    [relay] = result["relays"]
    assert relay["aligned"] is False
    assert relay["dkim"] == {"result": "fail", "detail": "no key at s1._domainkey.nokey.example"}
    assert relay["fix"] == (
        'publish s1._domainkey.nokey.example TXT "v=DKIM1; k=rsa; '
        'p=<the public key relay esp gives you>"'
    )


async def test_spf_aligns_through_the_bounce_domain(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF, BOUNCE_DOMAIN="bounces.spf.example")
    await add(settings, "acme", "surveys@spf.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "ok"), result
    assert result["envelope_domain"] == "bounces.spf.example"
    [relay] = result["relays"]
    assert relay["spf"] == {
        "result": "pass",
        "detail": "bounces.spf.example's SPF holds include:spf.relay.example",
    }
    assert relay["dkim"]["result"] == "fail" and relay["aligned"] is True

    # Without VERP the envelope domain is the client's, which publishes no SPF record.
    code, result = await check(settings, "acme", with_dns(resolver, SIGNS_AS_ITSELF))
    assert (code, result["verdict"], result["dmarc"]["policy"]) == (1, "fail", "quarantine")
    assert result["relays"][0]["fix"] == (
        'publish spf.example TXT "v=spf1 include:spf.relay.example ~all"'
    )


async def test_p_none_unaligned_is_a_warning(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@none.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"], result["dmarc"]["policy"]) == (0, "warn", "none")
    assert result["reasons"] == ["relay own: not aligned"]


async def test_no_dmarc_record_is_a_warning(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_CLIENT)
    await add(settings, "acme", "surveys@nodmarc.example", env, "--dkim-selector", "s1")
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    assert result["dmarc"]["policy"] is None and result["dmarc"]["record"] is None
    assert result["relays"][0]["aligned"] is True
    assert result["reasons"][0].startswith("no DMARC record")


async def test_spf_over_ten_lookups_fails(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@toomany.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (1, "fail")
    [relay] = result["relays"]
    assert relay["spf"]["result"] == "fail"
    assert "over the limit of 10" in relay["spf"]["detail"], relay
    assert "at most 10 lookups" in relay["fix"]


async def test_a_subdomain_takes_sp_of_its_organizational_domain(
    settings: Settings, resolver: str
) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@mail.parent.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (1, "fail")
    assert result["domain"] == "mail.parent.example"
    assert result["dmarc"]["policy"] == "reject"
    assert result["dmarc"]["location"] == "parent.example"


async def test_a_resolver_that_times_out_is_a_warning_with_the_reason(
    settings: Settings,
) -> None:
    with silent() as quiet:
        env = with_dns(quiet, SIGNS_AS_CLIENT)
        await add(settings, "acme", "surveys@aligned.example", env, "--dkim-selector", "s1")
        code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    assert "timeout" in result["dmarc"]["trouble"]
    assert result["reasons"][0].startswith("the DMARC lookup failed: ")
    assert result["relays"][0]["dkim"]["result"] == "unknown"


async def test_servfail_is_a_warning_with_the_reason(settings: Settings, resolver: str) -> None:
    env = with_dns(resolver, SIGNS_AS_ITSELF)
    await add(settings, "acme", "surveys@servfail.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    assert "SERVFAIL" in result["dmarc"]["trouble"]
    assert "SERVFAIL" in result["relays"][0]["spf"]["detail"]


async def test_a_relay_that_says_nothing_is_unknown(settings: Settings, resolver: str) -> None:
    env = {"DNS_RESOLVER": resolver}
    await add(settings, "acme", "surveys@nokey.example", env)
    code, result = await check(settings, "acme", env)
    assert (code, result["verdict"]) == (0, "warn")
    [relay] = result["relays"]
    assert relay["name"] == "default"
    assert relay["dkim"] == {"result": "unknown", "detail": "SMTP_RELAY_DEFAULT_DKIM is not set"}
    assert "SMTP_RELAY_DEFAULT_SPF" in relay["fix"]


async def test_bad_settings_and_selectors_are_one_line(settings: Settings, resolver: str) -> None:
    for env, where in (
        ({"DNS_RESOLVER": "resolver.example:53"}, "DNS_RESOLVER"),
        ({**SIGNS_AS_CLIENT, "SMTP_RELAY_ESP_SPF": "include amazonses.com"}, "SMTP_RELAY_ESP_SPF"),
        ({**SIGNS_AS_CLIENT, "SMTP_RELAY_ESP_DKIM": "yes please"}, "SMTP_RELAY_ESP_DKIM"),
    ):
        done = await cli(settings, "client", "check", "acme", env=env)
        assert done.code == 1 and done.stderr.startswith(f"Error: {where}: "), done.stderr
        assert len(done.stderr.splitlines()) == 1
    refused = await cli(
        settings, "client", "add", "acme", "--name", "A", "--sender", "a@nokey.example",
        "--dkim-selector", "no/slash", env={"DNS_RESOLVER": resolver},
    )  # fmt: skip
    assert refused.code == 1 and "--dkim-selector" in refused.stderr


def done_lines(done: CliResult) -> list[str]:
    return [line for line in done.stderr.splitlines() if not line.startswith("{")]


def recipients(tmp_path: Path) -> Path:
    path = tmp_path / "people.csv"
    path.write_text("email\nann@example.com\nbob@example.com\n")
    return path
